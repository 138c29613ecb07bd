"""`rsna_pneumonia`: RSNA Pneumonia Detection Challenge (Shih et al. 2019), stage 2 training set.

26,684 frontal radiographs (DICOM, from NIH ChestX-ray14) labelled by radiologists into three
classes (`stage_2_detailed_class_info.csv`) with boxes around lung opacities
(`stage_2_train_labels.csv`: one row per box, or one row with empty coordinates and Target 0).
Every image is fully annotated for boxes, so `has_boxes` is True throughout (an image with no
opacity has zero boxes). The unlabelled `stage_2_test_images` are not used.

Patients: the public release identifies each image by `patientId`, an anonymised UUID (one image
per patientId); it is the `patient_id` feature and the split key (hashed, 80 / 10 / 10). No DICOM
header element other than the pixel module is read.
"""

from __future__ import annotations

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base

# Source class strings (stage_2_detailed_class_info.csv) -> stored ClassLabel names.
CLASSES = {
    'Normal': 'normal',
    'No Lung Opacity / Not Normal': 'no_lung_opacity_not_normal',
    'Lung Opacity': 'lung_opacity',
}
BOX_CLASSES = ('opacity',)
SOURCE = 'rsna_pneumonia'
FRACTIONS = {'train': 0.8, 'validation': 0.1, 'test': 0.1}
IMAGE_DIR = 'stage_2_train_images'
LABELS_CSV = 'stage_2_train_labels.csv'
CLASS_CSV = 'stage_2_detailed_class_info.csv'

_DOC = f"""RSNA Pneumonia Detection Challenge (2018): download the competition data from
https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data (Kaggle account; accept the
competition rules) or from RSNA (the challenge page,
https://www.rsna.org/education/ai-resources-and-training/ai-image-challenge/rsna-pneumonia-detection-challenge-2018
links the download), and extract it so that the manual dir holds::

    {LABELS_CSV}            patientId,x,y,width,height,Target  (one row per box; Target 0
                                         rows have empty x,y,width,height)
    {CLASS_CSV}     patientId,class  ('Normal', 'No Lung Opacity / Not Normal',
                                         'Lung Opacity')
    {IMAGE_DIR}/<patientId>.dcm
    (stage_2_test_images/ may be present; it is not used)

Terms: RSNA allows use of the images and annotations for academic research and education and
other commercial or non-commercial purposes, with the attribution given on the RSNA challenge page
(cite Shih et al., Radiology: AI 2019); the images come from the NIH ChestX-ray14 release (see
its terms too). Kaggle's competition rules apply to the copy downloaded from Kaggle.
"""

_CITATION = """@article{shih2019rsnapneumonia,
  title   = {Augmenting the {National Institutes of Health} Chest Radiograph Dataset with
             Expert Annotations of Possible Pneumonia},
  author  = {Shih, George and Wu, Carol C. and Halabi, Safwan S. and Kohli, Marc D. and
             Prevedello, Luciano M. and Cook, Tessa S. and Sharma, Arjun and Amorosa, Judith K.
             and Arteaga, Veronica and Galperin-Aizenberg, Maya and others},
  journal = {Radiology: Artificial Intelligence},
  volume  = {1},
  number  = {1},
  pages   = {e180041},
  year    = {2019},
  doi     = {10.1148/ryai.2019180041},
}"""


def _box(row: dict, where: str) -> list[float]:
  try:
    values = [float(row[c]) for c in ('x', 'y', 'width', 'height')]
  except (KeyError, ValueError):
    raise base.BadInputError(f'{where}: Target 1 row without a valid x,y,width,height') from None
  if not all(np.isfinite(values)) or values[2] < 0 or values[3] < 0:
    raise base.BadInputError(f'{where}: invalid box {values}')
  return values


# (In the class body `__doc__` would be the class docstring.)
_DESCRIPTION = __doc__


class RsnaPneumonia(base.CxrBuilder):
  """RSNA Pneumonia Detection Challenge; see the module docstring."""

  SOURCE = SOURCE
  DESCRIPTION = _DESCRIPTION
  HOMEPAGE = 'https://www.kaggle.com/c/rsna-pneumonia-detection-challenge'
  CITATION = _CITATION
  MANUAL_DOWNLOAD_INSTRUCTIONS = _DOC

  def _features(self):
    return {
        'label': tfds.features.ClassLabel(names=list(CLASSES.values())),
        'objects': base.objects_feature(BOX_CLASSES),
        'has_boxes': tfds.features.Scalar(dtype=np.bool_),
    }

  def _list_examples(self, root):
    root = epath.Path(root)
    boxes: dict[str, list[dict]] = {}
    for row in base.read_csv(root / LABELS_CSV):
      if row.get('patientId'):
        boxes.setdefault(row['patientId'], []).append(row)
    classes: dict[str, set[str]] = {}
    for row in base.read_csv(root / CLASS_CSV):
      if row.get('patientId'):
        classes.setdefault(row['patientId'], set()).add(row.get('class', ''))
    splits: dict[str, list[base.Item]] = {s: [] for s in FRACTIONS}
    for patient in sorted(set(boxes) | set(classes)):
      split = base.hash_split(patient, FRACTIONS, salt=self.SOURCE)
      payload = (root / IMAGE_DIR / f'{patient}.dcm', boxes.get(patient), classes.get(patient))
      splits[split].append(base.Item(key=patient, patient_id=patient, payload=payload))
    return splits

  def _load_example(self, item, size):
    path, rows, class_names = item.payload
    where = f'patientId {item.key}'
    if rows is None:
      raise base.BadInputError(f'{where}: in {CLASS_CSV} but not in {LABELS_CSV}')
    if not class_names:
      raise base.BadInputError(f'{where}: in {LABELS_CSV} but not in {CLASS_CSV}')
    if len(class_names) != 1 or next(iter(class_names)) not in CLASSES:
      raise base.BadInputError(f'{where}: class in {CLASS_CSV} is not one of {list(CLASSES)}')
    label = CLASSES[next(iter(class_names))]
    xywh = []
    for row in rows:
      target = row.get('Target', '').strip()
      if target == '1':
        xywh.append(_box(row, f'{LABELS_CSV} {where}'))
      elif target != '0':
        raise base.BadInputError(f'{LABELS_CSV} {where}: Target is {target!r}, not 0 or 1')
    if bool(xywh) != (label == 'lung_opacity'):
      raise base.BadInputError(f'{where}: {len(xywh)} boxes but class {label!r}')
    pixels = base.read_dicom_pixels(path)
    letterbox = base.Letterbox(pixels.shape, size)
    objects = base.empty_objects()
    if xywh:
      objects = {'bbox': letterbox.boxes(base.xywh_to_yxyx(xywh)),
                 'label': np.zeros(len(xywh), np.int64)}
    return {'image': letterbox.image(pixels), 'label': label, 'objects': objects,
            'has_boxes': True}
