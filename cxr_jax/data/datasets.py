"""Dataset registry: names in configs -> TFDS builders, prepared on first use, read without TF.

`config.data.name` is 'builder' or 'builder/config' (TFDS builder-config syntax), e.g.
'synthetic_cxr' or 'synthetic_cxr/tiny'. Only builders listed here are accepted, so a typo fails
before anything is written.
"""

from __future__ import annotations

import importlib

from absl import logging

# name -> module defining (and so registering) the TFDS builder.
BUILDER_MODULES = {
    'synthetic_cxr': 'cxr_jax.data.builders.synthetic_cxr',
}


def known_datasets() -> list[str]:
  return sorted(BUILDER_MODULES)


def check_name(name: str) -> None:
  """Raises a one-line ValueError for an unknown dataset name (no side effects)."""
  base = name.split('/')[0]
  if base not in BUILDER_MODULES:
    raise ValueError(f'config.data.name={name!r} is not a known dataset; known: '
                     f'{", ".join(known_datasets())}')


def get_builder(name: str, data_dir: str | None = None):
  check_name(name)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  importlib.import_module(BUILDER_MODULES[name.split('/')[0]])
  return tfds.builder(name, data_dir=data_dir or None)


def prepare(name: str, data_dir: str | None = None):
  """Builds the dataset if it is not on disk yet; returns the builder.

  In multi-host jobs process 0 prepares first and the others wait at a barrier, then prepare
  themselves only if they still do not see the files (hosts without a shared filesystem).
  """
  import jax  # pylint: disable=g-import-not-at-top
  builder = get_builder(name, data_dir)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      _prepare(builder)
    multihost_utils.sync_global_devices(f'prepare {name}')
    builder = get_builder(name, data_dir)
  _prepare(builder)
  return builder


def _prepare(builder) -> None:
  if builder.is_prepared():
    return
  logging.info('Preparing dataset %s in %s (first use)', builder.info.full_name, builder.data_dir)
  builder.download_and_prepare(file_format='array_record')


def load_source(name: str, split: str, data_dir: str | None = None):
  """Random-access source of decoded numpy examples for `split`, and the dataset info."""
  builder = prepare(name, data_dir)
  if split not in builder.info.splits:
    raise ValueError(f'dataset {name!r} has no split {split!r}; it has '
                     f'{", ".join(sorted(builder.info.splits))}')
  return builder.as_data_source(split), builder.info
