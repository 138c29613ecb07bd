"""Inpainting pre-training for chest X-rays: reconstruct masked regions from their context.

Each training image gets holes drawn per example on the host (`cxr_jax.data.masks`: rectangles,
brush strokes and blobs covering a configured fraction of the image, optionally only inside the
lung field). The encoder (the same ResNet as MoCo, so `params/encoder/...` has the same structure
and `init_from` works unchanged) sees the image with the holes filled by the mean of the visible
pixels; a resize+conv decoder (`models.unet.Decoder`, without skips by default, as a context
encoder) predicts the whole image. Loss: L1 or L2 over the hole pixels, plus a small weight on the
visible ones and an optional SSIM term.

Intensities: the encoder input is standardised with the statistics of the *visible* pixels (or
the fixed affine map), and the decoder output is mapped back through the same statistics, so
predictions and losses live in the [0, 1] pixel space whatever the exposure.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cxr_jax import models
from cxr_jax.data import augment
from cxr_jax.data import masks as masks_lib
from cxr_jax.methods import base
from cxr_jax.models import unet


class InpaintingNet(nnx.Module):
  """Encoder + decoder. `__call__(x) -> [B, H, W, 1]`; `features(x) -> pooled [B, C]`."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    dtype = base.compute_dtype(config)
    self.encoder = models.build_encoder(config.model, dtype=dtype, rngs=rngs)
    self.decoder = unet.Decoder(unet.encoder_channels(self.encoder), out_channels=1,
                                widths=tuple(config.decoder.widths), skips=config.decoder.skips,
                                bn_group_size=config.model.bn_group_size or None, dtype=dtype,
                                rngs=rngs)

  def __call__(self, x, *, train: bool):
    return self.decoder(self.encoder(x, train=train), train=train, output_hw=x.shape[1:3])

  def features(self, x, *, train: bool):
    return self.encoder(x, train=train)['pooled']


def visible_stats(images: jax.Array, visible: jax.Array, eps: float = 1e-3):
  """Per-image mean and std [B, 1, 1, 1] over the visible pixels of images [B, H, W, 1]."""
  count = jnp.maximum(jnp.sum(visible, axis=(1, 2, 3), keepdims=True), 1.0)
  mean = jnp.sum(images * visible, axis=(1, 2, 3), keepdims=True) / count
  var = jnp.sum(jnp.square(images - mean) * visible, axis=(1, 2, 3), keepdims=True) / count
  return mean, jnp.sqrt(var) + eps


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def ssim(x: jax.Array, y: jax.Array, window: int = 7, data_range: float = 1.0) -> jax.Array:
  """Mean structural similarity of [B, H, W, 1] images with a uniform window (scikit-image's
  default: 7x7, sample covariance, C1=(0.01 L)^2, C2=(0.03 L)^2), valid positions only."""
  def local_mean(z):
    return jax.lax.reduce_window(z, 0.0, jax.lax.add, (1, window, window, 1), (1, 1, 1, 1),
                                 'VALID') / window ** 2
  n = window ** 2
  cov_norm = n / (n - 1)
  mx, my = local_mean(x), local_mean(y)
  vx = cov_norm * (local_mean(x * x) - mx * mx)
  vy = cov_norm * (local_mean(y * y) - my * my)
  vxy = cov_norm * (local_mean(x * y) - mx * my)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
  return jnp.mean(s)


class Inpainting(base.Method):
  """config.decoder: widths, skips; config.inpaint: loss ('l1'|'l2'), unmasked_weight,
  ssim_weight; config.masks: masks.MaskConfig fields; config.aug: crops and photometric jitter."""

  def __init__(self, config, num_train_steps: int, targets=None):
    if config.inpaint.loss not in ('l1', 'l2'):
      raise ValueError(f"config.inpaint.loss={config.inpaint.loss!r} is not 'l1' or 'l2'")
    self.mask_config = masks_lib.MaskConfig(
        area_fraction=tuple(config.masks.area_fraction), num_shapes=tuple(config.masks.num_shapes),
        kinds=tuple(config.masks.kinds), restrict_to_region=config.masks.restrict_to_region)
    super().__init__(config, num_train_steps, targets)
    self.jit_eval_batch = jax.jit(self._eval_batch)

  def build_model(self, rngs):
    return InpaintingNet(self.config, rngs=rngs)

  # ----- host transforms ------------------------------------------------------------------------
  def train_transform(self):
    return functools.partial(
        _train_transform, out_size_px=self.config.aug.image_size_px,
        crop_scale=tuple(self.config.aug.crop_scale), photometric=self.photometric_config(),
        mask_config=self.mask_config)

  def eval_transform(self):
    return functools.partial(_eval_transform, out_size_px=self.config.aug.image_size_px,
                             mask_config=self.mask_config)

  # ----- device ------------------------------------------------------------------------------
  def _encode_input(self, images: jax.Array, hole: jax.Array):
    """Masked, normalised encoder input and the map from model output back to [0, 1]."""
    visible = 1.0 - hole
    if self.config.model.input_norm == 'per_image':
      mean, std = visible_stats(images, visible)
    else:
      mean, std = jnp.full_like(images[:, :1, :1], 0.5), jnp.full_like(images[:, :1, :1], 0.25)
    x = (images - mean) / std * visible   # holes hold the visible mean (0 after normalising)
    return x, lambda out: out * std + mean

  def reconstruct(self, params, model_state, images, hole, *, train: bool):
    x, to_pixels = self._encode_input(images, hole)
    out, model_state = self.apply(params, model_state, x, train=train)
    return to_pixels(out), model_state

  def loss(self, prediction, target, hole):
    cfg = self.config.inpaint
    err = jnp.abs(prediction - target) if cfg.loss == 'l1' else jnp.square(prediction - target)
    hole_loss = masked_mean(err, hole)
    visible_loss = masked_mean(err, 1.0 - hole)
    total = hole_loss + cfg.unmasked_weight * visible_loss
    metrics = {'hole_loss': hole_loss, 'visible_loss': visible_loss}
    if cfg.ssim_weight:
      composite = hole * prediction + (1.0 - hole) * target
      similarity = ssim(jnp.clip(composite, 0.0, 1.0), target)
      total = total + cfg.ssim_weight * (1.0 - similarity)
      metrics['ssim'] = similarity
    return total, metrics

  def train_step(self, state, batch, rng):
    del rng  # all randomness (crops, jitter, holes) was drawn per example on the host
    images = augment.apply_photometric(batch['image'], batch['image_params'],
                                       float(self.config.aug.blur_sigma[1]))
    hole = batch['hole'].astype(jnp.float32)

    def loss_fn(params):
      prediction, model_state = self.reconstruct(params, state.model_state, images, hole,
                                                 train=True)
      loss, metrics = self.loss(prediction, images, hole)
      return loss, (model_state, metrics)

    (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state, opt_metrics = self.apply_gradients(state, grads, model_state=model_state)
    return state, {'loss': loss, 'hole_fraction': jnp.mean(hole), **metrics, **opt_metrics}

  def _eval_batch(self, state, batch):
    """Sums over the valid rows: |error| in holes, the same for the mean-fill baseline, pixels."""
    images = batch['image'].astype(jnp.float32) / 255.0
    hole = batch['hole'].astype(jnp.float32) * batch['valid'][:, None, None, None]
    prediction, _ = self.reconstruct(state.params, state.model_state, images, hole, train=False)
    mean_fill, _ = visible_stats(images, 1.0 - hole)
    composite = hole * prediction + (1.0 - hole) * images
    return ({'model_abs_err': jnp.sum(jnp.abs(prediction - images) * hole),
             'mean_fill_abs_err': jnp.sum(jnp.abs(mean_fill - images) * hole),
             'hole_pixels': jnp.sum(hole)},
            jnp.clip(jnp.concatenate([images, images * (1.0 - hole), composite], axis=2), 0, 1))

  def evaluate(self, state, evaluator):
    totals, panels = None, None
    for batch in evaluator.batches(self.config.data.eval_split, self.eval_transform()):
      sums, batch_panels = self.jit_eval_batch(state, batch)
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
      if panels is None:
        panels = batch_panels
    totals = jax.device_get(totals)
    pixels = max(float(totals['hole_pixels']), 1.0)
    masked_l1 = float(totals['model_abs_err']) / pixels
    baseline = float(totals['mean_fill_abs_err']) / pixels
    num_images = self.config.eval.num_images
    return {'masked_l1': masked_l1, 'mean_fill_masked_l1': baseline,
            'masked_l1_vs_mean_fill': masked_l1 / max(baseline, 1e-12),
            'knn_accuracy': self.knn_accuracy(state, evaluator),
            # image | masked input | reconstruction composited into the holes
            'reconstructions': _first_rows(panels, num_images)}


def _first_rows(array, n):
  """The first n rows of a global array as numpy, replicated so every host can read them."""
  if n <= 0 or array is None:
    return None
  replicated = jax.sharding.NamedSharding(array.sharding.mesh, jax.sharding.PartitionSpec())
  return np.asarray(jax.jit(lambda a: a[:n], out_shardings=replicated)(array))


def _region(example, mask_config):
  """The lung/body mask holes are drawn in (standardised examples carry it as `mask`)."""
  if mask_config.restrict_to_region and example['has_mask']:
    return example['mask']
  return None


def _train_transform(example, rng, *, out_size_px, crop_scale, photometric, mask_config):
  region = _region(example, mask_config)
  if region is not None:
    image, region = augment.random_resized_crop_pair(example['image'], region, rng, out_size_px,
                                                     crop_scale)
  else:
    image = augment.random_resized_crop(example['image'], rng, out_size_px, crop_scale)
  return {'image': image,
          'image_params': augment.sample_photometric_params(rng, photometric),
          'hole': masks_lib.sample_mask(rng, out_size_px, mask_config, region=region),
          'label': np.int32(example['label'])}


def _eval_transform(example, rng, *, out_size_px, mask_config):
  region = _region(example, mask_config)
  if region is not None:
    region = augment.center_resize(region, out_size_px, labels=True)
  return {'image': augment.center_resize(example['image'], out_size_px),
          'hole': masks_lib.sample_mask(rng, out_size_px, mask_config, region=region),
          'label': np.int32(example['label'])}
