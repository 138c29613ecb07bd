"""What every real-dataset TFDS builder shares: storage size, letterboxing, features, bad input.

Storage. Each builder has BuilderConfigs '256', '512' and '1024' (the longer side in pixels; '256'
is the default). An image is scaled so its longer side is that size (area interpolation when
shrinking, bilinear when enlarging) and padded with black, centred, to a square. Masks go through the
same transform (area-averaged, then thresholded at 0.5) and boxes are mapped into the padded square,
so every feature of an example stays aligned. Images are stored pre-decoded as raw uint8
[S, S, 1] tensors (masks zlib-compressed), read back as numpy without TensorFlow and without
image decoding.

Features. Names are shared across datasets so mixtures and methods need no per-dataset code:
  image            uint8 [S, S, 1], display-ready (bright = dense), 8 bit
  label            ClassLabel (single-label datasets)
  labels           uint8 multi-hot [C] (multi-label datasets)
  lung_mask        uint8 {0, 1} [S, S, 1] (other structures: heart_mask, clavicle_mask, ...)
  objects/bbox     relative (ymin, xmin, ymax, xmax) in the padded square; objects/label ClassLabel
  has_mask, has_boxes, has_label   bool, where only part of a dataset carries the target
  patient_id       the source's patient identifier or a pseudonym of it ('' when there is none)
  source           the builder's name

Splits are patient-level wherever the source identifies patients: official lists are kept when the
source has them, otherwise patients are hashed into splits (`hash_split`), so one patient never
appears in two splits; `_split_generators` checks this for every build.

Bad input (an unreadable, corrupt or truncated image, a mask whose size differs from its image, an
unreadable DICOM, a CSV row naming a missing file) raises `BadInputError` naming the file. With
`skip_bad=True` (`tfds.builder(name, skip_bad=True)`, `python -m cxr_jax.data.prepare --skip_bad`)
the example is skipped instead, logged, and counted per split in `info.metadata['skipped']`.

Preparation needs neither TensorFlow nor a network: images are decoded with Pillow, resized with
OpenCV and handed to TFDS as arrays.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Any, Iterable, Iterator

from absl import logging
import cv2
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

STORAGE_SIZES = (256, 512, 1024)
DEFAULT_SIZE = 256


class BadInputError(ValueError):
  """A source file cannot be used; the message names it (one line)."""


@dataclasses.dataclass(eq=False)
class StorageConfig(tfds.core.BuilderConfig):
  """Storage resolution: the longer side of the stored (square, letterboxed) image."""

  image_size_px: int = DEFAULT_SIZE


def storage_configs(sizes: Iterable[int] = STORAGE_SIZES) -> list[StorageConfig]:
  return [StorageConfig(name=str(s), image_size_px=s,
                        description=f'Longer side scaled to {s} px, padded to {s}x{s}.')
          for s in sizes]


def image_feature(size: int) -> tfds.features.Tensor:
  """Pre-decoded uint8 [size, size, 1], stored raw: radiographs barely compress (~13 % with
  zlib) and inflating them cost as much read time as the augmentation."""
  return tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8)


def mask_feature(size: int) -> tfds.features.Tensor:
  """Binary uint8 [size, size, 1] mask, zlib-compressed on disk (masks shrink ~80x)."""
  return tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                              encoding=tfds.features.Encoding.ZLIB)


def objects_feature(class_names: Iterable[str]) -> tfds.features.Sequence:
  return tfds.features.Sequence({
      'bbox': tfds.features.BBoxFeature(),
      'label': tfds.features.ClassLabel(names=list(class_names)),
  })


def multi_hot_feature(num_classes: int) -> tfds.features.Tensor:
  return tfds.features.Tensor(shape=(num_classes,), dtype=np.uint8)


def hash_split(key: str, fractions: dict[str, float], salt: str) -> str:
  """Deterministic split of `key` (a patient id): same key -> same split, on any machine."""
  digest = hashlib.sha256(f'{salt}:{key}'.encode()).digest()
  u = int.from_bytes(digest[:8], 'big') / 2.0**64
  total = 0.0
  for split, fraction in fractions.items():
    total += fraction
    if u < total:
      return split
  return list(fractions)[-1]


# ---------------------------------------------------------------------------------------------
# Reading and fitting images


def _to_uint8(values: np.ndarray, path) -> np.ndarray:
  """8-bit data unchanged; deeper data linearly from its 0.5th..99.5th percentile to 0..255."""
  if values.dtype == np.uint8:
    return values
  sample = values[::4, ::4].astype(np.float32)
  low, high = np.percentile(sample, [0.5, 99.5])
  if not high > low:
    low, high = float(sample.min()), float(sample.max())
  if not high > low:
    raise BadInputError(f'{path}: image has a single intensity value')
  scaled = (values.astype(np.float32) - low) * (255.0 / (high - low))
  return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_image(path) -> np.ndarray:
  """Decodes any Pillow-readable image file to grayscale uint8 [H, W].

  Colour (RGB/RGBA/palette) is converted to luminance; 16-bit data to 8 bit by `_to_uint8`.
  Truncated or corrupt files raise BadInputError rather than yielding a partial image.
  """
  path = epath.Path(path)
  if not path.exists():
    raise BadInputError(f'{path}: file not found')
  try:
    with path.open('rb') as f, Image.open(f) as im:
      im.load()  # decodes fully; raises on truncation
      if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        array = np.asarray(im).astype(np.uint16 if im.mode != 'I' else np.int32)
      elif im.mode in ('L', '1'):
        array = np.asarray(im.convert('L'))
      else:
        array = np.asarray(im.convert('L'))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadInputError(f'{path}: cannot decode image ({type(e).__name__}: {e})') from None
  if array.ndim != 2 or min(array.shape) == 0:
    raise BadInputError(f'{path}: not a 2-D image (shape {array.shape})')
  return _to_uint8(array, path)


def read_dicom_pixels(path) -> np.ndarray:
  """Display-ready uint8 [H, W] of a DICOM file (`cxr_jax.data.dicom` rules); an unreadable
  file raises BadInputError with the reader's one-line message."""
  from cxr_jax.data import dicom  # pylint: disable=g-import-not-at-top
  try:
    return np.asarray(dicom.read_dicom(path).pixels)
  except dicom.DicomReadError as e:
    raise BadInputError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class Letterbox:
  """Maps a source image of shape `source_hw` into the stored `size` x `size` square."""

  source_hw: tuple[int, int]
  size: int

  @property
  def scale(self) -> float:
    return self.size / max(self.source_hw)

  @property
  def scaled_hw(self) -> tuple[int, int]:
    h, w = self.source_hw
    return (max(1, min(self.size, round(h * self.scale))),
            max(1, min(self.size, round(w * self.scale))))

  @property
  def offset(self) -> tuple[int, int]:
    sh, sw = self.scaled_hw
    return (self.size - sh) // 2, (self.size - sw) // 2

  def _place(self, plane: np.ndarray, interpolation: int) -> np.ndarray:
    sh, sw = self.scaled_hw
    if plane.shape != (sh, sw):
      plane = cv2.resize(plane, (sw, sh), interpolation=interpolation)
    out = np.zeros((self.size, self.size), plane.dtype)
    oy, ox = self.offset
    out[oy:oy + sh, ox:ox + sw] = plane
    return out

  def image(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W] -> uint8 [S, S, 1]."""
    shrink = self.scale < 1.0
    return self._place(image, cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)[:, :, None]

  def mask(self, mask: np.ndarray, path='mask') -> np.ndarray:
    """Any-valued [H, W] mask (non-zero = inside) -> uint8 {0, 1} [S, S, 1]; shape must match."""
    if mask.ndim == 3:
      mask = mask[..., 0]
    if tuple(mask.shape) != tuple(self.source_hw):
      raise BadInputError(f'{path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is '
                          f'{self.source_hw[0]}x{self.source_hw[1]}')
    soft = self._place((mask > 0).astype(np.float32), cv2.INTER_AREA)
    return (soft >= 0.5).astype(np.uint8)[:, :, None]

  def boxes(self, boxes_yxyx: np.ndarray) -> np.ndarray:
    """Absolute source-pixel (ymin, xmin, ymax, xmax) [N, 4] -> relative to the stored square."""
    b = np.asarray(boxes_yxyx, np.float64).reshape(-1, 4)
    oy, ox = self.offset
    b = b * self.scale + np.array([oy, ox, oy, ox])
    b = np.clip(b / self.size, 0.0, 1.0).astype(np.float32)
    b[:, 2] = np.maximum(b[:, 2], b[:, 0])
    b[:, 3] = np.maximum(b[:, 3], b[:, 1])
    return b


def empty_objects() -> dict[str, np.ndarray]:
  return {'bbox': np.zeros((0, 4), np.float32), 'label': np.zeros((0,), np.int64)}


def xywh_to_yxyx(boxes_xywh) -> np.ndarray:
  b = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
  return np.stack([b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], axis=1)


# ---------------------------------------------------------------------------------------------
# The builder base class


@dataclasses.dataclass(frozen=True)
class Item:
  """One example to generate: its unique key, the patient it belongs to, and what to load."""

  key: str
  patient_id: str
  payload: Any


class CxrBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the manual-download radiograph builders.

  Subclasses set SOURCE, MANUAL_DOWNLOAD_INSTRUCTIONS, DESCRIPTION, CITATION, HOMEPAGE and
  implement `_features()` (everything but image/patient_id/source), `_list_examples(root)`
  (split -> list of Item; cheap: file listing and CSV parsing) and `_load_example(item, size)`
  (the example's features; raises BadInputError on bad input).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = storage_configs()
  DEFAULT_BUILDER_CONFIG_NAME = str(DEFAULT_SIZE)
  SOURCE = ''
  DESCRIPTION = ''
  CITATION = ''
  HOMEPAGE = ''
  # False for sources without patient identifiers (the split check is skipped).
  HAS_PATIENT_IDS = True
  # Multi-label datasets: the class names of the `labels` multi-hot, saved in the dataset's
  # metadata (info.metadata['class_names']) so readers need no code.
  MULTI_LABEL_NAMES: tuple[str, ...] = ()

  def __init__(self, *, skip_bad: bool = False, **kwargs):
    self.skip_bad = bool(skip_bad)
    self._skipped: dict[str, list[str]] = collections.defaultdict(list)
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 derives this through `importlib_resources`, only installed on Python < 3.9.
    import sys  # pylint: disable=g-import-not-at-top
    return epath.Path(sys.modules[cls.__module__].__file__)

  @property
  def image_size(self) -> int:
    return self.builder_config.image_size_px

  def _features(self) -> dict[str, Any]:
    raise NotImplementedError

  def _list_examples(self, root: epath.Path) -> dict[str, list[Item]]:
    raise NotImplementedError

  def _load_example(self, item: Item, size: int) -> dict[str, Any]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        'image': image_feature(self.image_size),
        **self._features(),
        'patient_id': tfds.features.Text(),
        'source': tfds.features.Text(),
    }
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(features),
        homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None,
        metadata=tfds.core.MetadataDict(
            {'class_names': list(self.MULTI_LABEL_NAMES)} if self.MULTI_LABEL_NAMES else {}),
    )

  def _split_generators(self, dl_manager):
    root = epath.Path(dl_manager.manual_dir)
    splits = self._list_examples(root)
    for split, items in splits.items():
      if not items:
        raise BadInputError(f'{root}: no examples found for split {split!r} of '
                            f'{self.SOURCE}; see the layout in MANUAL_DOWNLOAD_INSTRUCTIONS')
    if self.HAS_PATIENT_IDS:
      check_patient_disjoint(splits)
    return {split: self._generate_examples(split, items) for split, items in splits.items()}

  def _generate_examples(self, split: str, items: list[Item]) -> Iterator[tuple[str, dict]]:
    for item in items:
      try:
        example = self._load_example(item, self.image_size)
      except BadInputError as e:
        if not self.skip_bad:
          raise
        self._skip(split, str(e))
        continue
      example.setdefault('patient_id', item.patient_id)
      example.setdefault('source', self.SOURCE)
      yield item.key, example
    if self._skipped.get(split):
      logging.warning('%s: skipped %d bad examples in split %s (skip_bad=True)',
                      self.SOURCE, len(self._skipped[split]), split)

  def _skip(self, split: str, message: str) -> None:
    logging.warning('%s: skipping bad input: %s', self.SOURCE, message)
    self._skipped[split].append(message)
    self.info.metadata['skipped'] = {s: len(m) for s, m in self._skipped.items()}
    self.info.metadata['skipped_examples'] = {s: list(m) for s, m in self._skipped.items()}


def check_patient_disjoint(splits: dict[str, list[Item]]) -> None:
  """Raises if a (non-empty) patient id occurs in two splits."""
  owner: dict[str, str] = {}
  for split, items in splits.items():
    for item in items:
      if not item.patient_id:
        continue
      first = owner.setdefault(item.patient_id, split)
      if first != split:
        raise BadInputError(f'patient {item.patient_id!r} is in splits {first!r} and {split!r}')


def read_csv(path) -> list[dict[str, str]]:
  """Rows of a CSV file as dicts (header names stripped of surrounding spaces)."""
  import csv  # pylint: disable=g-import-not-at-top
  path = epath.Path(path)
  if not path.exists():
    raise BadInputError(f'{path}: file not found')
  with path.open() as f:
    reader = csv.reader(f)
    try:
      header = [h.strip() for h in next(reader)]
    except StopIteration:
      raise BadInputError(f'{path}: empty CSV file') from None
    return [dict(zip(header, (v.strip() for v in row))) for row in reader if row]
