"""DenseNet encoder: parameter count, pyramid shapes and strides, training a step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cxr_jax import models
from cxr_jax.models import unet
from cxr_jax.models.densenet import BLOCK_LAYERS, DenseNet
from cxr_jax.models.resnet import ResNet


def densenet_trunk_params(block_layers, *, growth=32, stem=64, bn_size=4, in_channels=1):
  """Parameters of a DenseNet-BC trunk from the architecture (Huang et al. 2017): convs have no
  bias, every BN has a scale and a bias, and there is no classifier."""
  inner = bn_size * growth
  n = 7 * 7 * in_channels * stem + 2 * stem            # stem conv + BN
  ch = stem
  for i, layers in enumerate(block_layers):
    for _ in range(layers):
      n += 2 * ch + ch * inner                         # BN + 1x1 conv
      n += 2 * inner + 3 * 3 * inner * growth          # BN + 3x3 conv
      ch += growth
    if i + 1 < len(block_layers):
      n += 2 * ch + ch * (ch // 2)                     # transition BN + 1x1 conv
      ch //= 2
  return n + 2 * ch                                    # final BN


def count_params(model):
  return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


def test_densenet_parameter_counts():
  model = nnx.eval_shape(lambda: DenseNet(121, rngs=nnx.Rngs(0)))
  n = count_params(model)
  assert n == densenet_trunk_params(BLOCK_LAYERS[121])
  # torchvision's densenet121 (3-channel input) has 7,978,856 parameters, of which the
  # classifier is 1024 * 1000 + 1000; a 1-channel stem has 2 * 64 * 7 * 7 fewer.
  assert n == 7_978_856 - (1024 * 1000 + 1000) - 2 * 64 * 7 * 7
  assert model.stage_channels == [256, 512, 1024, 1024] and model.num_features == 1024
  model = nnx.eval_shape(lambda: DenseNet(169, rngs=nnx.Rngs(0)))
  # torchvision densenet169: 14,149,480 parameters, classifier 1664 * 1000 + 1000.
  assert count_params(model) == densenet_trunk_params(BLOCK_LAYERS[169])
  assert count_params(model) == 14_149_480 - (1664 * 1000 + 1000) - 2 * 64 * 7 * 7


def feature_shapes(model_fn, image_hw, batch=2):
  """Shapes of the encoder's outputs, traced only (no initialisation or compute)."""
  graphdef, state = nnx.split(nnx.eval_shape(model_fn))
  x = jax.ShapeDtypeStruct((batch, *image_hw, 1), jnp.float32)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=True), state, x)
  return {k: v.shape for k, v in out.items()}


def test_densenet121_pyramid_keys_strides_and_channels():
  shapes = feature_shapes(lambda: DenseNet(121, rngs=nnx.Rngs(0)), (224, 224))
  assert shapes == {'stem': (2, 112, 112, 64), 'stage1': (2, 56, 56, 256),
                    'stage2': (2, 28, 28, 512), 'stage3': (2, 14, 14, 1024),
                    'stage4': (2, 7, 7, 1024), 'pooled': (2, 1024)}
  model = nnx.eval_shape(lambda: DenseNet(121, rngs=nnx.Rngs(0)))
  channels = unet.encoder_channels(model)
  assert channels == {k: shapes[k][-1] for k in ('stem', 'stage1', 'stage2', 'stage3', 'stage4')}


def test_densenet_matches_resnet_strides_on_odd_sizes():
  for hw in ((64, 64), (40, 72), (33, 50)):
    dense = feature_shapes(lambda: DenseNet(width=8, block_layers=(1, 1, 1, 1),
                                            rngs=nnx.Rngs(0)), hw)
    res = feature_shapes(lambda: ResNet(18, width=8, rngs=nnx.Rngs(0)), hw)
    for key in ('stem', 'stage1', 'stage2', 'stage3', 'stage4'):
      assert dense[key][1:3] == res[key][1:3], (hw, key)


def test_build_encoder_selects_densenet_and_defaults_to_resnet():
  config = ml_collections.ConfigDict(dict(name='densenet', depth=121, width=64, bn_group_size=0))
  model = nnx.eval_shape(lambda: models.build_encoder(config, dtype=jnp.float32,
                                                      rngs=nnx.Rngs(0)))
  assert isinstance(model, DenseNet) and model.growth == 32
  assert model.stage_channels == [256, 512, 1024, 1024]
  config.block_layers = (1, 2, 1, 1)
  config.width = 8
  model = nnx.eval_shape(lambda: models.build_encoder(config, dtype=jnp.float32,
                                                      rngs=nnx.Rngs(0)))
  assert model.stage_channels == [8 + 4, 6 + 2 * 4, 7 + 4, 5 + 4]
  no_name = ml_collections.ConfigDict(dict(depth=18, width=8, bn_group_size=0))
  model = nnx.eval_shape(lambda: models.build_encoder(no_name, dtype=jnp.float32,
                                                      rngs=nnx.Rngs(0)))
  assert isinstance(model, ResNet)


def fast_rngs(seed=0):
  """RBG keys: eager initialisation compiles one small program per parameter shape, and those
  compile ~2.5x faster than with threefry keys on CPU (DenseNet layers all differ in shape)."""
  return nnx.Rngs(jax.random.key(seed, impl='rbg'))


class _EncoderDecoder(nnx.Module):

  def __init__(self, rngs):
    self.encoder = DenseNet(width=8, block_layers=(2, 1, 1, 1), bn_group_size=2, rngs=rngs)
    self.decoder = unet.Decoder(unet.encoder_channels(self.encoder), out_channels=1,
                                widths=(4, 4, 4, 4), bn_group_size=2, rngs=rngs)

  def __call__(self, x, *, train):
    return self.decoder(self.encoder(x, train=train), train=train, output_hw=x.shape[1:3])


def test_tiny_densenet_with_unet_decoder_trains_a_step():
  """Functional step as the methods run it: every encoder parameter gets a gradient through the
  pyramid, BN statistics update, and a few SGD steps reduce a reconstruction loss."""
  graphdef, params, stats = nnx.split(_EncoderDecoder(fast_rngs()), nnx.Param, nnx.BatchStat)
  params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)
  tx = optax.sgd(0.05, momentum=0.9)
  opt_state = tx.init(params)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 1)), jnp.float32)

  def loss_fn(p, s):
    model = nnx.merge(graphdef, p, s)
    y = model(x, train=True)
    return jnp.mean(jnp.square(y - x)), nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  @jax.jit
  def step(p, s, o):
    (loss, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), s, o, loss, grads

  new_params, new_stats, opt_state, loss0, grads = step(params, stats, opt_state)
  flat = jax.tree_util.tree_flatten_with_path(grads['encoder'])[0]
  without_grad = [jax.tree_util.keystr(k) for k, g in flat if not np.any(np.asarray(g))]
  assert not without_grad, without_grad
  assert not np.allclose(new_stats['encoder']['final_bn']['mean'],
                         stats['encoder']['final_bn']['mean'])
  p, s = new_params, new_stats
  for _ in range(5):
    p, s, opt_state, loss, _ = step(p, s, opt_state)
  assert np.isfinite(float(loss)) and float(loss) < float(loss0)
