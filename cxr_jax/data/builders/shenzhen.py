"""`shenzhen`: the Shenzhen No.3 People's Hospital tuberculosis set, with lung masks for most.

662 posterior-anterior chest radiographs (326 normal, 336 with manifestations of tuberculosis;
Jaeger et al. 2014). Lung masks are a separate release (Stirenko et al. 2018, Kaggle
'yoctoman/shcxr-lung-mask') that covers about 566 of the images, so `has_mask` says which carry
one. There are no patient identifiers beyond the image number: each image is its own patient, and
images are hashed into train / validation / test (80 / 10 / 10).

Features (besides image / patient_id / source):
  label      ClassLabel ['normal', 'tuberculosis'] from the file name's suffix (_0 / _1)
  lung_mask  uint8 {0, 1} (both lungs in one mask file); zeros where has_mask is False
  has_mask   bool
"""

from __future__ import annotations

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base
from cxr_jax.data.builders import montgomery

HASH_FRACTIONS = montgomery.HASH_FRACTIONS

_INSTRUCTIONS = """\
1. Download the Shenzhen Hospital CXR Set from the U.S. National Library of Medicine (HOMEPAGE:
   https://data.lhncbc.nlm.nih.gov/public/Tuberculosis-Chest-X-ray-Datasets/
   Shenzhen-Hospital-CXR-Set/index.html; also distributed as ChinaSet_AllFiles.zip).
2. Optionally download the lung masks of Stirenko et al. 2018
   (https://www.kaggle.com/datasets/yoctoman/shcxr-lung-mask; CC BY-NC-SA 4.0).

Extract both into the manual dir:

    <manual_dir>/ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png    (_0 normal, _1 tuberculosis)
    <manual_dir>/ChinaSet_AllFiles/ClinicalReadings/CHNCXR_0001_0.txt   (not read)
    <manual_dir>/mask/CHNCXR_0001_0_mask.png                      (optional, ~566 of 662)

The masks folder may also be mask/mask/ (as the Kaggle archive extracts) or masks/, and a mask
named CHNCXR_0001_0.png is accepted too. Images without a mask get has_mask=False.

Terms: the images are de-identified and released by the NLM for research; the data providers ask
that the set is not redistributed outside your research group and that publications cite Jaeger
et al. 2014. The masks are CC BY-NC-SA 4.0 (non-commercial; cite Stirenko et al. 2018).
"""

_MASK_DIRS = ('mask', 'mask/mask', 'masks', 'ChinaSet_AllFiles/mask', 'ChinaSet_AllFiles/masks')


def _mask_dir(root: epath.Path) -> epath.Path | None:
  for candidate in _MASK_DIRS:
    folder = root / candidate
    if folder.is_dir() and any(p.suffix.lower() == '.png' for p in folder.iterdir()):
      return folder
  return None


class Shenzhen(base.CxrBuilder):
  """Shenzhen chest X-ray set: normal vs tuberculosis, lung masks for most images."""

  SOURCE = 'shenzhen'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  DESCRIPTION = __doc__
  HOMEPAGE = ('https://data.lhncbc.nlm.nih.gov/public/Tuberculosis-Chest-X-ray-Datasets/'
              'Shenzhen-Hospital-CXR-Set/index.html')
  CITATION = montgomery.Montgomery.CITATION + """
@inproceedings{stirenko2018chest,
  title     = {Chest {X}-Ray Analysis of Tuberculosis by Deep Learning with Segmentation and
               Augmentation},
  author    = {Stirenko, Sergii and Kochura, Yuriy and Alienin, Oleg and Rokovyi, Oleksandr and
               Gang, Peng and Zeng, Wei and Gordienko, Yuri},
  booktitle = {2018 IEEE 38th International Conference on Electronics and Nanotechnology
               (ELNANO)},
  pages     = {422--428},
  year      = {2018},
  doi       = {10.1109/ELNANO.2018.8477564},
}"""

  def _features(self):
    return {
        'label': tfds.features.ClassLabel(names=list(montgomery.LABELS)),
        'lung_mask': base.mask_feature(self.image_size),
        'has_mask': tfds.features.Scalar(dtype=np.bool_),
    }

  def _list_examples(self, root):
    root = epath.Path(root)
    folder = montgomery.find_dir(
        root, ('ChinaSet_AllFiles', 'ChinaSet_AllFiles/ChinaSet_AllFiles', ''), 'CXR_png')
    if folder is None:
      raise base.BadInputError(f'{root}: no ChinaSet_AllFiles/CXR_png folder; see the layout in '
                               'MANUAL_DOWNLOAD_INSTRUCTIONS')
    mask_dir = _mask_dir(root)
    splits: dict[str, list[base.Item]] = {}
    for path in montgomery.png_files(folder / 'CXR_png'):
      mask = None
      if mask_dir is not None:
        for name in (f'{path.stem}_mask.png', path.name):
          if (mask_dir / name).exists():
            mask = mask_dir / name
            break
      patient = montgomery.image_patient(path.stem)
      split = base.hash_split(patient, HASH_FRACTIONS, salt=self.SOURCE)
      splits.setdefault(split, []).append(base.Item(
          key=path.name, patient_id=patient, payload=(path, mask)))
    return {s: splits.get(s, []) for s in HASH_FRACTIONS}

  def _load_example(self, item, size):
    path, mask = item.payload
    label = montgomery.tb_label(path.stem)
    if label is None:
      raise base.BadInputError(f'{path}: file name does not end in _0 (normal) or _1 '
                               '(tuberculosis)')
    image = base.read_image(path)
    box = base.Letterbox(image.shape, size)
    if mask is not None:
      lung_mask, has_mask = montgomery.union_mask(box, [mask]), True
    else:
      lung_mask, has_mask = np.zeros((size, size, 1), np.uint8), False
    return {'image': box.image(image), 'label': label, 'lung_mask': lung_mask,
            'has_mask': has_mask}
