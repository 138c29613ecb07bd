"""`siim_acr_pneumothorax`: SIIM-ACR Pneumothorax Segmentation (Kaggle 2019), training set.

About 10,700 frontal radiographs (DICOM, from NIH ChestX-ray14) with pneumothorax masks given as
run-length encodings in `train-rle.csv`. `label` says whether the image has a pneumothorax and
`pneumothorax_mask` is its mask (all zeros for negatives); every labelled image carries a mask
(`has_mask` True).

RLE (the competition's `mask_functions.py`, `rle2mask` / `mask2rle`): '-1' means no pneumothorax;
otherwise space-separated pairs (start, length) where each start is counted from the end of the
previous run (the first from pixel 0), over the image flattened column by column (Fortran order:
flat index k is row k % height, column k // height, which is why the reference decoder returns a
`reshape(width, height)` array its users transpose). Several rows for one ImageId are separate
regions of one image: their union is the mask.

Patients: the DICOMs' PatientID is replaced by a salted pseudonym (`dicom.patient_pseudonym`),
stored as `patient_id` and used as the split key (hashed, 80 / 10 / 10), so no patient is in two
splits and no patient identifier is stored. The salt is $CXR_JAX_PSEUDONYM_SALT when set (private
copies), else a fixed public default, so the public data always gets the same split.
"""

from __future__ import annotations

import os

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data import dicom
from cxr_jax.data.builders import base
from cxr_jax.data.builders import nih_chestxray14

CLASSES = ('no_pneumothorax', 'pneumothorax')
SOURCE = 'siim_acr_pneumothorax'
FRACTIONS = {'train': 0.8, 'validation': 0.1, 'test': 0.1}
IMAGE_DIR = 'dicom-images-train'
RLE_CSV = 'train-rle.csv'
NO_MASK = '-1'
SALT_ENV = 'CXR_JAX_PSEUDONYM_SALT'

_DOC = f"""SIIM-ACR Pneumothorax Segmentation (2019): the competition data
(https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation/data; first released through the
Google Cloud Healthcare API, later as the Kaggle download `siim-train-test`) extracted so that the
manual dir holds::

    {RLE_CSV}                  columns 'ImageId', ' EncodedPixels' (header as released, with
                                   a leading space); '-1' = no pneumothorax, several rows per
                                   ImageId = several regions
    {IMAGE_DIR}/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    (dicom-images-test/ may be present; it is not used)

ImageId is the SOPInstanceUID (the file name); DICOMs are found anywhere under {IMAGE_DIR}/.
DICOMs without a row in {RLE_CSV} are left out (logged).

Terms: the data are governed by the Kaggle competition rules (research / non-commercial use,
no redistribution); the images come from the NIH ChestX-ray14 release (cite Wang et al. 2017 and
acknowledge the NIH Clinical Center) and the annotations are by SIIM, ACR and the Society of
Thoracic Radiology.
"""

_CITATION = """@misc{siimacr2019pneumothorax,
  title        = {{SIIM-ACR} Pneumothorax Segmentation},
  author       = {Zawacki, Anna and Wu, Carol and Shih, George and Elliott, Julia and
                  Fomitchev, Mikhail and Hussain, Mohannad and Lakhani, Paras and Culliton, Phil
                  and Bao, Shunxing},
  howpublished = {Kaggle competition, Society for Imaging Informatics in Medicine},
  url          = {https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation},
  year         = {2019},
}

@article{filice2020pneumothorax,
  title   = {Crowdsourcing Pneumothorax Annotations Using Machine Learning Annotations on the
             {NIH} Chest {X-ray} Dataset},
  author  = {Filice, Ross W. and Stein, Anouk and Wu, Carol C. and Arteaga, Veronica A. and
             Borstelmann, Stephen and Gaddikeri, Ramya and Galperin-Aizenberg, Maya and
             Gill, Ritu R. and Godoy, Myrna C. and Hobbs, Stephen B. and others},
  journal = {Journal of Digital Imaging},
  volume  = {33},
  number  = {2},
  pages   = {490--496},
  year    = {2020},
  doi     = {10.1007/s10278-019-00299-9},
}"""


# ---------------------------------------------------------------------------------------------
# The competition's relative, column-major RLE


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
  """Competition RLE -> uint8 {0, 1} [height, width] ('-1' or '' -> all zeros).

  Raises ValueError on a malformed string or runs past the end of the image.
  """
  tokens = rle.split()
  mask = np.zeros(height * width, np.uint8)
  if not tokens or tokens == [NO_MASK]:
    return mask.reshape((height, width), order='F')
  try:
    values = np.array([int(t) for t in tokens], np.int64)
  except ValueError:
    raise ValueError('RLE holds a non-integer value') from None
  if values.size % 2:
    raise ValueError(f'RLE has an odd number of values ({values.size})')
  offsets, lengths = values[0::2], values[1::2]
  if (offsets < 0).any() or (lengths < 0).any():
    raise ValueError('RLE has a negative offset or length')
  ends = np.cumsum(offsets + lengths)
  starts = ends - lengths
  if ends[-1] > height * width:
    raise ValueError(f'RLE runs to pixel {ends[-1]}, past the {height}x{width} image')
  change = np.zeros(height * width + 1, np.int64)
  np.add.at(change, starts, 1)
  np.add.at(change, ends, -1)
  mask[np.cumsum(change[:-1]) > 0] = 1
  return mask.reshape((height, width), order='F')


def rle_encode(mask: np.ndarray) -> str:
  """[height, width] mask (non-zero = inside) -> competition RLE ('-1' when empty)."""
  flat = (np.asarray(mask) > 0).ravel(order='F').astype(np.int8)
  edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
  starts, ends = edges[0::2], edges[1::2]
  if not starts.size:
    return NO_MASK
  offsets = starts - np.concatenate([[0], ends[:-1]])
  return ' '.join(f'{o} {n}' for o, n in zip(offsets, ends - starts))


# ---------------------------------------------------------------------------------------------
# DICOM helpers (shared in spirit with rsna_pneumonia / siim_covid19)


def pseudonym_salt(source: str) -> str:
  return os.environ.get(SALT_ENV) or f'cxr_jax/{source}/public-default-salt'


def index_dicoms(folder: epath.Path) -> dict[str, epath.Path]:
  """File stem (the SOPInstanceUID in these releases) -> path, for every .dcm under `folder`."""
  if not folder.is_dir():
    raise base.BadInputError(f'{folder}: folder not found (see MANUAL_DOWNLOAD_INSTRUCTIONS)')
  index: dict[str, epath.Path] = {}
  for p in nih_chestxray14.find_files(folder, '.dcm'):
    index.setdefault(p.stem, p)
  return index


def pseudonyms(paths: dict[str, epath.Path], salt: str) -> dict[str, str]:
  """key -> patient pseudonym ('' where the header cannot be read: that example fails later)."""
  out = {}
  for key, path in paths.items():
    try:
      out[key] = dicom.patient_pseudonym(path, salt)
    except dicom.DicomReadError:
      out[key] = ''
  return out


# (In the class body `__doc__` would be the class docstring.)
_DESCRIPTION = __doc__


class SiimAcrPneumothorax(base.CxrBuilder):
  """SIIM-ACR Pneumothorax Segmentation; see the module docstring."""

  SOURCE = SOURCE
  DESCRIPTION = _DESCRIPTION
  HOMEPAGE = 'https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation'
  CITATION = _CITATION
  MANUAL_DOWNLOAD_INSTRUCTIONS = _DOC

  def _features(self):
    return {
        'label': tfds.features.ClassLabel(names=list(CLASSES)),
        'pneumothorax_mask': base.mask_feature(self.image_size),
        'has_mask': tfds.features.Scalar(dtype=np.bool_),
    }

  def _list_examples(self, root):
    root = epath.Path(root)
    rles: dict[str, list[str]] = {}
    for row in base.read_csv(root / RLE_CSV):
      if row.get('ImageId'):
        rles.setdefault(row['ImageId'], []).append(row.get('EncodedPixels', ''))
    files = index_dicoms(root / IMAGE_DIR)
    unlabelled = len(set(files) - set(rles))
    if unlabelled:
      logging.warning('%s: %d DICOMs under %s have no row in %s; left out', self.SOURCE,
                      unlabelled, IMAGE_DIR, RLE_CSV)
    salt = pseudonym_salt(self.SOURCE)
    patients = pseudonyms({k: files[k] for k in rles if k in files}, salt)
    self.info.metadata['patient_id'] = (
        'HMAC-SHA256 pseudonym of the DICOM PatientID, salt from $' + SALT_ENV
        if os.environ.get(SALT_ENV) else
        'HMAC-SHA256 pseudonym of the DICOM PatientID, public default salt')
    splits: dict[str, list[base.Item]] = {s: [] for s in FRACTIONS}
    for image_id in sorted(rles):
      patient = patients.get(image_id, '')
      split = base.hash_split(patient or image_id, FRACTIONS, salt=self.SOURCE)
      payload = (image_id, files.get(image_id), rles[image_id], root / IMAGE_DIR)
      splits[split].append(base.Item(key=image_id, patient_id=patient, payload=payload))
    return splits

  def _load_example(self, item, size):
    image_id, path, rles, folder = item.payload
    if path is None:
      raise base.BadInputError(f'{image_id}.dcm: file not found under {folder} '
                               f'(named in {RLE_CSV})')
    pixels = base.read_dicom_pixels(path)
    if not item.patient_id:
      raise base.BadInputError(f'{path}: no PatientID to split by')
    h, w = pixels.shape
    mask = np.zeros((h, w), np.uint8)
    for rle in rles:
      try:
        mask |= rle_decode(rle, h, w)
      except ValueError as e:
        raise base.BadInputError(f'{RLE_CSV} row {image_id}: {e}') from None
    positive = bool(mask.any())
    letterbox = base.Letterbox(pixels.shape, size)
    return {
        'image': letterbox.image(pixels),
        'label': CLASSES[int(positive)],
        'pneumothorax_mask': letterbox.mask(mask, f'{RLE_CSV} row {image_id}'),
        'has_mask': True,
    }
