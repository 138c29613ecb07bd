"""`jsrt_scr`: the JSRT nodule database with the SCR lung, heart and clavicle segmentations.

247 posterior-anterior chest radiographs (154 with one lung nodule, JPCLN*; 93 without, JPCNN*;
Shiraishi et al. 2000), digitised from film to 2048 x 2048 pixels of 0.175 mm, 12 bits. The SCR
database (van Ginneken et al. 2006) adds manual outlines of both lungs, the heart and both
clavicles for every image, as 1024 x 1024 GIF masks, and splits the images into two folds.

Raw format. Each .IMG file is 2048 x 2048 unsigned 16-bit big-endian words with no header
(exactly 8,388,608 bytes; any other size is rejected as truncated or foreign). Only the low 12
bits are used (0..4095). The values run opposite to display: high raw values are dark (little
attenuation, e.g. the air in the lungs) and low values bright (bone), so display-ready images need
inversion, as the widely used JSRT preprocessing does (display = 1 - raw / 4096).

12 to 8 bit. display = round((4095 - min(raw, 4095)) * 255 / 4095): the full 12-bit range is mapped
linearly and the same way for every image. The films were digitised on one calibrated scale, so a
fixed mapping keeps densities comparable between images; base._to_uint8's per-image 0.5 / 99.5
percentile stretch would change contrast from image to image depending on content (a large heart
or wide mediastinum shifts the percentiles).

Masks. SCR masks are half the image resolution (1024 x 1024 for a 2048 x 2048 image); each is
enlarged by pixel replication (nearest neighbour, x2) to the image size before it goes through the
same letterbox as the image, so masks and image stay aligned. A mask of any other size is bad input.

Splits. With the SCR fold layout, fold1 gives train and validation (images hashed 80 / 20) and
fold2 is the test split (the SCR's own two-fold protocol: train on one fold, test on the other).
Images in neither fold (no SCR masks) are hashed into train / validation. Without folds, images are
hashed into train / validation / test (80 / 10 / 10). Each image is its own patient.

Features (besides image / patient_id / source):
  label          ClassLabel ['non_nodule', 'nodule'] from the file name (JPCNN / JPCLN)
  lung_mask      uint8 {0, 1}: left lung | right lung
  heart_mask     uint8 {0, 1}
  clavicle_mask  uint8 {0, 1}: left clavicle | right clavicle
  has_mask       bool (False where the image has no SCR masks; the masks are then zeros)
  objects        bbox / label ['nodule'], always empty here (nodule positions are not read)
  has_boxes      bool, always False
"""

from __future__ import annotations

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base
from cxr_jax.data.builders import montgomery

LABELS = ('non_nodule', 'nodule')
RAW_SIDE = 2048
RAW_BYTES = RAW_SIDE * RAW_SIDE * 2
RAW_MAX = 4095
STRUCTURES = ('left lung', 'right lung', 'heart', 'left clavicle', 'right clavicle')
FOLD_FRACTIONS = {'train': 0.8, 'validation': 0.2}
HASH_FRACTIONS = {'train': 0.8, 'validation': 0.1, 'test': 0.1}

_INSTRUCTIONS = """\
1. Request the JSRT database (Japanese Society of Radiological Technology) at
   http://db.jsrt.or.jp/eng.php and extract the 247 raw images.
2. Download the SCR masks at https://www.isi.uu.nl/Research/Databases/SCR/ (optional: without
   them the dataset has no masks and is hash-split).

Layout under the manual dir:

    <manual_dir>/All247images/JPCLN001.IMG ... JPCNN093.IMG   (2048x2048, 12 bit, big-endian, raw)
    <manual_dir>/scr/fold1/masks/left lung/JPCLN001.gif       (SCR two-fold layout; also heart,
    <manual_dir>/scr/fold2/masks/right lung/JPCLN002.gif       right lung, left clavicle,
                                                               right clavicle; 1024x1024 GIF)
or, without folds, <manual_dir>/scr/masks/<structure>/JPCLN001.gif. The SCR archive's own top
folder 'scratch' is accepted in place of 'scr' (scratch/fold1/masks/...), as is a manual dir whose
*.IMG files lie directly in it.

Terms: JSRT: for research and education, as stated in the JSRT's agreement. SCR: free for research
and education; redistribution and commercial use are prohibited; cite van Ginneken et al. 2006
and Shiraishi et al. 2000.
"""


def read_raw(path) -> np.ndarray:
  """A JSRT .IMG file -> display-ready uint8 [2048, 2048] (see the module docstring)."""
  path = epath.Path(path)
  if not path.exists():
    raise base.BadInputError(f'{path}: file not found')
  data = path.read_bytes()
  if len(data) != RAW_BYTES:
    raise base.BadInputError(f'{path}: {len(data)} bytes, expected {RAW_BYTES} (2048x2048 16-bit '
                             'raw); truncated or not a JSRT image')
  raw = np.frombuffer(data, dtype='>u2').reshape(RAW_SIDE, RAW_SIDE)
  values = np.minimum(raw, RAW_MAX).astype(np.float32)
  return np.rint((RAW_MAX - values) * (255.0 / RAW_MAX)).astype(np.uint8)


def _scr_dirs(root: epath.Path) -> dict[str, epath.Path]:
  """{'fold1': masks dir, 'fold2': ...} or {'': masks dir} or {} (no SCR masks)."""
  for candidate in ('scr', 'scratch', 'scr/scratch', 'SCR', ''):
    folder = root / candidate if candidate else root
    folds = {f: folder / f / 'masks' for f in ('fold1', 'fold2') if (folder / f / 'masks').is_dir()}
    if folds:
      return folds
    if (folder / 'masks').is_dir():
      return {'': folder / 'masks'}
  return {}


def _read_half_mask(path: epath.Path, image_hw: tuple[int, int]) -> np.ndarray:
  mask = base.read_image(path)
  if tuple(mask.shape) == (image_hw[0] // 2, image_hw[1] // 2):
    mask = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
  return mask  # any other size is rejected by union_mask, naming the file


class JsrtScr(base.CxrBuilder):
  """JSRT chest radiographs (nodule / non-nodule) with SCR lung, heart and clavicle masks."""

  SOURCE = 'jsrt_scr'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://www.isi.uu.nl/Research/Databases/SCR/'
  CITATION = """\
@article{shiraishi2000development,
  title   = {Development of a digital image database for chest radiographs with and without a lung
             nodule: receiver operating characteristic analysis of radiologists' detection of
             pulmonary nodules},
  author  = {Shiraishi, Junji and Katsuragawa, Shigehiko and Ikezoe, Junpei and Matsumoto,
             Tsuneo and Kobayashi, Takeshi and Komatsu, Ken-ichi and Matsui, Mitate and Fujita,
             Hiroshi and Kodera, Yoshie and Doi, Kunio},
  journal = {American Journal of Roentgenology},
  volume  = {174},
  number  = {1},
  pages   = {71--74},
  year    = {2000},
  doi     = {10.2214/ajr.174.1.1740071},
}
@article{vanginneken2006segmentation,
  title   = {Segmentation of anatomical structures in chest radiographs using supervised methods:
             a comparative study on a public database},
  author  = {van Ginneken, Bram and Stegmann, Mikkel B. and Loog, Marco},
  journal = {Medical Image Analysis},
  volume  = {10},
  number  = {1},
  pages   = {19--40},
  year    = {2006},
  doi     = {10.1016/j.media.2005.02.002},
}"""

  def _features(self):
    return {
        'label': tfds.features.ClassLabel(names=list(LABELS)),
        'lung_mask': base.mask_feature(self.image_size),
        'heart_mask': base.mask_feature(self.image_size),
        'clavicle_mask': base.mask_feature(self.image_size),
        'has_mask': tfds.features.Scalar(dtype=np.bool_),
        'objects': base.objects_feature(['nodule']),
        'has_boxes': tfds.features.Scalar(dtype=np.bool_),
    }

  def _list_examples(self, root):
    root = epath.Path(root)
    image_dir = None
    for candidate in (root / 'All247images', root / 'JSRT' / 'All247images', root):
      if candidate.is_dir() and any(p.suffix.upper() == '.IMG' for p in candidate.iterdir()):
        image_dir = candidate
        break
    if image_dir is None:
      raise base.BadInputError(f'{root}: no All247images/*.IMG files; see the layout in '
                               'MANUAL_DOWNLOAD_INSTRUCTIONS')
    mask_dirs = _scr_dirs(root)
    folds = bool(mask_dirs) and '' not in mask_dirs
    splits: dict[str, list[base.Item]] = {}
    paths = sorted(p for p in image_dir.iterdir()
                   if p.suffix.upper() == '.IMG' and not p.name.startswith('.'))
    for path in paths:
      stem = path.stem
      fold, masks = None, None
      for name, folder in mask_dirs.items():
        candidate = {s: folder / s / f'{stem}.gif' for s in STRUCTURES}
        if candidate['left lung'].exists():
          fold, masks = name, candidate
          break
      if not folds:
        split = base.hash_split(stem, HASH_FRACTIONS, salt=self.SOURCE)
      elif fold == 'fold2':
        split = 'test'
      else:
        split = base.hash_split(stem, FOLD_FRACTIONS, salt=self.SOURCE)
      splits.setdefault(split, []).append(base.Item(
          key=path.name, patient_id=stem, payload=(path, masks)))
    return {s: splits.get(s, []) for s in ('train', 'validation', 'test')}

  def _load_example(self, item, size):
    path, masks = item.payload
    prefix = path.stem.upper()[:5]
    if prefix not in ('JPCLN', 'JPCNN'):
      raise base.BadInputError(f'{path}: file name does not start with JPCLN (nodule) or JPCNN '
                               '(non-nodule)')
    image = read_raw(path)
    box = base.Letterbox(image.shape, size)
    example = {'image': box.image(image), 'label': 'nodule' if prefix == 'JPCLN' else 'non_nodule',
               'objects': base.empty_objects(), 'has_boxes': False}
    if masks is None:
      empty = np.zeros((size, size, 1), np.uint8)
      example.update(lung_mask=empty, heart_mask=empty, clavicle_mask=empty, has_mask=False)
      return example
    planes = {s: _read_half_mask(p, image.shape) for s, p in masks.items()}

    def union(*structures):
      return montgomery.union_mask(box, [masks[s] for s in structures],
                                   [planes[s] for s in structures])

    example.update(lung_mask=union('left lung', 'right lung'), heart_mask=union('heart'),
                   clavicle_mask=union('left clavicle', 'right clavicle'), has_mask=True)
    return example
