"""Backbone and normalisation behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cxr_jax.models.layers import GroupBatchNorm
from cxr_jax.models.resnet import ResNet


def test_group_batchnorm_normalises_each_group_and_tracks_whole_batch_stats():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 4, 4, 3)).astype(np.float32)
  x[4:] = x[4:] * 3.0 + 5.0  # second group has other statistics
  bn = GroupBatchNorm(3, group_size=4, momentum=0.0)
  y = np.asarray(bn(jnp.asarray(x), train=True))
  for g in (slice(0, 4), slice(4, 8)):
    xg = x[g]
    ref = (xg - xg.mean(axis=(0, 1, 2))) / np.sqrt(xg.var(axis=(0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(y[g], ref, rtol=1e-4, atol=1e-4)
  # momentum 0: running stats = this batch's mean and unbiased variance over all 8 examples
  np.testing.assert_allclose(np.asarray(bn.mean[...]), x.mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.var[...]), x.reshape(-1, 3).var(axis=0, ddof=1),
                             rtol=1e-4)
  # inference uses the running statistics
  y_eval = np.asarray(bn(jnp.asarray(x), train=False))
  np.testing.assert_allclose(y_eval, (x - x.mean((0, 1, 2))) / np.sqrt(
      x.reshape(-1, 3).var(0, ddof=1) + 1e-5), rtol=1e-4, atol=1e-4)


def test_group_batchnorm_rejects_indivisible_batch():
  bn = GroupBatchNorm(2, group_size=3)
  with pytest.raises(ValueError, match='multiple of the BN group size'):
    bn(jnp.ones((4, 2)), train=True)


@pytest.mark.parametrize('depth,channels', [(18, 128), (50, 512)])
def test_resnet_pyramid_shapes(depth, channels):
  model = ResNet(depth, width=16, bn_group_size=2, rngs=nnx.Rngs(0))
  feats = model(jnp.zeros((2, 64, 64, 1)), train=True)
  assert feats['stem'].shape == (2, 32, 32, 16)
  assert feats['stage1'].shape[1:3] == (16, 16)
  assert feats['stage2'].shape[1:3] == (8, 8)
  assert feats['stage3'].shape[1:3] == (4, 4)
  assert feats['stage4'].shape == (2, 2, 2, channels)
  assert feats['pooled'].shape == (2, channels)
  assert model.num_features == channels


def test_resnet50_parameter_count():
  """Paper model: torchvision ResNet-50 minus the fc layer, with a 1-channel stem."""
  model = nnx.eval_shape(lambda: ResNet(50, rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
  # 25,557,032 (torchvision) - 2,049,000 (fc) - 2 * 64 * 7 * 7 (two input channels fewer)
  assert n == 25_557_032 - 2_049_000 - 2 * 64 * 49


def test_resnet_bfloat16_compute_keeps_float32_params():
  model = ResNet(18, width=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
  feats = model(jnp.ones((2, 32, 32, 1)), train=False)
  assert feats['stage4'].dtype == jnp.bfloat16
  assert feats['pooled'].dtype == jnp.float32
