"""`rsna_bone_age`: RSNA Pediatric Bone Age Challenge 2017 hand radiographs (Halabi et al. 2019).

12,611 training hand radiographs (PNG, varying size) with the bone age in months and the child's
sex, plus, in the RSNA's own release, 1,425 validation images. Each image id is its own patient.

Splits. If the official validation set is present (its 'Validation Dataset.csv'), it becomes
'test' and the training images are hashed by id into train / validation (90 / 10). Otherwise the
training images are hashed into train / validation / test (80 / 10 / 10). An id listed in both
CSV files is dropped from the training side (logged, counted in info.metadata['dropped_ids']).

Features (besides image / patient_id / source):
  bone_age_months  float32
  male             bool
  body_part        ClassLabel mura.BODY_PARTS, always 'hand' (the list `mura` uses too)
"""

from __future__ import annotations

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base
from cxr_jax.data.builders import mura

BODY_PARTS = mura.BODY_PARTS
HASH_FRACTIONS = {'train': 0.8, 'validation': 0.1, 'test': 0.1}
TRAIN_FRACTIONS = {'train': 0.9, 'validation': 0.1}
TRAINING_CSV = 'boneage-training-dataset.csv'
TRAINING_DIR = 'boneage-training-dataset'
VALIDATION_CSV = 'Validation Dataset.csv'
VALIDATION_PARENTS = ('', 'Bone Age Validation Set')
VALIDATION_DIRS = ('boneage-validation-dataset-1', 'boneage-validation-dataset-2')

_INSTRUCTIONS = """\
Download the training set from Kaggle (https://www.kaggle.com/datasets/kmader/rsna-bone-age) or
from the RSNA (https://www.rsna.org/rsnai/ai-image-challenge/RSNA-Pediatric-Bone-Age-Challenge-2017)
and extract it so that the manual dir holds:

    <manual_dir>/boneage-training-dataset.csv         (columns id, boneage, male)
    <manual_dir>/boneage-training-dataset/1377.png    (Kaggle's nested folder,
                           boneage-training-dataset/boneage-training-dataset/, is accepted too)

Optionally add the RSNA's validation set (then it is the test split):

    <manual_dir>/Bone Age Validation Set/Validation Dataset.csv   (columns Image ID, male,
                                                                   Bone Age (months))
    <manual_dir>/Bone Age Validation Set/boneage-validation-dataset-1/<id>.png
    <manual_dir>/Bone Age Validation Set/boneage-validation-dataset-2/<id>.png

('Bone Age Validation Set/' may be left out; each image folder may be nested once more in a
folder of the same name.) The Kaggle test set has no bone ages and is not read.

Terms: the RSNA challenge data are for non-commercial research and education; cite Halabi et al.
2019.
"""


def _image_dirs(folder: epath.Path) -> list[epath.Path]:
  """folder and folder/<its own name> (archives often nest a folder of the same name)."""
  return [d for d in (folder / folder.name, folder) if d.is_dir()]


def _find_image(dirs: list[epath.Path], image_id: str) -> epath.Path | None:
  for folder in dirs:
    path = folder / f'{image_id}.png'
    if path.exists():
      return path
  return None


def _bool(value: str) -> bool | None:
  return {'true': True, '1': True, 'm': True, 'false': False, '0': False, 'f': False}.get(
      value.strip().lower())


class RsnaBoneAge(base.CxrBuilder):
  """RSNA pediatric bone age: hand radiographs with bone age (months) and sex."""

  SOURCE = 'rsna_bone_age'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://www.rsna.org/rsnai/ai-image-challenge/RSNA-Pediatric-Bone-Age-Challenge-2017'
  CITATION = """\
@article{halabi2019rsna,
  title   = {The {RSNA} Pediatric Bone Age Machine Learning Challenge},
  author  = {Halabi, Safwan S. and Prevedello, Luciano M. and Kalpathy-Cramer, Jayashree and
             Mamonov, Artem B. and Bilbily, Alexander and Cicero, Mark and others},
  journal = {Radiology},
  volume  = {290},
  number  = {2},
  pages   = {498--503},
  year    = {2019},
  doi     = {10.1148/radiol.2018180736},
}"""

  def _features(self):
    return {
        'bone_age_months': tfds.features.Scalar(dtype=np.float32),
        'male': tfds.features.Scalar(dtype=np.bool_),
        'body_part': tfds.features.ClassLabel(names=list(BODY_PARTS)),
    }

  def _rows(self, csv_path: epath.Path, dirs: list[epath.Path], columns: tuple[str, str, str],
            prefix: str) -> list[base.Item]:
    items = []
    id_col, age_col, male_col = columns
    rows = [{k.lstrip('\ufeff'): v for k, v in row.items()} for row in base.read_csv(csv_path)]
    if rows and not set(columns) <= set(rows[0]):
      raise base.BadInputError(f'{csv_path}: expected columns {", ".join(columns)}; found '
                               f'{", ".join(rows[0])}')
    for row in rows:
      image_id = row.get(id_col, '')
      if not image_id:
        continue
      path = (_find_image(dirs, image_id)
              or (dirs[0] if dirs else csv_path.parent) / f'{image_id}.png')
      items.append(base.Item(key=f'{prefix}/{image_id}.png', patient_id=image_id,
                             payload=(path, row.get(age_col, ''), row.get(male_col, ''),
                                      csv_path)))
    return items

  def _list_examples(self, root):
    root = epath.Path(root)
    if not (root / TRAINING_CSV).exists():
      raise base.BadInputError(f'{root}: no {TRAINING_CSV}; see the layout in '
                               'MANUAL_DOWNLOAD_INSTRUCTIONS')
    training = self._rows(root / TRAINING_CSV, _image_dirs(root / TRAINING_DIR),
                          ('id', 'boneage', 'male'), 'training')
    validation_csv = next((root / p / VALIDATION_CSV for p in VALIDATION_PARENTS
                           if (root / p / VALIDATION_CSV).exists()), None)
    if validation_csv is None:
      splits = {s: [] for s in HASH_FRACTIONS}
      for item in training:
        splits[base.hash_split(item.patient_id, HASH_FRACTIONS, salt=self.SOURCE)].append(item)
      return splits
    parents = [validation_csv.parent] + ([root] if validation_csv.parent != root else [])
    dirs = [d for parent in parents for name in VALIDATION_DIRS for d in _image_dirs(parent / name)]
    test = self._rows(validation_csv, dirs, ('Image ID', 'Bone Age (months)', 'male'),
                      'validation')
    test_ids = {item.patient_id for item in test}
    splits = {'train': [], 'validation': [], 'test': test}
    dropped = 0
    for item in training:
      if item.patient_id in test_ids:
        dropped += 1
        continue
      splits[base.hash_split(item.patient_id, TRAIN_FRACTIONS, salt=self.SOURCE)].append(item)
    if dropped:
      logging.warning('%s: dropped %d training images whose id is also in %s', self.SOURCE,
                      dropped, validation_csv)
    self.info.metadata['dropped_ids'] = dropped
    return splits

  def _load_example(self, item, size):
    path, age, male, csv_path = item.payload
    try:
      bone_age = float(age)
    except ValueError:
      bone_age = float('nan')
    if not np.isfinite(bone_age) or bone_age < 0:
      raise base.BadInputError(f'{csv_path}: row for {path.name} has no valid bone age ({age!r})')
    is_male = _bool(male)
    if is_male is None:
      raise base.BadInputError(f'{csv_path}: row for {path.name} has no valid sex ({male!r})')
    image = base.read_image(path)
    box = base.Letterbox(image.shape, size)
    return {'image': box.image(image), 'bone_age_months': np.float32(bone_age), 'male': is_male,
            'body_part': 'hand'}
