"""The flat cache returns exactly what TFDS returns, and is what training reads by default."""

import os

import numpy as np

from cxr_jax.data import datasets
from cxr_jax.data import flat_cache


def _assert_same(a, b):
  assert set(a) == set(b)
  for key in a:
    if isinstance(a[key], dict):
      _assert_same(a[key], b[key])
    elif isinstance(a[key], bytes):
      assert a[key] == b[key]
    else:
      x, y = np.asarray(a[key]), np.asarray(b[key])
      assert x.dtype == y.dtype and x.shape == y.shape, key
      np.testing.assert_array_equal(x, y)


def test_flat_source_equals_tfds_source(tiny_data_dir):
  tfds_source, _ = datasets.load_source('synthetic_cxr/tiny', 'validation', tiny_data_dir)
  flat, _ = datasets.load_source('synthetic_cxr/tiny', 'validation', tiny_data_dir,
                                 flat_cache=True)
  assert isinstance(flat, flat_cache.FlatSource) and len(flat) == len(tfds_source) == 128
  assert os.path.exists(flat.path)
  for i in (0, 5, 127):                       # includes examples with 0 and several boxes
    _assert_same(flat[i], tfds_source[i])


def test_encode_decode_round_trip_of_nested_and_scalar_leaves():
  example = {'image': np.arange(12, dtype=np.uint8).reshape(2, 3, 2), 'label': np.int64(3),
             'score': np.float32(0.5), 'name': b'JPCLN001',
             'objects': {'bbox': np.zeros((0, 4), np.float32), 'label': np.array([1, 2])}}
  back = flat_cache.decode(flat_cache.encode(example))
  _assert_same(back, example)
  assert back['label'].shape == () and back['objects']['bbox'].shape == (0, 4)


def test_binary_masks_are_bit_packed_and_restored():
  rng = np.random.default_rng(0)
  mask = (rng.random((64, 64, 1)) < 0.3).astype(np.uint8)
  grey = rng.integers(0, 256, (64, 64, 1), dtype=np.uint8)
  record = flat_cache.encode({'mask': mask, 'image': grey})
  assert len(record) < 64 * 64 + 64 * 64 // 8 + 400       # the mask took 1 bit per pixel
  back = flat_cache.decode(record)
  np.testing.assert_array_equal(back['mask'], mask)
  np.testing.assert_array_equal(back['image'], grey)
