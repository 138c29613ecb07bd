"""Layers shared by the backbones and heads.

`GroupBatchNorm` is the one normalisation layer of the codebase. It computes batch statistics over
fixed-size groups of consecutive examples ("ghost batches"), so a model normalises exactly the same
way whether the global batch is spread over 1 device or 256: the group size is a config value, not
a property of the hardware. MoCo's shuffle-BN is this layer applied to a permuted batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class GroupBatchNorm(nnx.Module):
  """Batch norm over groups of `group_size` consecutive examples (NHWC or NC inputs).

  Training: each group is normalised with its own mean/variance (computed in float32). The running
  statistics track the statistics of the whole batch (mean of the group means, and the exact
  variance over all groups, unbiased), which is what evaluation on single images needs.
  `group_size=None` or a group size >= batch uses the whole batch as one group.
  """

  def __init__(self, num_features: int, *, group_size: int | None = None, momentum: float = 0.9,
               epsilon: float = 1e-5, zero_init_scale: bool = False, dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    del rngs  # deterministic init
    self.group_size = group_size
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    init_scale = jnp.zeros if zero_init_scale else jnp.ones
    self.scale = nnx.Param(init_scale((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not train:
      mean, var = self.mean[...], self.var[...]
      y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
      return (y * self.scale[...] + self.bias[...]).astype(self.dtype)

    batch = x.shape[0]
    group = batch if not self.group_size or self.group_size >= batch else self.group_size
    if batch % group:
      raise ValueError(f'batch {batch} is not a multiple of the BN group size {group}')
    xg = x.astype(jnp.float32).reshape((batch // group, group) + x.shape[1:])
    reduce_axes = tuple(range(1, xg.ndim - 1))  # all but group and channel
    group_mean = jnp.mean(xg, axis=reduce_axes, keepdims=True)
    group_sq = jnp.mean(jnp.square(xg), axis=reduce_axes, keepdims=True)
    group_var = jnp.maximum(group_sq - jnp.square(group_mean), 0.0)
    y = (xg - group_mean) * jax.lax.rsqrt(group_var + self.epsilon)
    y = y.reshape(x.shape) * self.scale[...] + self.bias[...]

    # Whole-batch statistics for the running averages (stop_gradient: they are not trained).
    batch_mean = jax.lax.stop_gradient(jnp.mean(group_mean, axis=0).reshape(-1))
    batch_var = jax.lax.stop_gradient(
        jnp.mean(group_sq, axis=0).reshape(-1) - jnp.square(batch_mean))
    count = xg.size // xg.shape[-1]
    batch_var = jnp.maximum(batch_var, 0.0) * count / max(count - 1, 1)
    m = self.momentum
    self.mean[...] = m * self.mean[...] + (1 - m) * batch_mean
    self.var[...] = m * self.var[...] + (1 - m) * batch_var
    return y.astype(self.dtype)


def conv_kernel_init():
  """He-normal over fan-out, as torchvision initialises ResNet convolutions."""
  return nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, dtype, rngs: nnx.Rngs,
         use_bias: bool = False) -> nnx.Conv:
  return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=(stride, stride), padding='SAME',
                  use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=conv_kernel_init(), rngs=rngs)


def resize_bilinear(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Resizes NHWC to spatial size hw (decoders upsample with resize + conv, not transposed conv)."""
  return jax.image.resize(x, (x.shape[0], hw[0], hw[1], x.shape[3]), method='bilinear')
