"""DenseNet-121/169/201 for single-channel radiographs, NHWC, with the ResNet's feature pyramid.

MultiCheXNet's encoder is a DenseNet-121 (the CheXNet backbone). The layout is the one of Huang et
al. 2017 ("Densely Connected Convolutional Networks"), ImageNet variant:
  stem: 7x7/2 conv -> BN -> ReLU -> 3x3/2 max-pool,
  4 dense blocks of (6, 12, 24, 16) layers for DenseNet-121 ((6, 12, 32, 32) for 169, (6, 12, 48,
  32) for 201). Each layer is pre-activation, BN -> ReLU -> 1x1 conv to `bn_size * growth` (4k)
  channels -> BN -> ReLU -> 3x3 conv to `growth` (k) channels, and its output is concatenated to
  its input, so a block with n layers adds n*k channels.
  Between blocks, a transition halves the channels (compression 0.5) and the resolution:
  BN -> ReLU -> 1x1 conv -> 2x2/2 average pool. A final BN (+ ReLU) follows the last block.
Growth k=32 and a 64-channel stem are the paper model; `width` is the stem width and the growth
rate is `width // 2`, so `width=64` is the paper model and `width` scales it like the ResNet's.

The forward pass returns the same dict as `models.resnet.ResNet`, with the same strides:
  'stem'   [B, H/2,  W/2,  width]  after the stem's BN-ReLU (before the max-pool),
  'stage1' [B, H/4,  W/4,  c1]     dense block 1, ...
  'stage4' [B, H/32, W/32, c4]     dense block 4 after the final BN-ReLU,
  'pooled' [B, c4]                 global mean of 'stage4' (float32).
A dense block's raw output is a concatenation of un-normalised conv outputs of very different
scales, so the pyramid levels 1-3 are taken after the BN-ReLU that opens the following
transition (the transition then continues with its 1x1 conv and pool from that same tensor).
Heads thus get normalised, rectified features as from the ResNet, at no extra parameters; level c_i
is the block's full (pre-compression) channel count. `stem_conv` and `stage_channels` have the
ResNet's meaning, so `unet.encoder_channels` works for both encoders.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cxr_jax.models.layers import GroupBatchNorm, conv

BLOCK_LAYERS = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
}


class DenseLayer(nnx.Module):
  """BN-ReLU-1x1 conv (bn_size*growth) - BN-ReLU-3x3 conv (growth); returns only the new maps."""

  def __init__(self, in_ch: int, growth: int, bn_size: int, *, bn, dtype, rngs):
    inner = bn_size * growth
    self.bn1 = bn(in_ch)
    self.conv1 = conv(in_ch, inner, 1, dtype=dtype, rngs=rngs)
    self.bn2 = bn(inner)
    self.conv2 = conv(inner, growth, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train):
    y = self.conv1(jax.nn.relu(self.bn1(x, train=train)))
    return self.conv2(jax.nn.relu(self.bn2(y, train=train)))


class Transition(nnx.Module):
  """BN-ReLU, then 1x1 conv (compression) and 2x2/2 average pool. `activate` is the first half
  (its output is the pyramid feature), `reduce` the second."""

  def __init__(self, in_ch: int, out_ch: int, *, bn, dtype, rngs):
    self.bn = bn(in_ch)
    self.conv = conv(in_ch, out_ch, 1, dtype=dtype, rngs=rngs)

  def activate(self, x, *, train):
    return jax.nn.relu(self.bn(x, train=train))

  def reduce(self, x):
    # 'SAME' with count_include_pad=False: odd sizes round up (as the ResNet's strided convs do)
    # and the border windows average only real pixels. For even sizes it is the plain 2x2 pool.
    return nnx.avg_pool(self.conv(x), (2, 2), strides=(2, 2), padding='SAME',
                        count_include_pad=False)


class DenseNet(nnx.Module):
  """DenseNet encoder. Input [B, H, W, 1] float (normalised); output: dict of features (module doc).

  Args:
    depth: 121, 169 or 201 (selects the block configuration).
    width: stem channels; growth rate = width // 2 (64 -> the paper's k=32).
    in_channels: image channels (1 for radiographs).
    bn_size: bottleneck multiplier of the 1x1 conv (4 in the paper).
    compression: channel factor of the transitions (0.5 in the paper, "DenseNet-BC").
    bn_group_size: GroupBatchNorm ghost-batch size (None = whole batch).
    block_layers: layers per dense block, overriding `depth` (tests build e.g. (1, 1, 1, 1)).

  Initialisation note: every dense layer's 1x1 kernel has its own input width, so building the
  model eagerly compiles one small initialiser per layer (~60 for DenseNet-121); that costs
  seconds on an accelerator and can take a minute or more on a loaded CPU. The ResNet has few
  distinct shapes and does not notice.
  """

  def __init__(self, depth: int = 121, *, width: int = 64, in_channels: int = 1,
               bn_size: int = 4, compression: float = 0.5, bn_group_size: int | None = None,
               block_layers: tuple[int, ...] | None = None, dtype=jnp.float32, rngs: nnx.Rngs):
    if block_layers is None:
      if depth not in BLOCK_LAYERS:
        raise ValueError(f'model.depth={depth} is not a DenseNet depth {sorted(BLOCK_LAYERS)}')
      block_layers = BLOCK_LAYERS[depth]
    if len(block_layers) != 4:
      raise ValueError(f'DenseNet needs 4 dense blocks (stage1..stage4), got {block_layers}')
    if width < 2 or width % 2:
      raise ValueError(f'DenseNet width (stem channels) must be even and >= 2, got {width}')
    growth = width // 2

    def bn(ch):
      return GroupBatchNorm(ch, group_size=bn_group_size, dtype=dtype)

    self.stem_conv = conv(in_channels, width, 7, 2, dtype=dtype, rngs=rngs)
    self.stem_bn = bn(width)
    ch = width
    self.stage_channels = []
    blocks, transitions = {}, {}
    layer_counts = tuple(block_layers)
    for s, n_layers in enumerate(layer_counts):
      layers = {}
      for i in range(n_layers):
        layers[f'layer{i}'] = DenseLayer(ch, growth, bn_size, bn=bn, dtype=dtype, rngs=rngs)
        ch += growth
      blocks[f'stage{s + 1}'] = nnx.Dict(layers)
      self.stage_channels.append(ch)
      if s + 1 < len(layer_counts):
        out_ch = int(ch * compression)
        transitions[f'stage{s + 1}'] = Transition(ch, out_ch, bn=bn, dtype=dtype, rngs=rngs)
        ch = out_ch
    self.blocks = nnx.Dict(blocks)
    self.transitions = nnx.Dict(transitions)
    self.final_bn = bn(ch)
    self.num_features = ch
    self.growth = growth
    self.dtype = dtype

  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    x = x.astype(self.dtype)
    x = jax.nn.relu(self.stem_bn(self.stem_conv(x), train=train))
    features = {'stem': x}
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    names = sorted(self.blocks.keys())
    for name in names:
      block = self.blocks[name]
      for layer_name in sorted(block.keys(), key=lambda k: int(k[5:])):
        x = jnp.concatenate([x, block[layer_name](x, train=train)], axis=-1)
      if name in self.transitions:
        transition = self.transitions[name]
        x = transition.activate(x, train=train)
        features[name] = x
        x = transition.reduce(x)
      else:
        x = jax.nn.relu(self.final_bn(x, train=train))
        features[name] = x
    features['pooled'] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return features
