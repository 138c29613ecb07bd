"""ResNet-18/34/50/101 for single-channel radiographs, NHWC, with a feature pyramid output.

torchvision's ResNet v1.5 layout (stride on the 3x3 conv of bottlenecks) with a 1-channel stem.
`width` scales every stage (64 is the paper model; the CPU configs use 16). The forward pass returns
a dict of features so heads can pick what they need:
  'stem' [B, H/2, W/2, w], 'stage1'..'stage4' (strides 4, 8, 16, 32), 'pooled' [B, C] (global mean).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cxr_jax.models.layers import GroupBatchNorm, conv

STAGE_BLOCKS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
}


class _ResidualBlock(nnx.Module):
  """Shared shortcut: identity, or a strided 1x1 conv + BN where the shape changes."""

  def _init_shortcut(self, in_ch, out_ch, stride, *, bn, dtype, rngs):
    self.has_shortcut = stride != 1 or in_ch != out_ch
    if self.has_shortcut:
      self.shortcut = conv(in_ch, out_ch, 1, stride, dtype=dtype, rngs=rngs)
      self.shortcut_bn = bn(out_ch)

  def _merge(self, x, residual, *, train):
    if self.has_shortcut:
      x = self.shortcut_bn(self.shortcut(x), train=train)
    return jax.nn.relu(x + residual)


class BasicBlock(_ResidualBlock):
  expansion = 1

  def __init__(self, in_ch, ch, stride, *, bn, dtype, rngs):
    out_ch = ch * self.expansion
    self.conv1 = conv(in_ch, ch, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = bn(ch)
    self.conv2 = conv(ch, out_ch, 3, dtype=dtype, rngs=rngs)
    self.bn2 = bn(out_ch, zero_init_scale=True)
    self._init_shortcut(in_ch, out_ch, stride, bn=bn, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train):
    y = jax.nn.relu(self.bn1(self.conv1(x), train=train))
    return self._merge(x, self.bn2(self.conv2(y), train=train), train=train)


class Bottleneck(_ResidualBlock):
  expansion = 4

  def __init__(self, in_ch, ch, stride, *, bn, dtype, rngs):
    out_ch = ch * self.expansion
    self.conv1 = conv(in_ch, ch, 1, dtype=dtype, rngs=rngs)
    self.bn1 = bn(ch)
    self.conv2 = conv(ch, ch, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = bn(ch)
    self.conv3 = conv(ch, out_ch, 1, dtype=dtype, rngs=rngs)
    self.bn3 = bn(out_ch, zero_init_scale=True)
    self._init_shortcut(in_ch, out_ch, stride, bn=bn, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train):
    y = jax.nn.relu(self.bn1(self.conv1(x), train=train))
    y = jax.nn.relu(self.bn2(self.conv2(y), train=train))
    return self._merge(x, self.bn3(self.conv3(y), train=train), train=train)


class ResNet(nnx.Module):
  """ResNet encoder. Input [B, H, W, 1] float (normalised); output: dict of features (module doc)."""

  def __init__(self, depth: int = 50, *, width: int = 64, in_channels: int = 1,
               bn_group_size: int | None = None, zero_init_residual: bool = True,
               dtype=jnp.float32, rngs: nnx.Rngs):
    if depth not in STAGE_BLOCKS:
      raise ValueError(f'model.depth={depth} is not one of {sorted(STAGE_BLOCKS)}')
    kind, counts = STAGE_BLOCKS[depth]
    block_cls = BasicBlock if kind == 'basic' else Bottleneck

    def bn(ch, zero_init_scale=False):
      return GroupBatchNorm(ch, group_size=bn_group_size, dtype=dtype,
                            zero_init_scale=zero_init_scale and zero_init_residual)

    self.stem_conv = conv(in_channels, width, 7, 2, dtype=dtype, rngs=rngs)
    self.stem_bn = bn(width)
    in_ch = width
    self.stage_channels = []
    stages = {}
    for s, n_blocks in enumerate(counts):
      ch = width * 2 ** s
      blocks = {}
      for b in range(n_blocks):
        stride = 2 if (b == 0 and s > 0) else 1
        blocks[f'block{b}'] = block_cls(in_ch, ch, stride, bn=bn, dtype=dtype, rngs=rngs)
        in_ch = ch * block_cls.expansion
      stages[f'stage{s + 1}'] = nnx.Dict(blocks)
      self.stage_channels.append(in_ch)
    self.stages = nnx.Dict(stages)
    self.num_features = in_ch
    self.dtype = dtype

  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    x = x.astype(self.dtype)
    x = jax.nn.relu(self.stem_bn(self.stem_conv(x), train=train))
    features = {'stem': x}
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for name in sorted(self.stages.keys()):
      for block_name in sorted(self.stages[name].keys(), key=lambda k: int(k[5:])):
        x = self.stages[name][block_name](x, train=train)
      features[name] = x
    features['pooled'] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return features
