"""`nih_chestxray14`: NIH ChestX-ray14 (Wang et al. 2017), 112,120 frontal radiographs, 14 findings.

Labels are text-mined from the reports (multi-label, 14 findings in the standard order below);
984 images of the official test list also carry expert boxes for 8 of the findings
(`BBox_List_2017.csv`). Splits: the official `test_list.txt` is `test`; `train_val_list.txt` is
split by patient (hashed, 90 / 10) into `train` and `validation`. Both official lists are
patient-disjoint, so no patient is in two splits.

Boxes. `BBox_List_2017.csv` gives (x, y, w, h) in the pixel frame of the released 1024 x 1024 PNGs
(not of the original DICOMs, whose size is the `OriginalImage[Width,Height]` column). A resized
copy of the images (e.g. a 224 px mirror) is accepted: boxes are scaled by file size / 1024.
"""

from __future__ import annotations

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base

# The standard ChestX-ray14 label order (Wang et al. 2017, and every benchmark since).
FINDINGS = ('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule',
            'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema', 'Fibrosis',
            'Pleural_Thickening', 'Hernia')
NO_FINDING = 'No Finding'
# The 8 findings with boxes (the ChestX-ray8 classes); BBox_List_2017.csv spells one 'Infiltrate'.
BOX_CLASSES = FINDINGS[:8]
BOX_LABEL_ALIASES = {'Infiltrate': 'Infiltration'}
VIEW_POSITIONS = ('PA', 'AP')
# Pixel frame of the released PNGs, in which BBox_List_2017.csv gives its boxes.
RELEASED_SIZE_PX = 1024
SOURCE = 'nih_chestxray14'
TRAIN_VAL_FRACTIONS = {'train': 0.9, 'validation': 0.1}
DATA_ENTRY_FILES = ('Data_Entry_2017_v2020.csv', 'Data_Entry_2017.csv')

_DOC = """NIH ChestX-ray14: download from https://nihcc.app.box.com/v/ChestXray-NIHCC (also mirrored
on Kaggle as `nih-chest-xrays/data` and in Google Cloud Storage). Extract the 12 image archives
and put the metadata files next to them, so that the manual dir holds::

    Data_Entry_2017.csv            (or Data_Entry_2017_v2020.csv; the newer one is used if both)
    BBox_List_2017.csv
    train_val_list.txt
    test_list.txt
    images_001/images/00000001_000.png ... images_012/images/...   (as extracted), or
    images/00000001_000.png ...                                     (one flat folder)

Every PNG under the manual dir is indexed by file name, so any folder layout works (file names
must be unique). Data_Entry columns used: 'Image Index', 'Finding Labels' ('A|B' or 'No Finding'),
'Patient ID', 'View Position'. BBox_List columns: 'Image Index', 'Finding Label', 'Bbox [x', 'y',
'w', 'h]'.

Terms: the NIH Clinical Center places no restrictions on the use of the images, but asks you to
link the download site (https://nihcc.app.box.com/v/ChestXray-NIHCC), cite Wang et al., CVPR
2017, and acknowledge the NIH Clinical Center as the data provider.
"""

_CITATION = """@inproceedings{wang2017chestxray8,
  title     = {{ChestX-ray8}: Hospital-scale Chest X-ray Database and Benchmarks on
               Weakly-Supervised Classification and Localization of Common Thorax Diseases},
  author    = {Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and
               Bagheri, Mohammadhadi and Summers, Ronald M.},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {3462--3471},
  year      = {2017},
}"""


def parse_findings(text: str, where: str) -> np.ndarray:
  """'Cardiomegaly|Effusion' -> multi-hot uint8 [14] in FINDINGS order; 'No Finding' -> zeros."""
  labels = np.zeros(len(FINDINGS), np.uint8)
  for name in (t.strip() for t in text.split('|')):
    if name == NO_FINDING or not name:
      continue
    if name not in FINDINGS:
      raise base.BadInputError(f'{where}: unknown finding {name!r}')
    labels[FINDINGS.index(name)] = 1
  return labels


def find_files(folder: epath.Path, suffix: str) -> list[epath.Path]:
  """Every file under `folder` (recursively) whose name ends with `suffix`, sorted.

  (epath's `rglob` refuses '**' on some backends, so the tree is walked with `iterdir`.)
  """
  found, pending = [], [epath.Path(folder)]
  while pending:
    for p in pending.pop().iterdir():
      if p.is_dir():
        pending.append(p)
      elif p.name.lower().endswith(suffix):
        found.append(p)
  return sorted(found)


def _read_list(path: epath.Path) -> list[str]:
  if not path.exists():
    raise base.BadInputError(f'{path}: file not found (see MANUAL_DOWNLOAD_INSTRUCTIONS)')
  return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _float(row: dict, column: str, where: str) -> float:
  try:
    return float(row[column])
  except (KeyError, ValueError):
    raise base.BadInputError(f'{where}: bad or missing {column!r} value') from None


# (In the class body `__doc__` would be the class docstring.)
_DESCRIPTION = __doc__


class NihChestxray14(base.CxrBuilder):
  """NIH ChestX-ray14; see the module docstring."""

  SOURCE = SOURCE
  MULTI_LABEL_NAMES = FINDINGS
  DESCRIPTION = _DESCRIPTION
  HOMEPAGE = 'https://nihcc.app.box.com/v/ChestXray-NIHCC'
  CITATION = _CITATION
  MANUAL_DOWNLOAD_INSTRUCTIONS = _DOC

  def _features(self):
    return {
        'labels': base.multi_hot_feature(len(FINDINGS)),
        'objects': base.objects_feature(BOX_CLASSES),
        'has_boxes': tfds.features.Scalar(dtype=np.bool_),
        'view_position': tfds.features.ClassLabel(names=list(VIEW_POSITIONS)),
    }

  def _list_examples(self, root):
    root = epath.Path(root)
    entry_path = next((root / n for n in DATA_ENTRY_FILES if (root / n).exists()), None)
    if entry_path is None:
      raise base.BadInputError(f'{root}: no {" or ".join(DATA_ENTRY_FILES)} found (see '
                               'MANUAL_DOWNLOAD_INSTRUCTIONS)')
    entries = {r['Image Index']: r for r in base.read_csv(entry_path) if r.get('Image Index')}
    boxes: dict[str, list[dict]] = {}
    bbox_path = root / 'BBox_List_2017.csv'
    if bbox_path.exists():
      for r in base.read_csv(bbox_path):
        if r.get('Image Index'):
          boxes.setdefault(r['Image Index'], []).append(r)
    else:
      logging.warning('%s: %s not found; no boxes', self.SOURCE, bbox_path.name)
    test = _read_list(root / 'test_list.txt')
    train_val = _read_list(root / 'train_val_list.txt')
    pngs: dict[str, epath.Path] = {}
    for p in find_files(root, '.png'):
      pngs.setdefault(p.name, p)

    splits: dict[str, list[base.Item]] = {'train': [], 'validation': [], 'test': []}
    for names, official in ((train_val, 'train_val'), (test, 'test')):
      for name in names:
        row = entries.get(name)
        patient = row.get('Patient ID', '').strip() if row else ''
        if row is not None and patient.isdigit():
          patient = str(int(patient))  # '00000001' and '1' are one patient
        if official == 'test':
          split = 'test'
        else:
          split = base.hash_split(patient or name, TRAIN_VAL_FRACTIONS, salt=self.SOURCE)
        payload = (name, pngs.get(name), row, boxes.get(name, []), entry_path.name, root)
        splits[split].append(base.Item(key=name, patient_id=patient, payload=payload))
    unlisted = len(set(entries) - set(test) - set(train_val))
    if unlisted:
      logging.warning('%s: %d images of %s are in neither test_list.txt nor '
                      'train_val_list.txt; left out', self.SOURCE, unlisted, entry_path.name)
    return splits

  def _load_example(self, item, size):
    name, path, row, box_rows, entry_name, root = item.payload
    if path is None:
      raise base.BadInputError(f'{name}: file not found (no PNG of that name under {root})')
    if row is None:
      raise base.BadInputError(f'{path}: no row in {entry_name}')
    labels = parse_findings(row.get('Finding Labels', ''), f'{entry_name} row {name}')
    view = row.get('View Position', '').strip().upper()
    if view not in VIEW_POSITIONS:
      raise base.BadInputError(f'{entry_name} row {name}: unknown View Position {view!r}')
    image = base.read_image(path)
    letterbox = base.Letterbox(image.shape, size)
    objects = base.empty_objects()
    if box_rows:
      h, w = image.shape
      xywh, classes = [], []
      for r in box_rows:
        where = f'BBox_List_2017.csv row {name}'
        label = r.get('Finding Label', '').strip()
        label = BOX_LABEL_ALIASES.get(label, label)
        if label not in BOX_CLASSES:
          raise base.BadInputError(f'{where}: unknown box label {label!r}')
        xywh.append([_float(r, c, where) for c in ('Bbox [x', 'y', 'w', 'h]')])
        classes.append(BOX_CLASSES.index(label))
      # Boxes are in the released 1024 x 1024 frame; scale into this file's pixels.
      scale = np.array([w, h, w, h], np.float64) / RELEASED_SIZE_PX
      yxyx = base.xywh_to_yxyx(np.asarray(xywh) * scale)
      objects = {'bbox': letterbox.boxes(yxyx), 'label': np.asarray(classes, np.int64)}
    return {
        'image': letterbox.image(image),
        'labels': labels,
        'objects': objects,
        'has_boxes': bool(box_rows),
        'view_position': view,
    }
