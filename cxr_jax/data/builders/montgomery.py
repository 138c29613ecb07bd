"""`montgomery`: the Montgomery County (Maryland, USA) tuberculosis screening set, with lung masks.

138 posterior-anterior chest radiographs (80 normal, 58 with manifestations of tuberculosis), each
with a manual left and right lung outline (Jaeger et al. 2014). Every image carries its own lung
mask; the source has no patient identifiers beyond the image number, so each image is its own
patient and images are hashed into train / validation / test (80 / 10 / 10).

Features (besides image / patient_id / source):
  label      ClassLabel ['normal', 'tuberculosis'] from the file name's suffix (_0 / _1)
  lung_mask  uint8 {0, 1}, the union of ManualMask/leftMask and ManualMask/rightMask
  has_mask   bool (False only where an image has neither mask file)
"""

from __future__ import annotations

from typing import Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base

LABELS = ('normal', 'tuberculosis')
HASH_FRACTIONS = {'train': 0.8, 'validation': 0.1, 'test': 0.1}

_INSTRUCTIONS = """\
Download the Montgomery County CXR Set from the U.S. National Library of Medicine (HOMEPAGE:
https://data.lhncbc.nlm.nih.gov/public/Tuberculosis-Chest-X-ray-Datasets/
Montgomery-County-CXR-Set/MontgomerySet/index.html; also distributed as NLM-MontgomeryCXRSet.zip)
and extract it so that the manual dir holds:

    <manual_dir>/MontgomerySet/CXR_png/MCUCXR_0001_0.png          (..._0 normal, ..._1 tuberculosis)
    <manual_dir>/MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png
    <manual_dir>/MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png
    <manual_dir>/MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt  (not read)

The manual dir may also be the MontgomerySet folder itself, or a folder holding
NLM-MontgomeryCXRSet/MontgomerySet. The clinical readings (age, sex, findings) are not used.

Terms: the images are de-identified and released by the NLM for research; the data providers ask
that the set is not redistributed outside your research group (new requests go to the NLM) and
that publications cite Jaeger et al. 2014 (and Candemir et al. 2014 for the lung masks).
"""


def tb_label(stem: str) -> str | None:
  """'MCUCXR_0001_0' / 'CHNCXR_0001_1' -> 'normal' / 'tuberculosis' (None if no _0/_1 suffix)."""
  suffix = stem.rsplit('_', 1)[-1] if '_' in stem else ''
  return {'0': 'normal', '1': 'tuberculosis'}.get(suffix)


def image_patient(stem: str) -> str:
  """The image number without its label suffix: 'MCUCXR_0001_0' -> 'MCUCXR_0001'."""
  return stem.rsplit('_', 1)[0] if tb_label(stem) else stem


def png_files(folder: epath.Path) -> list[epath.Path]:
  return sorted(p for p in folder.iterdir()
                if p.suffix.lower() == '.png' and not p.name.startswith('.'))


def union_mask(box: base.Letterbox, paths: Sequence[epath.Path],
               planes: Sequence[np.ndarray] | None = None) -> np.ndarray:
  """Union of mask files (non-zero = inside), each exactly its image's size, letterboxed.

  `planes` (optional) are the already-read masks, in the order of `paths`.
  """
  if planes is None:
    planes = [base.read_image(p) for p in paths]
  inside = None
  for path, plane in zip(paths, planes):
    if tuple(plane.shape) != tuple(box.source_hw):
      raise base.BadInputError(
          f'{path}: mask is {plane.shape[0]}x{plane.shape[1]} but its image is '
          f'{box.source_hw[0]}x{box.source_hw[1]}')
    inside = plane > 0 if inside is None else inside | (plane > 0)
  return box.mask(inside.astype(np.uint8), paths[0])


def find_dir(root: epath.Path, candidates: Sequence[str], marker: str) -> epath.Path | None:
  """The first of root/candidate (in order) that contains `marker`."""
  for candidate in candidates:
    folder = root / candidate if candidate else root
    if (folder / marker).exists():
      return folder
  return None


class Montgomery(base.CxrBuilder):
  """Montgomery County chest X-ray set: normal vs tuberculosis, with lung masks."""

  SOURCE = 'montgomery'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  DESCRIPTION = __doc__
  HOMEPAGE = ('https://data.lhncbc.nlm.nih.gov/public/Tuberculosis-Chest-X-ray-Datasets/'
              'Montgomery-County-CXR-Set/MontgomerySet/index.html')
  CITATION = """\
@article{jaeger2014two,
  title   = {Two public chest {X}-ray datasets for computer-aided screening of pulmonary diseases},
  author  = {Jaeger, Stefan and Candemir, Sema and Antani, Sameer and
             W{\\'a}ng, Y{\\`i}-Xi{\\'a}ng J. and Lu, Pu-Xuan and Thoma, George},
  journal = {Quantitative Imaging in Medicine and Surgery},
  volume  = {4},
  number  = {6},
  pages   = {475--477},
  year    = {2014},
  doi     = {10.3978/j.issn.2223-4292.2014.11.20},
}"""

  def _features(self):
    return {
        'label': tfds.features.ClassLabel(names=list(LABELS)),
        'lung_mask': base.mask_feature(self.image_size),
        'has_mask': tfds.features.Scalar(dtype=np.bool_),
    }

  def _list_examples(self, root):
    folder = find_dir(epath.Path(root),
                      ('MontgomerySet', '', 'NLM-MontgomeryCXRSet/MontgomerySet'), 'CXR_png')
    if folder is None:
      raise base.BadInputError(f'{root}: no MontgomerySet/CXR_png folder; see the layout in '
                               'MANUAL_DOWNLOAD_INSTRUCTIONS')
    splits: dict[str, list[base.Item]] = {}
    for path in png_files(folder / 'CXR_png'):
      patient = image_patient(path.stem)
      masks = [folder / 'ManualMask' / side / path.name for side in ('leftMask', 'rightMask')]
      split = base.hash_split(patient, HASH_FRACTIONS, salt=self.SOURCE)
      splits.setdefault(split, []).append(base.Item(
          key=path.name, patient_id=patient, payload=(path, masks)))
    return {s: splits.get(s, []) for s in HASH_FRACTIONS}

  def _load_example(self, item, size):
    path, masks = item.payload
    label = tb_label(path.stem)
    if label is None:
      raise base.BadInputError(f'{path}: file name does not end in _0 (normal) or _1 '
                               '(tuberculosis)')
    image = base.read_image(path)
    box = base.Letterbox(image.shape, size)
    present = [m.exists() for m in masks]
    if all(present):
      lung_mask, has_mask = union_mask(box, masks), True
    elif any(present):
      missing = masks[present.index(False)]
      raise base.BadInputError(f'{missing}: file not found (the other lung mask exists)')
    else:
      lung_mask, has_mask = np.zeros((size, size, 1), np.uint8), False
    return {'image': box.image(image), 'label': label, 'lung_mask': lung_mask,
            'has_mask': has_mask}
