"""Small fake copies of the real on-disk layouts of the file-based datasets, for builder tests.

Each `write_<dataset>(root)` writes the dataset's real folder layout and file formats (with real
file names) under `root` and returns a `Layout`: the manual dir to prepare from, the examples
written (what each should come out as) and the bad files planted in it. Images are small (96 x 80
where the format allows) with one bright rectangle drawn where the masks / boxes are, so tests can
check that every feature stays aligned. `real_pneumonia_jpegs()` gives 16 real Kermany JPEGs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import zipfile
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from cxr_jax.data.builders import base

H, W = 96, 80  # fake image size (rows, columns): portrait, letterboxed to a 256 x 213 band
RECT = (30, 60, 20, 50)  # the bright rectangle (y0, y1, x0, x1) in fake images and their masks
BACKGROUND, BRIGHT = 40, 220


@dataclasses.dataclass
class Layout:
  manual_dir: pathlib.Path
  # patient_id (unique per example here) -> expected values, including 'split'.
  examples: dict[str, dict[str, Any]]
  # split -> file names of bad inputs that land in it.
  bad: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def split_sizes(self) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for ex in self.examples.values():
      sizes[ex['split']] = sizes.get(ex['split'], 0) + 1
    return sizes

  @property
  def bad_names(self) -> list[str]:
    return [name for names in self.bad.values() for name in names]


# ---------------------------------------------------------------------------------------------
# Pixels and files


def fake_image(h: int = H, w: int = W, rect=RECT, seed: int = 0, depth: int = 8) -> np.ndarray:
  """Textured dark background (40..59) with one bright (220) rectangle; 16-bit if depth=16."""
  yy, xx = np.mgrid[0:h, 0:w]
  image = (BACKGROUND + (yy + 2 * xx + seed) % 20).astype(np.uint8)
  if rect is not None:
    y0, y1, x0, x1 = rect
    image[y0:y1, x0:x1] = BRIGHT
  if depth == 16:
    return image.astype(np.uint16) * 16  # 12-bit values in 16-bit words
  return image


def rect_mask(h: int = H, w: int = W, rect=RECT, value: int = 255) -> np.ndarray:
  mask = np.zeros((h, w), np.uint8)
  y0, y1, x0, x1 = rect
  mask[y0:y1, x0:x1] = value
  return mask


def save(path: pathlib.Path, array: np.ndarray, rgb: bool = False, fmt: str | None = None) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  if array.dtype == np.uint16:
    image = Image.fromarray(array.astype(np.uint16))  # 16-bit grayscale ('I;16')
  else:
    image = Image.fromarray(array)
    if rgb:
      image = image.convert('RGB')
  kwargs = {'quality': 95} if (fmt or path.suffix.lower().lstrip('.')) in ('jpeg', 'jpg') else {}
  image.save(path, format=fmt, **kwargs)


def corrupt(path: pathlib.Path, seed: int = 0) -> None:
  """Random bytes under an image file name."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def truncate(path: pathlib.Path) -> None:
  """Cuts a written file in half (a truncated download)."""
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def pick(keys: Iterable[str], fractions: dict[str, float], salt: str,
         want: dict[str, int]) -> Iterator[tuple[str, str]]:
  """(key, split) for the first keys that fill `want` per split under base.hash_split."""
  need = dict(want)
  for key in keys:
    split = base.hash_split(key, fractions, salt=salt)
    if need.get(split, 0) > 0:
      need[split] -= 1
      yield key, split
    if not any(need.values()):
      return
  raise AssertionError(f'could not fill {want} from the keys')


# ---------------------------------------------------------------------------------------------
# kermany_pneumonia


def write_kermany(root: pathlib.Path) -> Layout:
  """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg with two bad files and a test overlap."""
  from cxr_jax.data.builders import kermany_pneumonia as km  # pylint: disable=g-import-not-at-top
  top = root / 'chest_xray'
  files = {  # (official folder, class folder, name) -> subtype
      ('train', 'NORMAL', 'IM-0115-0001.jpeg'): 'normal',
      ('train', 'NORMAL', 'IM-0117-0001.jpeg'): 'normal',
      ('train', 'NORMAL', 'NORMAL2-IM-1427-0001.jpeg'): 'normal',
      ('train', 'PNEUMONIA', 'person1_bacteria_1.jpeg'): 'bacteria',
      ('train', 'PNEUMONIA', 'person2_virus_6.jpeg'): 'virus',
      ('train', 'PNEUMONIA', 'person1946_bacteria_4874.jpeg'): 'bacteria',  # also in test
      ('val', 'NORMAL', 'NORMAL2-IM-1430-0001.jpeg'): 'normal',
      ('val', 'PNEUMONIA', 'person3_virus_9.jpeg'): 'virus',
      ('test', 'NORMAL', 'IM-0001-0001.jpeg'): 'normal',
      ('test', 'PNEUMONIA', 'person1946_bacteria_4875.jpeg'): 'bacteria',
      ('test', 'PNEUMONIA', 'person100_virus_184.jpeg'): 'virus',
  }
  # More pooled patients, chosen so that the hashed validation split is not empty.
  for key, _ in pick((f'person{n}' for n in range(200, 400)), km.POOL_FRACTIONS,
                     'kermany_pneumonia', {'train': 1, 'validation': 2}):
    files[('train', 'PNEUMONIA', f'{key}_bacteria_{int(key[6:]) * 3}.jpeg')] = 'bacteria'
  examples = {}
  for i, ((folder, cls, name), subtype) in enumerate(sorted(files.items())):
    save(top / folder / cls / name, fake_image(seed=i))
    parsed = km.parse_name(cls.lower(), pathlib.Path(name).stem)
    patient = parsed[0]
    if folder == 'test':
      split = 'test'
    elif patient == 'person1946':
      continue  # dropped: the patient is in the official test split
    else:
      split = base.hash_split(patient, km.POOL_FRACTIONS, salt='kermany_pneumonia')
    examples[patient] = {'split': split, 'label': cls.lower(), 'subtype': subtype, 'name': name}
  (top / 'train' / 'NORMAL' / '.DS_Store').write_bytes(b'\0' * 64)  # ignored
  (top / '__MACOSX').mkdir()  # ignored
  # Bad input: a corrupt file (random bytes) in the pool, a truncated JPEG in test.
  corrupt(top / 'train' / 'PNEUMONIA' / 'person50_bacteria_99.jpeg')
  save(top / 'test' / 'NORMAL' / 'IM-0005-0001.jpeg', fake_image(seed=99))
  truncate(top / 'test' / 'NORMAL' / 'IM-0005-0001.jpeg')
  bad = {base.hash_split('person50', km.POOL_FRACTIONS, salt='kermany_pneumonia'):
             ['person50_bacteria_99.jpeg'],
         'test': ['IM-0005-0001.jpeg']}
  return Layout(root, examples, bad, extra={'dropped': {'patients': 1, 'images': 1}})


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get('CXR_JAX_TEST_CACHE')
                      or os.path.expanduser('~/.cache/cxr_jax/test-data'))


PNEUMONIA_WHEEL = 'pneumonia_model_package-0.3.0-*.whl'


def real_pneumonia_jpegs(cache_dir: str | os.PathLike | None = None) -> dict[str, bytes]:
  """The 16 real Kermany JPEGs (8 NORMAL2-IM-*, 8 person*_bacteria_*) of a PyPI wheel.

  The wheel pneumonia-model-package==0.3.0 (83 MB) is looked for in `cache_dir` (default
  $CXR_JAX_TEST_CACHE, else ~/.cache/cxr_jax/test-data) and downloaded there once with
  `pip download --no-deps` (never installed). Skips the calling test if it cannot be had.
  """
  import pytest  # pylint: disable=g-import-not-at-top
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  wheel = next(iter(sorted(cache.glob(PNEUMONIA_WHEEL))), None)
  if wheel is None:
    cache.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
               '--disable-pip-version-check', 'pneumonia-model-package==0.3.0', '-d', str(cache)]
    try:
      result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
      reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ['no output']
    except (OSError, subprocess.TimeoutExpired) as e:
      reason = [repr(e)]
    wheel = next(iter(sorted(cache.glob(PNEUMONIA_WHEEL))), None)
    if wheel is None:
      pytest.skip('real Kermany JPEGs unavailable: could not download the wheel '
                  f'pneumonia-model-package==0.3.0 into {cache} ({reason[0]}); put the wheel '
                  'there or set CXR_JAX_TEST_CACHE to a folder holding it')
  with zipfile.ZipFile(wheel) as z:
    return {pathlib.PurePosixPath(n).name: z.read(n) for n in z.namelist()
            if '/pneumonia-data/' in n and n.lower().endswith('.jpeg')}


def write_kermany_real(root: pathlib.Path, jpegs: dict[str, bytes]) -> dict[str, str]:
  """Spreads the real JPEGs over chest_xray/{train,val,test}; returns name -> official folder.

  person1946 has two images: one goes to train and one to test, so the builder must drop it
  from train. Per folder: 4 NORMAL + 4 PNEUMONIA in train, 1 + 1 in val, 3 + 3 in test.
  """
  normal = sorted(n for n in jpegs if n.startswith('NORMAL'))
  pneumonia = sorted(n for n in jpegs if n.startswith('person'))
  assert len(normal) == 8 and len(pneumonia) == 8, sorted(jpegs)
  pneumonia.remove('person1946_bacteria_4875.jpeg')
  pneumonia.insert(5, 'person1946_bacteria_4875.jpeg')  # -> test, with 4874 in train
  folders = ['train'] * 4 + ['val'] + ['test'] * 3
  where = {}
  for names, cls in ((normal, 'NORMAL'), (pneumonia, 'PNEUMONIA')):
    for name, folder in zip(names, folders):
      path = root / 'chest_xray' / folder / cls / name
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(jpegs[name])
      where[name] = folder
  return where


# ---------------------------------------------------------------------------------------------
# montgomery, shenzhen


def _tb_ids(prefix: str, salt: str, want: dict[str, int]) -> list[tuple[str, str]]:
  return list(pick((f'{prefix}_{n:04d}' for n in range(1, 2000)),
                   {'train': 0.8, 'validation': 0.1, 'test': 0.1}, salt, want))


def write_montgomery(root: pathlib.Path) -> Layout:
  """MontgomerySet/CXR_png + ManualMask/{left,right}Mask; one mask of the wrong size."""
  top = root / 'MontgomerySet'
  ids = _tb_ids('MCUCXR', 'montgomery', {'train': 4, 'validation': 1, 'test': 2})
  examples = {}
  y0, y1, x0, x1 = RECT
  middle = (x0 + x1) // 2
  for i, (patient, split) in enumerate(ids[:-1]):
    label = i % 2
    name = f'{patient}_{label}.png'
    # Real Montgomery PNGs are 12-bit grey levels: write some as 16-bit.
    save(top / 'CXR_png' / name, fake_image(seed=i, depth=16 if i % 3 == 0 else 8))
    # The image's right half of the rectangle is the left mask, and vice versa.
    save(top / 'ManualMask' / 'leftMask' / name, rect_mask(rect=(y0, y1, middle, x1)))
    save(top / 'ManualMask' / 'rightMask' / name, rect_mask(rect=(y0, y1, x0, middle)))
    examples[patient] = {'split': split, 'label': ('normal', 'tuberculosis')[label],
                         'has_mask': True, 'name': name}
  (top / 'ClinicalReadings').mkdir(parents=True)
  (top / 'ClinicalReadings' / f'{ids[0][0]}_0.txt').write_text('Patient\'s Sex: F\nAge: 040Y\n')
  # Bad input: a left mask one row short of its image.
  patient, split = ids[-1]
  name = f'{patient}_1.png'
  save(top / 'CXR_png' / name, fake_image(seed=7))
  save(top / 'ManualMask' / 'leftMask' / name, rect_mask(h=H - 1, rect=RECT))
  save(top / 'ManualMask' / 'rightMask' / name, rect_mask(rect=RECT))
  return Layout(root, examples, {split: [name]})


def write_shenzhen(root: pathlib.Path) -> Layout:
  """ChinaSet_AllFiles/CXR_png (RGB PNGs) + mask/*_mask.png for most; one truncated PNG."""
  images = root / 'ChinaSet_AllFiles' / 'CXR_png'
  ids = _tb_ids('CHNCXR', 'shenzhen', {'train': 4, 'validation': 1, 'test': 2})
  examples = {}
  for i, (patient, split) in enumerate(ids[:-1]):
    label = (i + 1) % 2
    name = f'{patient}_{label}.png'
    save(images / name, fake_image(seed=i), rgb=True)
    has_mask = i != 1
    if has_mask:
      save(root / 'mask' / f'{patient}_{label}_mask.png', rect_mask())
    examples[patient] = {'split': split, 'label': ('normal', 'tuberculosis')[label],
                         'has_mask': has_mask, 'name': name}
  (root / 'ChinaSet_AllFiles' / 'ClinicalReadings').mkdir(parents=True)
  # Bad input: a truncated PNG.
  patient, split = ids[-1]
  name = f'{patient}_1.png'
  save(images / name, fake_image(seed=11), rgb=True)
  truncate(images / name)
  return Layout(root, examples, {split: [name]})


# ---------------------------------------------------------------------------------------------
# jsrt_scr

JSRT_SIDE = 2048
# Raw (12-bit, inverted) test pattern: 64x64 blocks in the top-left corner, a bright square.
JSRT_BLOCKS = {(0, 0): 0, (0, 64): 4095, (0, 128): 2048, (0, 192): 65535}
JSRT_BACKGROUND_RAW, JSRT_SQUARE_RAW = 3000, 500
JSRT_SQUARE = (512, 1024, 256, 768)  # rows, columns in the 2048 image (the left-lung mask)
JSRT_HEART = (1200, 1600, 800, 1300)
JSRT_CLAVICLES = ((300, 400, 200, 700), (300, 400, 1300, 1800))


def jsrt_raw(seed: int = 0) -> np.ndarray:
  raw = np.full((JSRT_SIDE, JSRT_SIDE), JSRT_BACKGROUND_RAW + seed, np.uint16)
  y0, y1, x0, x1 = JSRT_SQUARE
  raw[y0:y1, x0:x1] = JSRT_SQUARE_RAW
  for (y, x), value in JSRT_BLOCKS.items():
    raw[y:y + 64, x:x + 64] = value
  return raw


def _scr_mask(path: pathlib.Path, rect, side: int = JSRT_SIDE // 2) -> None:
  y0, y1, x0, x1 = (v // 2 for v in rect) if side == JSRT_SIDE // 2 else rect
  mask = np.zeros((side, side), np.uint8)
  mask[y0:y1, x0:x1] = 255
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(mask).save(path, format='GIF')


def write_jsrt(root: pathlib.Path, folds: bool = True, masks: bool = True,
               raw_bytes: bool = True) -> Layout:
  """All247images/*.IMG (2048^2 big-endian raw) + scr/fold{1,2}/masks/<structure>/*.gif.

  fold1 holds JPCLN (nodule) images and fold2 JPCNN ones (the real folds mix both). One .IMG is
  truncated. With raw_bytes=False the .IMG files are empty (enough for listing tests).
  """
  from cxr_jax.data.builders import jsrt_scr  # pylint: disable=g-import-not-at-top
  images = root / 'All247images'
  images.mkdir(parents=True)
  fold1 = list(pick((f'JPCLN{n:03d}' for n in range(1, 155)), jsrt_scr.FOLD_FRACTIONS,
                    'jsrt_scr', {'train': 2, 'validation': 1}))
  fold2 = [('JPCNN002', 'test')]
  examples = {}
  for i, (stem, split) in enumerate(fold1 + fold2):
    fold = 'fold1' if split != 'test' else 'fold2'
    path = images / f'{stem}.IMG'
    if raw_bytes:
      jsrt_raw(seed=i).astype('>u2').tofile(path)
    else:
      path.write_bytes(b'')
    if masks:
      scr = root / 'scr' / (fold if folds else '') / 'masks'
      _scr_mask(scr / 'left lung' / f'{stem}.gif', JSRT_SQUARE)
      _scr_mask(scr / 'right lung' / f'{stem}.gif', (512, 1024, 1300, 1800))
      _scr_mask(scr / 'heart' / f'{stem}.gif', JSRT_HEART)
      _scr_mask(scr / 'left clavicle' / f'{stem}.gif', JSRT_CLAVICLES[0])
      _scr_mask(scr / 'right clavicle' / f'{stem}.gif', JSRT_CLAVICLES[1])
    examples[stem] = {'split': split, 'label': 'nodule' if 'CLN' in stem else 'non_nodule',
                      'has_mask': masks, 'fold': fold, 'seed': i}
  # Bad input: a truncated .IMG (half its bytes), in fold2 -> test.
  bad = images / 'JPCNN005.IMG'
  if raw_bytes:
    jsrt_raw().astype('>u2').tofile(bad)
    truncate(bad)
  else:
    bad.write_bytes(b'')
  if masks:
    scr = root / 'scr' / ('fold2' if folds else '') / 'masks'
    for structure in ('left lung', 'right lung', 'heart', 'left clavicle', 'right clavicle'):
      _scr_mask(scr / structure / 'JPCNN005.gif', JSRT_SQUARE)
  bad_split = 'test' if folds else base.hash_split('JPCNN005', jsrt_scr.HASH_FRACTIONS,
                                                   salt='jsrt_scr')
  return Layout(root, examples, {bad_split: ['JPCNN005.IMG']})


# ---------------------------------------------------------------------------------------------
# tbx11k

TBX_CATEGORIES = [{'id': 1, 'name': 'ActiveTuberculosis', 'supercategory': 'Tuberculosis'},
                  {'id': 2, 'name': 'ObsoletePulmonaryTuberculosis',
                   'supercategory': 'Tuberculosis'},
                  {'id': 3, 'name': 'PulmonaryTuberculosis', 'supercategory': 'Tuberculosis'}]
TBX_BOX = (10, 20, 30, 40)  # x, y, width, height in a 96 x 80 image (rows 20..60, cols 10..40)


def write_tbx11k(root: pathlib.Path) -> Layout:
  """TBX11K/imgs/{health,sick,tb,test}, lists/TBX11K_{train,val}.txt, annotations/json (COCO).

  tb/tb0003.png's annotation record says it is 160 x 192 (twice its real size) with a box of
  twice TBX_BOX: the builder must scale it back to TBX_BOX.
  """
  top = root / 'TBX11K'
  official = {'train': ['health/h0001.png', 'health/h0002.png', 'sick/s0001.png',
                        'sick/s0002.png', 'tb/tb0001.png', 'tb/tb0002.png'],
              'val': ['health/h0003.png', 'sick/s0003.png', 'tb/tb0003.png']}
  boxes = {'tb/tb0001.png': [(1, TBX_BOX)],
           'tb/tb0002.png': [(2, (5, 5, 20, 20)), (3, (40, 50, 30, 40))],
           'tb/tb0003.png': [(1, tuple(2 * v for v in TBX_BOX))]}
  examples = {}
  image_id = 0
  for official_split, names in official.items():
    coco = {'info': {'description': 'fake TBX11K'}, 'categories': TBX_CATEGORIES,
            'images': [], 'annotations': []}
    for name in names:
      image_id += 1
      x, y, w, h = TBX_BOX
      rect = (y, y + h, x, x + w) if name.startswith('tb/') else None
      save(top / 'imgs' / name, fake_image(rect=rect, seed=image_id), rgb=True)
      size = (192, 160) if name == 'tb/tb0003.png' else (H, W)
      coco['images'].append({'id': image_id, 'file_name': name, 'height': size[0],
                             'width': size[1]})
      for category, bbox in boxes.get(name, []):
        coco['annotations'].append({'id': len(coco['annotations']) + 1, 'image_id': image_id,
                                    'category_id': category, 'bbox': list(bbox),
                                    'area': bbox[2] * bbox[3], 'iscrowd': 0})
      folder = name.split('/')[0]
      examples[pathlib.PurePosixPath(name).stem] = {
          'split': 'train' if official_split == 'train' else 'validation',
          'label': {'health': 'healthy', 'sick': 'sick_non_tb', 'tb': 'tb'}[folder],
          'boxes': boxes.get(name, []), 'name': name}
    (top / 'lists').mkdir(parents=True, exist_ok=True)
    (top / 'lists' / f'TBX11K_{official_split}.txt').write_text('\n'.join(names) + '\n')
    (top / 'annotations' / 'json').mkdir(parents=True, exist_ok=True)
    (top / 'annotations' / 'json' / f'TBX11K_{official_split}.json').write_text(json.dumps(coco))
  save(top / 'imgs' / 'test' / 'test0001.png', fake_image(seed=50), rgb=True)  # not read
  (top / 'lists' / 'all_test.txt').write_text('test/test0001.png\n')
  return Layout(root, examples)


# ---------------------------------------------------------------------------------------------
# mura


def write_mura(root: pathlib.Path) -> Layout:
  """MURA-v1.1/{train,valid}_{image_paths,labeled_studies}.csv + images; one CSV row names a
  missing file. Includes an RGB image and odd sizes."""
  from cxr_jax.data.builders import mura  # pylint: disable=g-import-not-at-top
  top = root / 'MURA-v1.1'
  train_patients = list(pick((f'patient{n:05d}' for n in range(1, 3000)), mura.TRAIN_FRACTIONS,
                             'mura', {'train': 3, 'validation': 1}))
  (a, _), (b, _), (c, _), (d, _) = sorted(train_patients, key=lambda p: p[1] != 'train')[:4]
  studies = [  # (official, part, patient, study, label, [image sizes (h, w, rgb)])
      ('train', 'XR_SHOULDER', a, 'study1_positive', 1, [(96, 80, False), (70, 120, True)]),
      ('train', 'XR_HAND', a, 'study1_negative', 0, [(96, 80, False)]),
      ('train', 'XR_ELBOW', b, 'study1_negative', 0, [(96, 80, False)]),
      ('train', 'XR_FINGER', c, 'study2_positive', 1, [(96, 80, False)]),
      ('train', 'XR_WRIST', d, 'study1_positive', 1, [(96, 80, False)]),
      ('valid', 'XR_HUMERUS', 'patient11185', 'study1_negative', 0, [(96, 80, False)]),
      ('valid', 'XR_FOREARM', 'patient11186', 'study1_positive', 1, [(80, 96, False)]),
  ]
  rows = {'train': [], 'valid': []}
  labeled = {'train': [], 'valid': []}
  examples = {}
  for n, (official, part, patient, study, label, sizes) in enumerate(studies):
    study_dir = f'MURA-v1.1/{official}/{part}/{patient}/{study}/'
    labeled[official].append(f'{study_dir},{label}')
    for j, (h, w, rgb) in enumerate(sizes, start=1):
      relative = f'{study_dir}image{j}.png'
      save(root / relative, fake_image(h, w, rect=None, seed=n + j), rgb=rgb)
      rows[official].append(relative)
      split = ('test' if official == 'valid' else
               base.hash_split(patient, mura.TRAIN_FRACTIONS, salt='mura'))
      body_part = part[3:].lower()
      examples[f'{patient}/{body_part}/{study.split("_")[0]}/image{j}'] = {
          'split': split, 'label': ('normal', 'abnormal')[label], 'body_part': body_part,
          'patient': patient, 'size': (h, w)}
  # Bad input: a CSV row naming a file that does not exist.
  missing = f'MURA-v1.1/train/XR_SHOULDER/{a}/study1_positive/image3.png'
  rows['train'].append(missing)
  for official in ('train', 'valid'):
    (top / f'{official}_image_paths.csv').write_text('\n'.join(rows[official]) + '\n')
    (top / f'{official}_labeled_studies.csv').write_text('\n'.join(labeled[official]) + '\n')
  split = base.hash_split(a, mura.TRAIN_FRACTIONS, salt='mura')
  return Layout(root, examples, {split: ['image3.png']}, extra={'missing': missing})


# ---------------------------------------------------------------------------------------------
# rsna_bone_age


def write_bone_age(root: pathlib.Path, validation: bool = True) -> Layout:
  """boneage-training-dataset.csv + boneage-training-dataset/boneage-training-dataset/<id>.png
  (Kaggle's nesting), and the RSNA validation set; one CSV row names a missing image, one id is
  in both CSVs."""
  from cxr_jax.data.builders import rsna_bone_age as ba  # pylint: disable=g-import-not-at-top
  fractions = ba.TRAIN_FRACTIONS if validation else ba.HASH_FRACTIONS
  want = {'train': 3, 'validation': 1} if validation else {'train': 3, 'validation': 1, 'test': 1}
  ids = list(pick((str(n) for n in range(1377, 3000)), fractions, 'rsna_bone_age', want))
  train_dir = root / 'boneage-training-dataset' / 'boneage-training-dataset'
  lines = ['id,boneage,male']
  examples = {}
  sizes = [(120, 90, False), (96, 80, True), (80, 96, False), (96, 80, False), (100, 100, False)]
  for i, (image_id, split) in enumerate(ids):
    age, male = 12.0 * (i + 1) + 0.5, i % 2 == 0
    h, w, rgb = sizes[i]
    save(train_dir / f'{image_id}.png', fake_image(h, w, rect=None, seed=i), rgb=rgb)
    lines.append(f'{image_id},{age:g},{male}')
    examples[image_id] = {'split': split, 'bone_age_months': age, 'male': male, 'size': (h, w)}
  # Bad input: a row naming a missing image.
  missing_id = '9999'
  lines.append(f'{missing_id},100,False')
  bad = {base.hash_split(missing_id, fractions, salt='rsna_bone_age'): [f'{missing_id}.png']}
  extra = {}
  if validation:
    val_root = root / 'Bone Age Validation Set'
    val_lines = ['Image ID,male,Bone Age (months)']
    for j, (image_id, folder, nested) in enumerate(
        [('8001', 'boneage-validation-dataset-1', True),
         ('8002', 'boneage-validation-dataset-2', False)]):
      folder_path = val_root / folder / (folder if nested else '')
      save(folder_path / f'{image_id}.png', fake_image(rect=None, seed=20 + j))
      val_lines.append(f'{image_id},{"TRUE" if j == 0 else "FALSE"},{30 * (j + 1)}')
      examples[image_id] = {'split': 'test', 'bone_age_months': 30.0 * (j + 1), 'male': j == 0,
                            'size': (H, W)}
    # An id in both CSVs: dropped from the training side.
    save(train_dir / '8002.png', fake_image(rect=None, seed=30))
    lines.append('8002,5,True')
    (val_root / 'Validation Dataset.csv').write_text('\n'.join(val_lines) + '\n')
    extra['dropped_ids'] = 1
  (root / 'boneage-training-dataset.csv').write_text('\n'.join(lines) + '\n')
  return Layout(root, examples, bad, extra)

