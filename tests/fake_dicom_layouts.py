"""Small fake copies of the real NIH / RSNA / SIIM-ACR / SIIM-COVID layouts, for builder tests.

Each `write_*` function writes the real file and folder names and CSV columns under `root` and
returns a `Layout`: what a correct builder must produce (split sizes, per-example expectations)
and which files are bad. DICOMs are small 12-bit images carrying distinctive fake PHI (`PHI`);
patients are chosen so that every split gets at least one, using the builders' own split rules.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import pathlib

import numpy as np
from PIL import Image
import pydicom

from cxr_jax.data import dicom
from cxr_jax.data.builders import base
from cxr_jax.data.builders import nih_chestxray14 as nih
from cxr_jax.data.builders import rsna_pneumonia as rsna
from cxr_jax.data.builders import siim_acr_pneumothorax as siim
from cxr_jax.data.builders import siim_covid19 as covid

SPLITS = ('train', 'validation', 'test')
# Fake PHI written into every DICOM (PatientID is per patient: PHI_PATIENT_PREFIX + n).
PHI = {
    'PatientName': 'Doe^Jane^Phi',
    'PatientBirthDate': '19230405',
    'StudyDate': '20191231',
    'InstitutionName': 'Springfield General Phi Hospital',
    'InstitutionAddress': '742 Evergreen Terrace',
    'AccessionNumber': 'ACC-PHI-98765',
    'ReferringPhysicianName': 'House^Gregory^Phi',
}
PHI_PATIENT_PREFIX = 'PHI-PID-'
BAD_KINDS = ('random', 'truncated', 'missing')


def phi_strings() -> list[str]:
  return [*PHI.values(), PHI_PATIENT_PREFIX, 'Doe^Jane', 'Springfield', 'Evergreen']


@dataclasses.dataclass
class Layout:
  root: pathlib.Path
  expect: dict[str, dict]                     # example key -> expected features (and 'split')
  bad: dict[str, str] = dataclasses.field(default_factory=dict)  # kind -> file name in error
  bad_split: dict[str, str] = dataclasses.field(default_factory=dict)  # kind -> its split

  @property
  def sizes(self) -> dict[str, int]:
    """Expected examples per split (the bad ones are skipped)."""
    return {s: sum(e['split'] == s for e in self.expect.values()) for s in SPLITS}


def _pick(candidates, split_of, counts: dict[str, int]) -> dict[str, list]:
  """First candidates landing in each split, `counts[split]` of them."""
  out = {s: [] for s in counts}
  for c in candidates:
    s = split_of(c)
    if s in out and len(out[s]) < counts[s]:
      out[s].append(c)
    if all(len(out[s]) == n for s, n in counts.items()):
      return out
  raise AssertionError('not enough candidates')


def _pseudonym(patient_id: str, source: str) -> str:
  ds = pydicom.Dataset()
  ds.PatientID = patient_id
  return dicom.patient_pseudonym(ds, siim.pseudonym_salt(source))


def _dicom_split(patient_id: str, source: str, fractions) -> str:
  return base.hash_split(_pseudonym(patient_id, source), fractions, salt=source)


def _pixels(h: int, w: int, seed: int, bright: np.ndarray | None = None,
            contrast: float = 1.0) -> np.ndarray:
  """12-bit radiograph-like array: a gradient with noise; `bright` pixels set to 3900."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  arr = 700 + contrast * (900 * yy / h + 500 * xx / w + rng.integers(0, 120, (h, w)))
  if bright is not None:
    arr = np.where(bright > 0, 3900, arr)
  return arr.astype(np.uint16)


def _write_dicom(path: pathlib.Path, pixels: np.ndarray, patient: str, uids=None, **kw) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  dicom.write_dicom(path, pixels, bits_stored=12, phi={**PHI, 'PatientID': patient}, uids=uids,
                    **kw)


def _write_bad(path: pathlib.Path, kind: str, patient: str, seed: int) -> None:
  """'random': random bytes; 'truncated': a valid DICOM cut inside its pixel data."""
  path.parent.mkdir(parents=True, exist_ok=True)
  if kind == 'random':
    path.write_bytes(np.random.default_rng(seed).bytes(3000))
  elif kind == 'truncated':
    _write_dicom(path, _pixels(64, 64, seed), patient)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 4000])


def _csv(path: pathlib.Path, header: str, rows: list[str]) -> None:
  path.write_text('\n'.join([header, *rows]) + '\n')


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14


def write_nih(root: pathlib.Path, bad=('corrupt', 'missing')) -> Layout:
  """Images in images_001/images/ and a flat images/ folder; boxes in the 1024 frame."""
  root.mkdir(parents=True)
  tv = _pick(itertools.count(1), lambda p: base.hash_split(
      str(p), nih.TRAIN_VAL_FRACTIONS, salt=nih.SOURCE), {'train': 3, 'validation': 1})
  test_patients = [90001, 90002]
  # (patient, follow-up, findings, view, file size, boxes in the 1024 frame)
  rows = [
      (tv['train'][0], 0, 'Cardiomegaly|Effusion', 'PA', 64, []),
      (tv['train'][0], 1, 'No Finding', 'AP', 64, []),
      (tv['train'][1], 0, 'Hernia|Pleural_Thickening', 'PA', 64, []),
      (tv['validation'][0], 0, 'Nodule', 'AP', 64, []),
      (test_patients[0], 0, 'Infiltration|Mass', 'PA', 64,
       [('Infiltrate', 256, 512, 128, 256), ('Mass', 0, 0, 64, 64)]),
      (test_patients[1], 0, 'Atelectasis', 'AP', 128, [('Atelectasis', 100, 200, 300, 400)]),
  ]
  names, expect = {}, {}
  entry_rows, bbox_rows = [], []
  for i, (patient, follow, findings, view, size, boxes) in enumerate(rows):
    name = f'{patient:08d}_{follow:03d}.png'
    folder = root / ('images_001/images' if i % 2 == 0 else 'images')
    folder.mkdir(parents=True, exist_ok=True)
    arr = (np.add.outer(np.arange(size), np.arange(size)) * 100 // (2 * size) + 50 + i)
    Image.fromarray(arr.astype(np.uint8)).save(folder / name)
    # OriginalImage is the DICOM size (not the 1024 PNG frame the boxes are given in).
    entry_rows.append(f'{name},{findings},{follow},{patient},{40 + i},M,{view},2500,2048,'
                      '0.168,0.168,')
    for label, x, y, w, h in boxes:
      bbox_rows.append(f'{name},{label},{x},{y},{w},{h},,,')
    split = ('test' if patient in test_patients else
             'validation' if patient in tv['validation'] else 'train')
    names.setdefault(split, []).append(name)
    expect[name] = dict(split=split, patient=str(patient), findings=findings, view=view,
                        boxes=[(y / 1024, x / 1024, (y + h) / 1024, (x + w) / 1024)
                               for _, x, y, w, h in boxes],
                        box_labels=[nih.BOX_LABEL_ALIASES.get(b[0], b[0]) for b in boxes])
  layout = Layout(root, expect)
  if 'missing' in bad:  # a Data_Entry row (and list entry) naming a PNG that is not there
    name = f'{tv["train"][2]:08d}_000.png'
    entry_rows.append(f'{name},Edema,0,{tv["train"][2]},50,F,PA,2500,2048,0.168,0.168,')
    names['train'].append(name)
    layout.bad['missing'], layout.bad_split['missing'] = name, 'train'
  if 'corrupt' in bad:  # a truncated PNG in the test list
    name = f'{test_patients[1]:08d}_001.png'
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(buf, format='PNG')
    (root / 'images' / name).write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    entry_rows.append(f'{name},Edema,1,{test_patients[1]},50,F,PA,2500,2048,0.168,0.168,')
    names['test'].append(name)
    layout.bad['corrupt'], layout.bad_split['corrupt'] = name, 'test'
  _csv(root / 'Data_Entry_2017.csv',
       'Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,'
       'View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],', entry_rows)
  _csv(root / 'BBox_List_2017.csv', 'Image Index,Finding Label,Bbox [x,y,w,h],,,', bbox_rows)
  (root / 'train_val_list.txt').write_text(
      '\n'.join(names['train'] + names['validation']) + '\n')
  (root / 'test_list.txt').write_text('\n'.join(names['test']) + '\n')
  return layout


# ---------------------------------------------------------------------------------------------
# RSNA Pneumonia (images 128 high x 64 wide: stored at 256 with scale 2, 64 px of padding left)


def rsna_rel(x, y, w, h):
  """Hand-computed stored box for a 128x64 source: y*2/256, (x*2 + 64)/256."""
  return (2 * y / 256, (2 * x + 64) / 256, 2 * (y + h) / 256, (2 * (x + w) + 64) / 256)


def write_rsna(root: pathlib.Path, bad=BAD_KINDS) -> Layout:
  root.mkdir(parents=True)
  uuid = lambda i: f'{i:08x}-1a2b-4c3d-8e9f-{i * 7919:012x}'  # like the public patientIds
  picked = _pick(map(uuid, itertools.count(1)), lambda p: base.hash_split(
      p, rsna.FRACTIONS, salt=rsna.SOURCE), {'train': 5, 'validation': 1, 'test': 1})
  a, b, e, f, g = picked['train']
  c, d = picked['validation'][0], picked['test'][0]
  cases = {  # patientId -> (class, boxes x,y,w,h)
      a: ('Lung Opacity', [(8, 16, 20, 40), (30, 70, 25, 50)]),
      b: ('Normal', []),
      c: ('No Lung Opacity / Not Normal', []),
      d: ('Lung Opacity', [(0, 0, 64, 128)]),
  }
  label_rows, class_rows, expect = [], [], {}
  for n, (pid, (cls, boxes)) in enumerate(cases.items()):
    _write_dicom(root / rsna.IMAGE_DIR / f'{pid}.dcm', _pixels(128, 64, n),
                 f'{PHI_PATIENT_PREFIX}{n}', photometric='MONOCHROME2')
    for x, y, w, h in boxes:
      label_rows.append(f'{pid},{x},{y},{w},{h},1')
    if not boxes:
      label_rows.append(f'{pid},,,,,0')
    class_rows += [f'{pid},{cls}'] * max(1, len(boxes))  # one class row per label row, as released
    split = next(s for s, ps in picked.items() if pid in ps)
    expect[pid] = dict(split=split, label=rsna.CLASSES[cls], boxes=[rsna_rel(*x) for x in boxes])
  layout = Layout(root, expect)
  for kind, pid, n in (('random', e, 10), ('truncated', f, 11), ('missing', g, 12)):
    if kind not in bad:
      continue
    _write_bad(root / rsna.IMAGE_DIR / f'{pid}.dcm', kind, f'{PHI_PATIENT_PREFIX}{n}', n)
    label_rows.append(f'{pid},,,,,0')
    class_rows.append(f'{pid},Normal')
    layout.bad[kind], layout.bad_split[kind] = f'{pid}.dcm', 'train'
  _csv(root / rsna.LABELS_CSV, 'patientId,x,y,width,height,Target', label_rows)
  _csv(root / rsna.CLASS_CSV, 'patientId,class', class_rows)
  (root / 'stage_2_test_images').mkdir()
  return layout


# ---------------------------------------------------------------------------------------------
# SIIM-ACR Pneumothorax (images 128 high x 64 wide)

# Hand-written RLE regions of a 128x64 image (column-major, offsets relative to the previous run):
#   '1300 30'        -> column 10 (1300 = 10*128 + 20), rows 20..49
#   '2580 10 118 10' -> column 20 rows 20..29, then 2590 + 118 = 2708 = 21*128 + 20: column 21
HAND_RLES = ('1300 30', '2580 10 118 10')


def hand_mask() -> np.ndarray:
  m = np.zeros((128, 64), np.uint8)
  m[20:50, 10] = 1
  m[20:30, 20:22] = 1
  return m


def siim_uids(n: int) -> dict[str, str]:
  return {'StudyInstanceUID': f'1.2.276.0.7230010.3.1.2.8323329.{n}.1517875162.{n * 31}',
          'SeriesInstanceUID': f'1.2.276.0.7230010.3.1.3.8323329.{n}.1517875162.{n * 37}',
          'SOPInstanceUID': f'1.2.276.0.7230010.3.1.4.8323329.{n}.1517875162.{n * 41}'}


def siim_path(root: pathlib.Path, uids: dict[str, str]) -> pathlib.Path:
  return (root / siim.IMAGE_DIR / uids['StudyInstanceUID'] / uids['SeriesInstanceUID']
          / f'{uids["SOPInstanceUID"]}.dcm')


def write_siim(root: pathlib.Path, bad=BAD_KINDS) -> Layout:
  root.mkdir(parents=True)
  picked = _pick((f'{PHI_PATIENT_PREFIX}{i}' for i in itertools.count(100)),
                 lambda p: _dicom_split(p, siim.SOURCE, siim.FRACTIONS),
                 {'train': 2, 'validation': 1, 'test': 1})
  p1, p2 = picked['train']
  square = np.zeros((128, 64), np.uint8)
  square[60:80, 30:50] = 1
  # (image n, patient, rows of EncodedPixels, expected full-size mask)
  images = [
      (1, p1, list(HAND_RLES), hand_mask()),            # two regions: the union
      (2, p1, ['-1'], np.zeros((128, 64), np.uint8)),    # same patient: same split
      (3, p2, [siim.rle_encode(square)], square),
      (4, picked['validation'][0], ['-1'], np.zeros((128, 64), np.uint8)),
      (5, picked['test'][0], [siim.rle_encode(hand_mask())], hand_mask()),
  ]
  rows, expect = [], {}
  for n, patient, rles, mask in images:
    uids = siim_uids(n)
    # A dim background (contrast 0.2) so the drawn region stands out after bilinear resizing.
    _write_dicom(siim_path(root, uids), _pixels(128, 64, n, bright=mask, contrast=0.2), patient,
                 uids=uids)
    rows += [f'{uids["SOPInstanceUID"]}, {r}' for r in rles]
    split = next(s for s, ps in picked.items() if patient in ps)
    expect[uids['SOPInstanceUID']] = dict(split=split, patient=patient, mask=mask,
                                          label=int(mask.any()))
  layout = Layout(root, expect)
  for kind, n in (('random', 10), ('truncated', 11), ('missing', 12)):
    if kind not in bad:
      continue
    uids = siim_uids(n)
    _write_bad(siim_path(root, uids), kind, p1, n)  # p1: the split is known when readable
    rows.append(f'{uids["SOPInstanceUID"]}, -1')
    layout.bad[kind] = f'{uids["SOPInstanceUID"]}.dcm'
  # A DICOM without a CSV row is left out (not an error).
  uids = siim_uids(20)
  _write_dicom(siim_path(root, uids), _pixels(128, 64, 20), picked['test'][0], uids=uids)
  _csv(root / siim.RLE_CSV, 'ImageId, EncodedPixels', rows)
  (root / 'dicom-images-test').mkdir()
  return layout


# ---------------------------------------------------------------------------------------------
# SIIM-FISABIO-RSNA COVID-19 (images 64 high x 128 wide: scale 2, 64 px of padding on top)


def covid_rel(x1, y1, x2, y2):
  """Hand-computed stored box for a 64x128 source: (y*2 + 64)/256, x*2/256."""
  return ((2 * y1 + 64) / 256, 2 * x1 / 256, (2 * y2 + 64) / 256, 2 * x2 / 256)


def write_covid(root: pathlib.Path, bad=BAD_KINDS) -> Layout:
  root.mkdir(parents=True)
  picked = _pick((f'{PHI_PATIENT_PREFIX}{i}' for i in itertools.count(500)),
                 lambda p: _dicom_split(p, covid.SOURCE, covid.FRACTIONS),
                 {'train': 2, 'validation': 1, 'test': 1})
  q, r = picked['train']
  # (study n, patient, study class column, images: [(image n, label string, boxes x1y1x2y2)])
  studies = [
      (1, q, 'Typical Appearance',
       [(1, 'opacity 1 10 8 50 30 opacity 0.9 60.5 2 140 70', [(10, 8, 50, 30),
                                                               (60.5, 2, 128, 64)])]),
      (2, q, 'Negative for Pneumonia', [(2, 'none 1 0 0 1 1', [])]),
      (3, r, 'Indeterminate Appearance', [(3, 'none 1 0 0 1 1', []),
                                          (4, 'opacity 1 0 0 128 64', [(0, 0, 128, 64)])]),
      (4, picked['validation'][0], 'Atypical Appearance', [(5, 'none 1 0 0 1 1', [])]),
      (5, picked['test'][0], 'Typical Appearance', [(6, 'opacity 1 64 32 96 48',
                                                     [(64, 32, 96, 48)])]),
  ]
  study_rows, image_rows, expect = [], [], {}
  for sn, patient, column, imgs in studies:
    study = f'{sn:04d}{"ab" * 4}'
    hot = ','.join('1' if c == column else '0' for c in covid.STUDY_COLUMNS)
    study_rows.append(f'{study}_study,{hot}')
    for n, label, boxes in imgs:
      image = f'{n:04x}c0ffee{n:02x}'
      series = f'{n:04d}5e7e5'
      path = root / covid.IMAGE_DIR / study / series / f'{image}.dcm'
      _write_dicom(path, _pixels(64, 128, n), patient,
                   photometric='MONOCHROME1' if n == 2 else 'MONOCHROME2')
      dict_boxes = ', '.join(f"{{'x': {x1}, 'y': {y1}, 'width': {x2 - x1}, 'height': {y2 - y1}}}"
                             for x1, y1, x2, y2 in boxes)
      boxes_cell = f'"[{dict_boxes}]"' if boxes else ''
      image_rows.append(f'{image}_image,{boxes_cell},{label},{study}')
      split = next(s for s, ps in picked.items() if patient in ps)
      expect[image] = dict(split=split, patient=patient, study=study,
                           label=covid.STUDY_COLUMNS[column],
                           boxes=[covid_rel(*b) for b in boxes])
  layout = Layout(root, expect)
  for kind, n in (('random', 10), ('truncated', 11), ('missing', 12)):
    if kind not in bad:
      continue
    image, study = f'{n:04x}badbad{n:02x}', f'{n:04d}{"cd" * 4}'
    _write_bad(root / covid.IMAGE_DIR / study / '1' / f'{image}.dcm', kind, q, n)
    study_rows.append(f'{study}_study,1,0,0,0')
    image_rows.append(f'{image}_image,,none 1 0 0 1 1,{study}')
    layout.bad[kind] = f'{image}.dcm'
  _csv(root / covid.STUDY_CSV, 'id,Negative for Pneumonia,Typical Appearance,'
       'Indeterminate Appearance,Atypical Appearance', study_rows)
  _csv(root / covid.IMAGE_CSV, 'id,boxes,label,StudyInstanceUID', image_rows)
  return layout
