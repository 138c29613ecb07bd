"""Dataset registry: names in configs -> TFDS builders, prepared on first use, read without TF.

`config.data.name` is 'builder' or 'builder/config' (TFDS builder-config syntax), e.g.
'synthetic_cxr', 'synthetic_cxr/tiny' or 'montgomery/512'. Only builders listed here are accepted,
so a typo fails before anything is written. Real datasets are prepared from a manual download:
`manual_dir` is the folder holding the files as the builder's MANUAL_DOWNLOAD_INSTRUCTIONS describe
(the command line is `python -m cxr_jax.data.prepare`, see the README).
"""

from __future__ import annotations

import importlib

from absl import logging

# name -> module defining (and so registering) the TFDS builder.
BUILDER_MODULES = {
    'synthetic_cxr': 'cxr_jax.data.builders.synthetic_cxr',
    'image_folder': 'cxr_jax.data.builders.image_folder',
    'kermany_pneumonia': 'cxr_jax.data.builders.kermany_pneumonia',
    'montgomery': 'cxr_jax.data.builders.montgomery',
    'shenzhen': 'cxr_jax.data.builders.shenzhen',
    'jsrt_scr': 'cxr_jax.data.builders.jsrt_scr',
    'nih_chestxray14': 'cxr_jax.data.builders.nih_chestxray14',
    'rsna_pneumonia': 'cxr_jax.data.builders.rsna_pneumonia',
    'siim_acr_pneumothorax': 'cxr_jax.data.builders.siim_acr_pneumothorax',
    'siim_covid19': 'cxr_jax.data.builders.siim_covid19',
    'tbx11k': 'cxr_jax.data.builders.tbx11k',
    'mura': 'cxr_jax.data.builders.mura',
    'rsna_bone_age': 'cxr_jax.data.builders.rsna_bone_age',
}


# Builders that generate their data (no manual download, no bad input to skip).
GENERATED = frozenset({'synthetic_cxr'})


def known_datasets() -> list[str]:
  return sorted(BUILDER_MODULES)


def check_name(name: str) -> None:
  """Raises a one-line ValueError for an unknown dataset name (no side effects)."""
  base = name.split('/')[0]
  if base not in BUILDER_MODULES:
    raise ValueError(f'config.data.name={name!r} is not a known dataset; known: '
                     f'{", ".join(known_datasets())}')


def _default_data_dir() -> str:
  import os  # pylint: disable=g-import-not-at-top
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def get_builder(name: str, data_dir: str | None = None, *, manual_dir: str | None = None,
                skip_bad: bool = False):
  check_name(name)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  base = name.split('/')[0]
  module = importlib.import_module(BUILDER_MODULES[base])
  if base == 'image_folder':
    return _image_folder_builder(module, name, data_dir, manual_dir, skip_bad)
  kwargs = {} if base in GENERATED else {'skip_bad': skip_bad}
  return tfds.builder(name, data_dir=data_dir or None, **kwargs)


def _image_folder_builder(module, name, data_dir, manual_dir, skip_bad):
  """image_folder's class names come from the folder: read a prepared copy without it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  if '/' not in name:
    raise ValueError('config.data.name=image_folder needs a dataset name: image_folder/NAME '
                     '(or image_folder/NAME-512)')
  dataset, size = module.parse_config_name(name.split('/', 1)[1])
  prepared = (epath.Path(data_dir or _default_data_dir()) / 'image_folder' / f'{dataset}-{size}'
              / str(module.ImageFolder.VERSION))
  if (prepared / 'dataset_info.json').exists():
    return tfds.builder_from_directory(prepared)
  if not manual_dir:
    raise ValueError(f'{name} is not prepared in {prepared.parent.parent} and '
                     'config.data.manual_dir (the image folder) is not set')
  return module.ImageFolder(config=f'{dataset}-{size}', root=manual_dir,
                            data_dir=data_dir or None, skip_bad=skip_bad)


def prepare(name: str, data_dir: str | None = None, *, manual_dir: str | None = None,
            skip_bad: bool = False):
  """Builds the dataset if it is not on disk yet; returns the builder.

  In multi-host jobs process 0 prepares first and the others wait at a barrier, then prepare
  themselves only if they still do not see the files (hosts without a shared filesystem).
  """
  import jax  # pylint: disable=g-import-not-at-top
  kwargs = dict(manual_dir=manual_dir, skip_bad=skip_bad)
  builder = get_builder(name, data_dir, **kwargs)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      _prepare(builder, manual_dir)
    multihost_utils.sync_global_devices(f'prepare {name}')
    builder = get_builder(name, data_dir, **kwargs)
  _prepare(builder, manual_dir)
  return builder


def _prepare(builder, manual_dir: str | None = None) -> None:
  if builder.is_prepared():
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  logging.info('Preparing dataset %s in %s (first use)', builder.info.full_name, builder.data_dir)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  builder.download_and_prepare(file_format='array_record', download_config=download_config)


def load_source(name: str, split: str, data_dir: str | None = None, *,
                manual_dir: str | None = None, skip_bad: bool = False, flat_cache: bool = False):
  """Random-access source of decoded numpy examples for `split`, and the dataset info.

  flat_cache: read through a decoded copy of the split (`cxr_jax.data.flat_cache`), written on
  first use: several times cheaper per example than TFDS's protobuf + feature decoding.
  """
  builder = prepare(name, data_dir, manual_dir=manual_dir, skip_bad=skip_bad)
  if split not in builder.info.splits:
    raise ValueError(f'dataset {name!r} has no split {split!r}; it has '
                     f'{", ".join(sorted(builder.info.splits))}')
  source = builder.as_data_source(split)
  if flat_cache:
    from cxr_jax.data import flat_cache as flat  # pylint: disable=g-import-not-at-top
    source = flat.cached_source(builder, split, source)
  return source, builder.info
