"""Decoder over an encoder's feature pyramid: bilinear resize + 3x3 convs (no transposed convs).

Starts from the deepest features ('stage4', stride 32) and doubles the resolution per level up to
stride 2 ('stem'), then resizes to the input size and projects to `out_channels`. With
`skips=True` each level concatenates the encoder feature of the same stride (U-Net); with
`skips=False` the decoder sees only the bottleneck, as a context encoder does: for inpainting
this stops the visible pixels around a hole from being copied through, so the encoder has to
summarise the image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cxr_jax.models.layers import GroupBatchNorm, conv, resize_bilinear

# Decoder levels, deepest first: (encoder feature used as skip, its stride).
LEVELS = (('stage3', 16), ('stage2', 8), ('stage1', 4), ('stem', 2))


class ConvBNReLU(nnx.Module):

  def __init__(self, in_ch, out_ch, *, bn_group_size, dtype, rngs):
    self.conv = conv(in_ch, out_ch, 3, dtype=dtype, rngs=rngs)
    self.bn = GroupBatchNorm(out_ch, group_size=bn_group_size, dtype=dtype)

  def __call__(self, x, *, train):
    return jax.nn.relu(self.bn(self.conv(x), train=train))


class Decoder(nnx.Module):
  """features dict (see models.resnet) -> [B, H, W, out_channels] float32 at the input size."""

  def __init__(self, feature_channels: dict[str, int], *, out_channels: int,
               widths: tuple[int, ...] = (256, 128, 64, 32), skips: bool = True,
               bn_group_size: int | None = None, dtype=jnp.float32, rngs: nnx.Rngs):
    if len(widths) != len(LEVELS):
      raise ValueError(f'decoder widths {widths} must have {len(LEVELS)} entries (one per level)')
    self.skips = skips
    in_ch = feature_channels['stage4']
    blocks = {}
    for (name, _), width in zip(LEVELS, widths):
      skip_ch = feature_channels[name] if skips else 0
      blocks[name] = nnx.Dict({
          'conv1': ConvBNReLU(in_ch + skip_ch, width, bn_group_size=bn_group_size, dtype=dtype,
                              rngs=rngs),
          'conv2': ConvBNReLU(width, width, bn_group_size=bn_group_size, dtype=dtype, rngs=rngs)})
      in_ch = width
    self.blocks = nnx.Dict(blocks)
    self.head = conv(in_ch, out_channels, 1, dtype=dtype, rngs=rngs, use_bias=True)

  def __call__(self, features: dict[str, jax.Array], *, train: bool,
               output_hw: tuple[int, int]) -> jax.Array:
    x = features['stage4']
    for name, _ in LEVELS:
      target = features[name].shape[1:3]
      x = resize_bilinear(x, target)
      if self.skips:
        x = jnp.concatenate([x, features[name].astype(x.dtype)], axis=-1)
      block = self.blocks[name]
      x = block['conv2'](block['conv1'](x, train=train), train=train)
    x = resize_bilinear(x, output_hw)
    return self.head(x).astype(jnp.float32)


def encoder_channels(encoder) -> dict[str, int]:
  """Channels of each pyramid level of a models.resnet.ResNet."""
  stem = encoder.stem_conv.out_features
  names = ('stage1', 'stage2', 'stage3', 'stage4')
  return {'stem': stem, **dict(zip(names, encoder.stage_channels))}
