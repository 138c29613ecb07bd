"""Tests for cxr_jax.data.augment (host geometry, parameter sampling, device ops)."""

import dataclasses

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.data import augment as aug


def _image(h, w, seed=0, channel=True):
  img = np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)
  return img[..., None] if channel else img


def _params(**slots):
  p = aug.identity_photometric_params()
  for name, value in slots.items():
    p[getattr(aug, 'IDX_' + name.upper())] = value
  return p


def _apply_one(img_u8, params, max_blur_sigma=2.0):
  out = aug.apply_photometric(jnp.asarray(img_u8[None]), jnp.asarray(params[None]),
                              max_blur_sigma=max_blur_sigma)
  return np.asarray(out[0])


# ----------------------------------------------------------------------------- host geometry


@pytest.mark.parametrize('channel', [True, False])
def test_random_resized_crop_shape_dtype(channel):
  img = _image(120, 90, channel=channel)
  out = aug.random_resized_crop(img, np.random.default_rng(0), 64)
  assert out.shape == (64, 64, 1)
  assert out.dtype == np.uint8


def test_random_resized_crop_deterministic():
  img = _image(128, 128)
  a = aug.random_resized_crop(img, np.random.default_rng(7), 48)
  b = aug.random_resized_crop(img, np.random.default_rng(7), 48)
  c = aug.random_resized_crop(img, np.random.default_rng(8), 48)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize('size,out,interp', [(256, 64, cv2.INTER_AREA), (32, 80, cv2.INTER_LINEAR)])
def test_random_resized_crop_full_image_is_plain_resize(size, out, interp):
  img = _image(size, size, seed=3)
  got = aug.random_resized_crop(img, np.random.default_rng(1), out, scale=(1.0, 1.0),
                                ratio=(1.0, 1.0))
  want = cv2.resize(img[..., 0], (out, out), interpolation=interp)
  np.testing.assert_array_equal(got[..., 0], want)


def test_random_resized_crop_box_statistics():
  rng = np.random.default_rng(0)
  h, w = 256, 256
  fracs, aspects = [], []
  for _ in range(2000):
    top, left, ch, cw = aug.random_resized_crop_box(h, w, rng, (0.2, 1.0), (3 / 4, 4 / 3))
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
    fracs.append(ch * cw / (h * w))
    aspects.append(cw / ch)
  fracs, aspects = np.array(fracs), np.array(aspects)
  # Rounding the side lengths to whole pixels moves the area by < 1% at this size.
  assert fracs.min() >= 0.2 * 0.99 and fracs.max() <= 1.0
  assert fracs.min() < 0.25 and fracs.max() > 0.95  # the whole range is used
  assert aspects.min() >= 0.75 * 0.98 and aspects.max() <= 4 / 3 * 1.02


def test_random_resized_crop_box_fallback_is_central():
  # A full-area square crop never fits a 100x50 image, so all ten tries fail.
  box = aug.random_resized_crop_box(100, 50, np.random.default_rng(0), (1.0, 1.0), (1.0, 1.0))
  assert box == (25, 0, 50, 50)


def test_center_resize():
  sq = _image(200, 200, seed=2)
  np.testing.assert_array_equal(aug.center_resize(sq, 50)[..., 0],
                                cv2.resize(sq[..., 0], (50, 50), interpolation=cv2.INTER_AREA))
  tall = _image(300, 200, seed=4, channel=False)
  got = aug.center_resize(tall, 40)
  assert got.shape == (40, 40, 1) and got.dtype == np.uint8
  want = cv2.resize(tall[50:250], (40, 40), interpolation=cv2.INTER_AREA)
  np.testing.assert_array_equal(got[..., 0], want)


# ----------------------------------------------------------------------------- param sampling


def test_sample_photometric_params_deterministic():
  cfg = aug.PhotometricConfig()
  a = aug.sample_photometric_params(np.random.default_rng(5), cfg)
  b = aug.sample_photometric_params(np.random.default_rng(5), cfg)
  assert a.shape == (aug.NUM_PHOTOMETRIC_PARAMS,) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)


def test_sample_photometric_params_ranges():
  cfg = aug.PhotometricConfig(hflip_prob=0.3)
  rng = np.random.default_rng(0)
  p = np.stack([aug.sample_photometric_params(rng, cfg) for _ in range(4000)])
  bright, contrast, gamma = p[:, aug.IDX_BRIGHTNESS], p[:, aug.IDX_CONTRAST], p[:, aug.IDX_GAMMA]
  sigma, flip = p[:, aug.IDX_BLUR_SIGMA], p[:, aug.IDX_HFLIP]
  assert np.all((bright >= 0.6) & (bright <= 1.4))
  assert np.all((contrast >= 0.6) & (contrast <= 1.4))
  assert np.all((gamma >= 0.7 - 1e-6) & (gamma <= 1.4 + 1e-6))
  blurred = sigma > 0
  assert np.all((sigma[blurred] >= 0.1) & (sigma[blurred] <= 2.0))
  assert set(np.unique(flip)) <= {0.0, 1.0}
  # Frequencies follow the configured probabilities.
  jittered = (bright != 1) | (contrast != 1) | (gamma != 1)
  assert abs(jittered.mean() - 0.8) < 0.03
  assert abs(blurred.mean() - 0.5) < 0.03
  assert abs(flip.mean() - 0.3) < 0.03
  # Jittered views span their ranges.
  assert bright.min() < 0.65 and bright.max() > 1.35
  assert gamma[jittered].min() < 0.72 and gamma.max() > 1.37


def test_sample_photometric_params_identity_when_disabled():
  cfg = aug.PhotometricConfig(jitter_prob=0.0, blur_prob=0.0)
  rng = np.random.default_rng(0)
  for _ in range(50):
    np.testing.assert_array_equal(aug.sample_photometric_params(rng, cfg),
                                  np.array([1, 1, 1, 0, 0], np.float32))


def test_photometric_config_validation():
  with pytest.raises(ValueError):
    aug.PhotometricConfig(blur_prob=1.5)
  with pytest.raises(ValueError):
    aug.PhotometricConfig(gamma=(0.0, 1.0))
  with pytest.raises(dataclasses.FrozenInstanceError):
    aug.PhotometricConfig().brightness = 0.1


def test_two_views():
  img = _image(160, 160)
  cfg = aug.PhotometricConfig()
  out = aug.two_views(img, np.random.default_rng(3), 32, (0.2, 1.0), cfg)
  again = aug.two_views(img, np.random.default_rng(3), 32, (0.2, 1.0), cfg)
  assert out['views'].shape == (2, 32, 32, 1) and out['views'].dtype == np.uint8
  assert out['view_params'].shape == (2, aug.NUM_PHOTOMETRIC_PARAMS)
  assert out['view_params'].dtype == np.float32
  np.testing.assert_array_equal(out['views'], again['views'])
  np.testing.assert_array_equal(out['view_params'], again['view_params'])
  assert not np.array_equal(out['views'][0], out['views'][1])


# ----------------------------------------------------------------------------- device ops


def test_apply_identity():
  img = _image(24, 20)
  out = _apply_one(img, aug.identity_photometric_params())
  assert out.dtype == np.float32 and out.shape == (24, 20, 1)
  np.testing.assert_allclose(out, img / 255.0, atol=1e-6)
  # Float input in [0, 1] passes through unchanged.
  f = jnp.asarray(img[None] / 255.0, jnp.float32)
  out_f = aug.apply_photometric(f, aug.identity_photometric_params(1))
  np.testing.assert_allclose(np.asarray(out_f), np.asarray(f), atol=1e-6)


def test_apply_brightness():
  img = _image(16, 16, seed=1)
  x = img.astype(np.float64) / 255
  for factor in (1.3, 0.75):
    out = _apply_one(img, _params(brightness=factor))
    np.testing.assert_allclose(out, np.clip(x * factor, 0, 1), atol=1e-6)


def test_apply_contrast():
  img = _image(16, 16, seed=2)
  x = img.astype(np.float64) / 255
  for factor in (0.6, 1.4):
    out = _apply_one(img, _params(contrast=factor))
    want = np.clip((x - x.mean()) * factor + x.mean(), 0, 1)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_apply_gamma():
  img = _image(16, 16, seed=3)
  x = img.astype(np.float64) / 255
  for g in (0.7, 1.4):
    np.testing.assert_allclose(_apply_one(img, _params(gamma=g)), x**g, atol=1e-6)


def test_apply_brightness_contrast_gamma_combined():
  img = _image(16, 16, seed=4)
  x = img.astype(np.float64) / 255
  d, f, g = 1.1, 1.3, 0.8
  y = x * d
  want = np.clip((y - y.mean()) * f + y.mean(), 0, 1)**g
  np.testing.assert_allclose(_apply_one(img, _params(brightness=d, contrast=f, gamma=g)), want,
                             atol=1e-6)


@pytest.mark.parametrize('sigma', [0.5, 1.3, 2.0])
def test_apply_blur_matches_cv2(sigma):
  img = _image(32, 40, seed=5)  # non-square to catch H/W mix-ups
  r = aug.blur_radius(2.0)
  assert r == 6
  out = _apply_one(img, _params(blur_sigma=sigma), max_blur_sigma=2.0)
  x = img[..., 0].astype(np.float32) / 255
  want = cv2.GaussianBlur(x, (2 * r + 1, 2 * r + 1), sigmaX=sigma, sigmaY=sigma,
                          borderType=cv2.BORDER_REFLECT_101)
  np.testing.assert_allclose(out[..., 0], want, atol=1e-4)


def test_apply_hflip():
  img = _image(12, 10, seed=6)
  out = _apply_one(img, _params(hflip=1.0))
  np.testing.assert_allclose(out, img[:, ::-1] / 255.0, atol=1e-6)


def test_apply_is_per_example_and_jittable():
  imgs = np.stack([_image(20, 24, seed=7), _image(20, 24, seed=8)])
  params = np.stack([_params(brightness=1.2, contrast=0.7, blur_sigma=1.1),
                     _params(gamma=1.3, blur_sigma=0.0, hflip=1.0)])
  fn = jax.jit(aug.apply_photometric, static_argnames='max_blur_sigma')
  batched = np.asarray(fn(jnp.asarray(imgs), jnp.asarray(params), max_blur_sigma=2.0))
  assert batched.shape == (2, 20, 24, 1) and batched.dtype == np.float32
  for i in range(2):
    alone = _apply_one(imgs[i], params[i])
    np.testing.assert_allclose(batched[i], alone, atol=1e-6)
  # The two examples really received different treatment.
  assert not np.allclose(batched[0], imgs[0] / 255.0, atol=1e-3)
  eager = np.asarray(aug.apply_photometric(jnp.asarray(imgs), jnp.asarray(params)))
  np.testing.assert_allclose(batched, eager, atol=1e-6)


def test_apply_output_range():
  img = _image(16, 16, seed=9)
  out = _apply_one(img, _params(brightness=1.4, contrast=1.4, gamma=0.7, blur_sigma=1.5))
  assert out.min() >= 0.0 and out.max() <= 1.0


def test_normalize():
  x = jnp.array([0.0, 0.5, 1.0])
  np.testing.assert_allclose(np.asarray(aug.normalize(x)), [-2.0, 0.0, 2.0])
  np.testing.assert_allclose(aug.normalize(np.array([0.2]), mean=0.2, std=0.1), [0.0])
