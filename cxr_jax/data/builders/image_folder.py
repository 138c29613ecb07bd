"""`image_folder`: any folder of class sub-folders (private data, no code needed).

Layout (under the manual dir, `--manual_dir=ROOT`)::

    ROOT/<split>/<class>/<name>.<png|jpg|jpeg|bmp|tif|tiff>   splits: train, validation/val, test
    ROOT/masks/<split>/<class>/<name>.png                     optional lung masks, same stem

or without split folders (``ROOT/<class>/<name>.png``), in which case images are hashed into
train / validation / test (80 / 10 / 10) by patient: the patient id is the file name up to the
first '_' when `patient_from_prefix=True`, else each image is its own patient.

The dataset is named by its builder config: ``image_folder/NAME`` stores at 256 px and
``image_folder/NAME-512`` at 512 px (any of 256 / 512 / 1024), so several private datasets and sizes
live side by side in one data_dir. Class names are the sorted sub-folder names.
"""

from __future__ import annotations

import re

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base

_DOC = __doc__  # the class body's __doc__ would be the class docstring
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
SPLIT_FOLDERS = {'train': 'train', 'validation': 'validation', 'val': 'validation',
                 'test': 'test'}
HASH_FRACTIONS = {'train': 0.8, 'validation': 0.1, 'test': 0.1}


def parse_config_name(name: str) -> tuple[str, int]:
  """'NAME' -> (NAME, 256); 'NAME-512' -> (NAME, 512)."""
  m = re.fullmatch(r'(.+?)(?:-(\d+))?', name)
  dataset, size = m.group(1), int(m.group(2) or base.DEFAULT_SIZE)
  if size not in base.STORAGE_SIZES:
    raise ValueError(f'image_folder/{name}: storage size {size} is not one of '
                     f'{", ".join(map(str, base.STORAGE_SIZES))}')
  return dataset, size


def _images(folder: epath.Path) -> list[epath.Path]:
  return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: epath.Path) -> list[epath.Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))


def discover(root: epath.Path) -> tuple[list[str], dict[str, epath.Path]]:
  """Class names and split folders ({'': root} when the root holds class folders directly)."""
  root = epath.Path(root)
  if not root.is_dir():
    raise base.BadInputError(f'{root}: image_folder root is not a directory')
  split_dirs = {SPLIT_FOLDERS[p.name]: p for p in _class_dirs(root) if p.name in SPLIT_FOLDERS}
  if not split_dirs:
    split_dirs = {'': root}
  names = sorted({c.name for d in split_dirs.values() for c in _class_dirs(d)} - {'masks'})
  if not names:
    raise base.BadInputError(f'{root}: no class sub-folders found')
  return names, split_dirs


class ImageFolder(base.CxrBuilder):
  """Images in class sub-folders, optional masks; see the module docstring."""

  SOURCE = 'image_folder'
  BUILDER_CONFIGS = []  # made per dataset from the config name
  DEFAULT_BUILDER_CONFIG_NAME = None
  HAS_PATIENT_IDS = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = _DOC
  DESCRIPTION = 'A folder of class sub-folders of radiographs, with optional masks.'

  def __init__(self, *, config: str | base.StorageConfig, root: str | None = None,
               patient_from_prefix: bool = False, **kwargs):
    if isinstance(config, str):
      dataset, size = parse_config_name(config)
      config = base.StorageConfig(name=f'{dataset}-{size}', image_size_px=size,
                                  description=f'{dataset} at {size} px')
    self.root = epath.Path(root) if root else None
    self.patient_from_prefix = patient_from_prefix
    self.class_names = discover(self.root)[0] if self.root else None
    super().__init__(config=config, **kwargs)

  def _features(self):
    if self.class_names is None:
      raise ValueError('image_folder needs root= (the manual dir) before it is prepared')
    return {
        'label': tfds.features.ClassLabel(names=self.class_names),
        'lung_mask': base.mask_feature(self.image_size),
        'has_mask': tfds.features.Scalar(dtype=np.bool_),
    }

  def _patient(self, path: epath.Path) -> str:
    return path.stem.split('_')[0] if self.patient_from_prefix else path.stem

  def _list_examples(self, root):
    root = self.root or root
    _, split_dirs = discover(root)
    splits: dict[str, list[base.Item]] = {}
    for split, folder in split_dirs.items():
      for class_dir in _class_dirs(folder):
        if class_dir.name == 'masks':
          continue
        for path in _images(class_dir):
          relative = path.relative_to(root)
          mask = root / 'masks' / relative.with_suffix('.png')
          patient = f'{class_dir.name}/{self._patient(path)}'
          target = split or base.hash_split(patient, HASH_FRACTIONS, salt=self.SOURCE)
          splits.setdefault(target, []).append(base.Item(
              key=str(relative), patient_id=patient,
              payload=(path, class_dir.name, mask if mask.exists() else None)))
    return splits

  def _load_example(self, item, size):
    path, class_name, mask_path = item.payload
    image = base.read_image(path)
    box = base.Letterbox(image.shape, size)
    if mask_path is not None:
      lung_mask, has_mask = box.mask(base.read_image(mask_path), mask_path), True
    else:
      lung_mask, has_mask = np.zeros((size, size, 1), np.uint8), False
    return {'image': box.image(image), 'label': class_name, 'lung_mask': lung_mask,
            'has_mask': has_mask}
