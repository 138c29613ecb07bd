"""Inpainting pieces against direct numpy versions; deterministic evaluation holes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from cxr_jax.data import augment
from cxr_jax.data import pipeline
from cxr_jax.methods import inpainting
from tests import util


def _numpy_ssim(x, y, window=7):
  """SSIM with a uniform window (scipy filter), valid region: an independent implementation."""
  n = window ** 2
  f = lambda z: ndimage.uniform_filter(z, size=window, mode='constant')
  half = window // 2
  crop = lambda z: z[half:-half, half:-half]
  mx, my = f(x), f(y)
  vx = (f(x * x) - mx * mx) * n / (n - 1)
  vy = (f(y * y) - my * my) * n / (n - 1)
  vxy = (f(x * y) - mx * my) * n / (n - 1)
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
  return crop(s).mean()


def test_ssim_matches_numpy_and_orders_degradations():
  rng = np.random.default_rng(0)
  x = ndimage.gaussian_filter(rng.random((32, 32)), 2).astype(np.float64)
  x = (x - x.min()) / (x.max() - x.min())
  light = np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1)
  heavy = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
  as_batch = lambda z: jnp.asarray(z[None, :, :, None], jnp.float32)
  for y in (light, heavy):
    np.testing.assert_allclose(float(inpainting.ssim(as_batch(x), as_batch(y))),
                               _numpy_ssim(x, y), atol=1e-4)
  assert float(inpainting.ssim(as_batch(x), as_batch(x))) == pytest.approx(1.0, abs=1e-6)
  assert _numpy_ssim(x, light) > _numpy_ssim(x, heavy)


def test_visible_stats_and_masked_mean_match_numpy():
  rng = np.random.default_rng(1)
  images = rng.random((3, 8, 8, 1)).astype(np.float32)
  visible = (rng.random((3, 8, 8, 1)) > 0.3).astype(np.float32)
  mean, std = inpainting.visible_stats(jnp.asarray(images), jnp.asarray(visible), eps=0.0)
  for b in range(3):
    pixels = images[b][visible[b] > 0]
    np.testing.assert_allclose(float(mean[b, 0, 0, 0]), pixels.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(std[b, 0, 0, 0]), pixels.std(), rtol=1e-4)
  values = rng.random((3, 8, 8, 1)).astype(np.float32)
  np.testing.assert_allclose(float(inpainting.masked_mean(jnp.asarray(values),
                                                          jnp.asarray(visible))),
                             values[visible > 0].mean(), rtol=1e-5)


def _method(tiny_data_dir, *flags):
  config = util.apply_flags(util.load_config('configs/inpainting.py', 'cpu'), [
      f'--config.data.data_dir={tiny_data_dir}', '--config.data.name=synthetic_cxr/tiny',
      '--config.model.width=8', '--config.aug.image_size_px=32',
      '--config.decoder.widths=(16,16,8,8)', *flags])
  return config, inpainting.Inpainting(config, 10)


@pytest.mark.parametrize('kind', ['l1', 'l2'])
def test_loss_weights_hole_and_visible_pixels(tiny_data_dir, kind):
  config, method = _method(tiny_data_dir, f'--config.inpaint.loss={kind}',
                           '--config.inpaint.unmasked_weight=0.1')
  rng = np.random.default_rng(2)
  target = rng.random((2, 8, 8, 1)).astype(np.float32)
  prediction = rng.random((2, 8, 8, 1)).astype(np.float32)
  hole = (rng.random((2, 8, 8, 1)) > 0.6).astype(np.float32)
  err = np.abs(prediction - target) if kind == 'l1' else (prediction - target) ** 2
  expected = err[hole > 0].mean() + 0.1 * err[hole == 0].mean()
  loss, metrics = method.loss(jnp.asarray(prediction), jnp.asarray(target), jnp.asarray(hole))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(metrics['hole_loss']) == pytest.approx(err[hole > 0].mean(), rel=1e-5)


def test_evaluation_holes_are_identical_on_every_pass(tiny_data_dir):
  config, method = _method(tiny_data_dir)
  from cxr_jax.data import mixture  # pylint: disable=g-import-not-at-top
  source = mixture.Mixture(config).split_dataset(0, 'validation')
  passes = [[b['hole'] for b in pipeline.eval_batches(source, global_batch_size=64,
                                                      transform=method.eval_transform())]
            for _ in range(2)]
  assert len(passes[0]) == 2  # 128 validation images
  for a, b in zip(*passes):
    np.testing.assert_array_equal(a, b)
  # The :cpu config draws holes inside the lung mask, over a fraction of its area.
  assert config.masks.restrict_to_region
  low, high = config.masks.area_fraction
  holes = np.concatenate(passes[0])[..., 0] > 0
  regions = np.stack([augment.center_resize(source[i]['mask'], 32, labels=True)[..., 0] > 0
                      for i in range(128)])
  assert not (holes & ~regions).any()
  fractions = holes.reshape(128, -1).sum(1) / regions.reshape(128, -1).sum(1)
  assert fractions.min() >= low - 1e-9 and fractions.max() <= high + 1e-9


def test_encoder_subtree_matches_moco_for_init_from(tiny_data_dir):
  _, inpaint = _method(tiny_data_dir)
  moco_config = util.apply_flags(util.load_config('configs/moco.py', 'cpu'),
                                 [f'--config.data.data_dir={tiny_data_dir}',
                                  '--config.model.width=8'])
  from cxr_jax.methods import moco  # pylint: disable=g-import-not-at-top
  moco_method = moco.MoCo(moco_config, 10)
  shapes = lambda m: jax.tree_util.tree_map(
      lambda x: x.shape, jax.eval_shape(m.init, jax.random.PRNGKey(0)).params['encoder'])
  assert shapes(inpaint) == shapes(moco_method)
