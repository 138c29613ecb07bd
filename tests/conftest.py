"""Test set-up: 8 fake CPU devices (set before JAX is imported) and shared fixtures."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """A TFDS data_dir holding synthetic_cxr/tiny (64 px, 256 train / 128 validation)."""
  from cxr_jax.data import datasets  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  datasets.prepare('synthetic_cxr/tiny', data_dir)
  return data_dir


@pytest.fixture(scope='session')
def synthetic_default_dir(tmp_path_factory):
  """A TFDS data_dir holding synthetic_cxr (the default: 256 px, 2,000 train / 500 validation)."""
  from cxr_jax.data import datasets  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds_default'))
  datasets.prepare('synthetic_cxr', data_dir)
  return data_dir
