"""`kermany_pneumonia`: paediatric chest X-rays, normal vs pneumonia (bacterial / viral).

5,856 anterior-posterior chest radiographs of children aged one to five from Guangzhou Women and
Children's Medical Center (Kermany et al. 2018), as JPEG files in NORMAL / PNEUMONIA folders of
the official train, val and test splits (Kaggle 'paultimothymooney/chest-xray-pneumonia').

Patients. File names identify the patient: PNEUMONIA images are
'person<N>_<bacteria|virus>_<K>.jpeg' (patient 'person<N>'), NORMAL images 'IM-<N>-<K>.jpeg' or
'NORMAL2-IM-<N>-<K>.jpeg' (patient 'IM-<N>' / 'NORMAL2-IM-<N>'). A name that fits neither pattern
is bad input.

Splits. The official test split is kept as 'test'. The official train and val folders (val holds
only 16 images) are pooled and re-split by patient hash into train / validation (90 / 10).
Patients that also occur in the official test split are dropped from the pool, so that no patient
is in two splits; the number of dropped patients and images is logged and recorded in
info.metadata['dropped_test_patients'].

Features (besides image / patient_id / source):
  label    ClassLabel ['normal', 'pneumonia'] (the NORMAL / PNEUMONIA folder)
  subtype  ClassLabel ['normal', 'bacteria', 'virus'] (folder, and for pneumonia the file name)
"""

from __future__ import annotations

import re

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base

LABELS = ('normal', 'pneumonia')
SUBTYPES = ('normal', 'bacteria', 'virus')
CLASS_FOLDERS = {'NORMAL': 'normal', 'PNEUMONIA': 'pneumonia'}
POOL_FRACTIONS = {'train': 0.9, 'validation': 0.1}
IMAGE_SUFFIXES = ('.jpeg', '.jpg', '.png')

_NORMAL_RE = re.compile(r'^((?:NORMAL2-)?IM-\d+)-', re.IGNORECASE)
_PNEUMONIA_RE = re.compile(r'^(person\d+)_(bacteria|virus)_', re.IGNORECASE)

_INSTRUCTIONS = """\
Download 'Chest X-Ray Images (Pneumonia)' from Kaggle
(https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia; the original release is
Mendeley Data doi:10.17632/rscbjbr9sj.2, ZhangLabData/CellData/chest_xray) and extract it:

    <manual_dir>/chest_xray/train/NORMAL/IM-0115-0001.jpeg
    <manual_dir>/chest_xray/train/PNEUMONIA/person1_bacteria_1.jpeg
    <manual_dir>/chest_xray/val/{NORMAL,PNEUMONIA}/*.jpeg
    <manual_dir>/chest_xray/test/{NORMAL,PNEUMONIA}/*.jpeg

The manual dir may also be the chest_xray folder itself. The Kaggle archive's extra copies
(chest_xray/chest_xray/, __MACOSX/) are ignored.

Licence: CC BY 4.0 (Mendeley Data release); cite Kermany et al. 2018.
"""


def parse_name(class_name: str, stem: str) -> tuple[str, str] | None:
  """(patient id, subtype) from a file name, or None when it fits no known pattern."""
  if class_name == 'normal':
    m = _NORMAL_RE.match(stem)
    return (m.group(1), 'normal') if m else None
  m = _PNEUMONIA_RE.match(stem)
  return (m.group(1), m.group(2).lower()) if m else None


def find_root(root: epath.Path) -> epath.Path:
  for candidate in (root / 'chest_xray', root):
    if (candidate / 'train').is_dir() and (candidate / 'test').is_dir():
      return candidate
  raise base.BadInputError(f'{root}: no chest_xray/train and chest_xray/test folders; see the '
                           'layout in MANUAL_DOWNLOAD_INSTRUCTIONS')


class KermanyPneumonia(base.CxrBuilder):
  """Paediatric chest X-rays (Kermany et al. 2018): normal / bacterial / viral pneumonia."""

  SOURCE = 'kermany_pneumonia'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://data.mendeley.com/datasets/rscbjbr9sj/2'
  CITATION = """\
@article{kermany2018identifying,
  title   = {Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning},
  author  = {Kermany, Daniel S. and Goldbaum, Michael and Cai, Wenjia and Valentim, Carolina
             C. S. and Liang, Huiying and Baxter, Sally L. and others},
  journal = {Cell},
  volume  = {172},
  number  = {5},
  pages   = {1122--1131.e9},
  year    = {2018},
  doi     = {10.1016/j.cell.2018.02.010},
}"""

  def _features(self):
    return {
        'label': tfds.features.ClassLabel(names=list(LABELS)),
        'subtype': tfds.features.ClassLabel(names=list(SUBTYPES)),
    }

  def _items(self, root: epath.Path, folder: str) -> list[base.Item]:
    items = []
    split_dir = root / folder
    if not split_dir.is_dir():
      return items
    for class_dir in sorted(split_dir.iterdir()):
      class_name = CLASS_FOLDERS.get(class_dir.name.upper())
      if class_name is None or not class_dir.is_dir():
        continue
      for path in sorted(class_dir.iterdir()):
        if path.name.startswith('.') or path.suffix.lower() not in IMAGE_SUFFIXES:
          continue
        parsed = parse_name(class_name, path.stem)
        patient = parsed[0] if parsed else f'{class_name}/{path.stem}'
        items.append(base.Item(key=f'{folder}/{class_dir.name}/{path.name}', patient_id=patient,
                               payload=(path, class_name, parsed[1] if parsed else None)))
    return items

  def _list_examples(self, root):
    root = find_root(epath.Path(root))
    test = self._items(root, 'test')
    test_patients = {item.patient_id for item in test}
    splits: dict[str, list[base.Item]] = {'train': [], 'validation': [], 'test': test}
    dropped_patients, dropped_images = set(), 0
    for item in self._items(root, 'train') + self._items(root, 'val'):
      if item.patient_id in test_patients:
        dropped_patients.add(item.patient_id)
        dropped_images += 1
        continue
      splits[base.hash_split(item.patient_id, POOL_FRACTIONS, salt=self.SOURCE)].append(item)
    if dropped_images:
      logging.warning('%s: dropped %d train/val images of %d patients who also occur in the '
                      'official test split', self.SOURCE, dropped_images, len(dropped_patients))
    self.info.metadata['dropped_test_patients'] = {'patients': len(dropped_patients),
                                                   'images': dropped_images}
    return splits

  def _load_example(self, item, size):
    path, class_name, subtype = item.payload
    if subtype is None:
      pattern = ("IM-<N>-<K> or NORMAL2-IM-<N>-<K>" if class_name == 'normal'
                 else 'person<N>_<bacteria|virus>_<K>')
      raise base.BadInputError(f'{path}: file name does not match {pattern}')
    image = base.read_image(path)
    box = base.Letterbox(image.shape, size)
    return {'image': box.image(image), 'label': class_name, 'subtype': subtype}
