"""`siim_covid19`: SIIM-FISABIO-RSNA COVID-19 Detection (Kaggle 2021), training set.

6,334 chest radiographs (DICOM; from BIMCV-COVID19+ and MIDRC-RICORD) in 6,054 studies. Each study
is graded into one of four mutually exclusive classes (`train_study_level.csv`): negative for
pneumonia, typical, indeterminate or atypical appearance for COVID-19. `label` is the grade of
the image's study (the fine-grained task). Every image is annotated with boxes around airspace
opacities (`train_image_level.csv`), so `has_boxes` is True (an image with 'none' has zero
boxes). `study_id` is the release's (de-identified) StudyInstanceUID.

Boxes come from the 'label' column ('opacity 1 x1 y1 x2 y2' per box, 'none 1 0 0 1 1' for none)
in the DICOM's pixel frame, clipped to the image.

Patients: the DICOMs' PatientID is replaced by a salted pseudonym (`dicom.patient_pseudonym`),
stored as `patient_id` and used as the split key (hashed, 80 / 10 / 10), so all studies of one
patient stay in one split and no patient identifier is stored. The salt is
$CXR_JAX_PSEUDONYM_SALT when set (private copies), else a fixed public default.
"""

from __future__ import annotations

import os

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base
from cxr_jax.data.builders import siim_acr_pneumothorax as _dicom_helpers

# train_study_level.csv columns -> stored ClassLabel names (in this order).
STUDY_COLUMNS = {
    'Negative for Pneumonia': 'negative',
    'Typical Appearance': 'typical',
    'Indeterminate Appearance': 'indeterminate',
    'Atypical Appearance': 'atypical',
}
BOX_CLASSES = ('opacity',)
SOURCE = 'siim_covid19'
FRACTIONS = {'train': 0.8, 'validation': 0.1, 'test': 0.1}
IMAGE_DIR = 'train'
IMAGE_CSV = 'train_image_level.csv'
STUDY_CSV = 'train_study_level.csv'
SALT_ENV = _dicom_helpers.SALT_ENV

_DOC = f"""SIIM-FISABIO-RSNA COVID-19 Detection (2021): download the competition data from
https://www.kaggle.com/c/siim-covid19-detection/data (Kaggle account; accept the competition
rules) and extract it so that the manual dir holds::

    {IMAGE_CSV}    id ('<image>_image'), boxes, label ('opacity 1 x1 y1 x2 y2 ...' or
                             'none 1 0 0 1 1'), StudyInstanceUID
    {STUDY_CSV}    id ('<study>_study'), 'Negative for Pneumonia', 'Typical Appearance',
                             'Indeterminate Appearance', 'Atypical Appearance' (one-hot)
    {IMAGE_DIR}/<StudyInstanceUID>/<SeriesInstanceUID>/<image>.dcm
    (test/ and sample_submission.csv may be present; they are not used)

Terms: the dataset and annotations are available for academic and non-commercial use (Lakhani
et al. 2023) under the Kaggle competition rules; the images come from BIMCV-COVID19+ and
MIDRC-RICORD, whose own terms also apply.
"""

_CITATION = """@article{lakhani2023siimcovid,
  title   = {The 2021 {SIIM-FISABIO-RSNA} Machine Learning {COVID-19} Challenge: Annotation and
             Standard Exam Classification of {COVID-19} Chest Radiographs},
  author  = {Lakhani, Paras and Mongan, J. and Singhal, C. and Zhou, Q. and Andriole, K. P. and
             Auffermann, W. F. and Prasanna, P. M. and Pham, T. X. and Peterson, Michael and
             Bergquist, P. J. and others},
  journal = {Journal of Digital Imaging},
  volume  = {36},
  number  = {1},
  pages   = {365--372},
  year    = {2023},
  doi     = {10.1007/s10278-022-00706-8},
}"""


def parse_label_boxes(text: str, where: str) -> np.ndarray:
  """'opacity 1 x1 y1 x2 y2 ...' / 'none 1 0 0 1 1' -> float [N, 4] (x1, y1, x2, y2) opacities."""
  tokens = text.split()
  if len(tokens) % 6:
    raise base.BadInputError(f'{where}: label {text[:60]!r} is not groups of '
                             '"class confidence x1 y1 x2 y2"')
  boxes = []
  for k in range(0, len(tokens), 6):
    name = tokens[k]
    if name == 'none':
      continue
    if name != 'opacity':
      raise base.BadInputError(f'{where}: unknown box class {name!r}')
    try:
      x1, y1, x2, y2 = (float(t) for t in tokens[k + 2:k + 6])
    except ValueError:
      raise base.BadInputError(f'{where}: non-numeric box in label') from None
    if not (np.isfinite([x1, y1, x2, y2]).all() and x2 >= x1 and y2 >= y1):
      raise base.BadInputError(f'{where}: invalid box {(x1, y1, x2, y2)}')
    boxes.append((x1, y1, x2, y2))
  return np.asarray(boxes, np.float64).reshape(-1, 4)


def _study_label(row: dict | None, where: str) -> str:
  if row is None:
    raise base.BadInputError(f'{where}: study has no row in {STUDY_CSV}')
  hot = []
  for column, name in STUDY_COLUMNS.items():
    value = row.get(column, '').strip()
    if value not in ('0', '1'):
      raise base.BadInputError(f'{STUDY_CSV} {where}: {column!r} is {value!r}, not 0 or 1')
    if value == '1':
      hot.append(name)
  if len(hot) != 1:
    raise base.BadInputError(f'{STUDY_CSV} {where}: {len(hot)} study classes set, expected 1')
  return hot[0]


def _strip_suffix(value: str, suffix: str) -> str:
  return value[:-len(suffix)] if value.endswith(suffix) else value


# (In the class body `__doc__` would be the class docstring.)
_DESCRIPTION = __doc__


class SiimCovid19(base.CxrBuilder):
  """SIIM-FISABIO-RSNA COVID-19 Detection; see the module docstring."""

  SOURCE = SOURCE
  DESCRIPTION = _DESCRIPTION
  HOMEPAGE = 'https://www.kaggle.com/c/siim-covid19-detection'
  CITATION = _CITATION
  MANUAL_DOWNLOAD_INSTRUCTIONS = _DOC

  def _features(self):
    return {
        'label': tfds.features.ClassLabel(names=list(STUDY_COLUMNS.values())),
        'objects': base.objects_feature(BOX_CLASSES),
        'has_boxes': tfds.features.Scalar(dtype=np.bool_),
        'study_id': tfds.features.Text(),
    }

  def _list_examples(self, root):
    root = epath.Path(root)
    studies = {_strip_suffix(r['id'], '_study'): r
               for r in base.read_csv(root / STUDY_CSV) if r.get('id')}
    images = [r for r in base.read_csv(root / IMAGE_CSV) if r.get('id')]
    files = _dicom_helpers.index_dicoms(root / IMAGE_DIR)
    ids = [_strip_suffix(r['id'], '_image') for r in images]
    unlabelled = len(set(files) - set(ids))
    if unlabelled:
      logging.warning('%s: %d DICOMs under %s have no row in %s; left out', self.SOURCE,
                      unlabelled, IMAGE_DIR, IMAGE_CSV)
    salt = _dicom_helpers.pseudonym_salt(self.SOURCE)
    patients = _dicom_helpers.pseudonyms({i: files[i] for i in ids if i in files}, salt)
    self.info.metadata['patient_id'] = (
        'HMAC-SHA256 pseudonym of the DICOM PatientID, salt from $' + SALT_ENV
        if os.environ.get(SALT_ENV) else
        'HMAC-SHA256 pseudonym of the DICOM PatientID, public default salt')
    splits: dict[str, list[base.Item]] = {s: [] for s in FRACTIONS}
    for image_id, row in zip(ids, images):
      study = row.get('StudyInstanceUID', '').strip()
      patient = patients.get(image_id, '')
      split = base.hash_split(patient or study or image_id, FRACTIONS, salt=self.SOURCE)
      payload = (image_id, files.get(image_id), row, studies.get(study), root / IMAGE_DIR)
      splits[split].append(base.Item(key=image_id, patient_id=patient, payload=payload))
    return splits

  def _load_example(self, item, size):
    image_id, path, row, study_row, folder = item.payload
    where = f'image {image_id}'
    if path is None:
      raise base.BadInputError(f'{image_id}.dcm: file not found under {folder} '
                               f'(named in {IMAGE_CSV})')
    study = row.get('StudyInstanceUID', '').strip()
    if not study:
      raise base.BadInputError(f'{IMAGE_CSV} {where}: empty StudyInstanceUID')
    label = _study_label(study_row, f'{where} (study {study})')
    x1y1x2y2 = parse_label_boxes(row.get('label', ''), f'{IMAGE_CSV} {where}')
    pixels = base.read_dicom_pixels(path)
    if not item.patient_id:
      raise base.BadInputError(f'{path}: no PatientID to split by')
    h, w = pixels.shape
    letterbox = base.Letterbox(pixels.shape, size)
    objects = base.empty_objects()
    if len(x1y1x2y2):
      yxyx = x1y1x2y2[:, [1, 0, 3, 2]]
      yxyx = np.clip(yxyx, 0.0, np.array([h, w, h, w], np.float64))
      objects = {'bbox': letterbox.boxes(yxyx), 'label': np.zeros(len(yxyx), np.int64)}
    return {
        'image': letterbox.image(pixels),
        'label': label,
        'objects': objects,
        'has_boxes': True,
        'study_id': study,
    }
