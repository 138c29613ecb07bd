"""Data augmentation for chest X-rays, split between host and device.

The work is divided so that each side does what it is good at:

* Host (grain worker process, numpy + OpenCV): geometry only, on uint8
  images. Random-resized crops change the array shape, so they have to happen
  before batching. The host also *samples* the photometric parameters of each
  view, but does not apply them; it emits one small float32 vector per view.
  Every random number on the host comes from the ``np.random.Generator`` passed
  in (grain hands out a deterministic generator per example), so a pipeline is
  reproducible given its seed.

* Device (jax, inside the jitted train step): the photometric ops in float32 on
  the whole batch at once, driven by the per-view parameter vectors. Shipping
  uint8 pixels plus a few floats per view keeps host->device traffic small and
  moves the per-pixel float arithmetic (and the blur in particular) off the CPU.

Parameter vector layout (``NUM_PHOTOMETRIC_PARAMS`` float32 slots):

  ====================  =====  =============================================
  slot                  index  meaning (identity value)
  ====================  =====  =============================================
  ``IDX_BRIGHTNESS``    0      brightness factor multiplying the image (1)
  ``IDX_CONTRAST``      1      contrast factor around the image mean (1)
  ``IDX_GAMMA``         2      exponent applied as x ** gamma (1)
  ``IDX_BLUR_SIGMA``    3      Gaussian blur sigma in output pixels (0 = none)
  ``IDX_HFLIP``         4      horizontal flip flag, 0 or 1 (0)
  ====================  =====  =============================================
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    'IDX_BRIGHTNESS',
    'IDX_CONTRAST',
    'IDX_GAMMA',
    'IDX_BLUR_SIGMA',
    'IDX_HFLIP',
    'NUM_PHOTOMETRIC_PARAMS',
    'PhotometricConfig',
    'apply_photometric',
    'blur_radius',
    'center_resize',
    'identity_photometric_params',
    'normalize',
    'random_resized_crop',
    'random_resized_crop_box',
    'sample_photometric_params',
    'two_views',
]

# ---------------------------------------------------------------------------
# Parameter vector layout.
# ---------------------------------------------------------------------------

IDX_BRIGHTNESS = 0
IDX_CONTRAST = 1
IDX_GAMMA = 2
IDX_BLUR_SIGMA = 3
IDX_HFLIP = 4
NUM_PHOTOMETRIC_PARAMS = 5

_IDENTITY = np.array([1.0, 1.0, 1.0, 0.0, 0.0], dtype=np.float32)
assert _IDENTITY.shape == (NUM_PHOTOMETRIC_PARAMS,)


def identity_photometric_params(batch_size: int | None = None) -> np.ndarray:
  """Parameters that leave an image unchanged (apart from the /255 scaling).

  Returns a fresh float32 array of shape [P], or [batch_size, P] when
  ``batch_size`` is given.
  """
  if batch_size is None:
    return _IDENTITY.copy()
  return np.tile(_IDENTITY, (batch_size, 1))


# ---------------------------------------------------------------------------
# Host side: geometry on uint8 (numpy + OpenCV).
# ---------------------------------------------------------------------------


def _as_2d(image: np.ndarray) -> np.ndarray:
  """Accepts [H, W] or [H, W, 1] and returns the [H, W] plane."""
  if image.ndim == 3:
    if image.shape[-1] != 1:
      raise ValueError(f'Expected a single-channel image, got {image.shape}.')
    return image[..., 0]
  if image.ndim != 2:
    raise ValueError(f'Expected [H, W] or [H, W, 1], got {image.shape}.')
  return image


def _resize_2d(plane: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Resizes an [h, w] plane with an interpolation suited to the scale change.

  Area averaging is used when the crop shrinks by 2x or more in both directions
  (the anti-aliased choice where bilinear would skip pixels); otherwise bilinear,
  which is within a few grey levels of area averaging there and, for the
  non-integer factors of random crops, about 5x cheaper in OpenCV.
  """
  h, w = plane.shape
  if (h, w) == (out_h, out_w):
    return plane.copy()
  shrinking = h >= 2 * out_h and w >= 2 * out_w
  interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
  # cv2 wants (width, height); a contiguous buffer avoids surprises with views.
  return cv2.resize(np.ascontiguousarray(plane), (out_w, out_h),
                    interpolation=interp)


def _crop_resize(plane: np.ndarray, crop: tuple[int, int, int, int], out_size_px: int, *,
                 labels: bool = False) -> np.ndarray:
  """The (top, left, height, width) `crop` of an [h, w] plane resized to a square [out, out]:
  nearest-neighbour for label maps (values stay labels), `_resize_2d` for images."""
  top, left, ch, cw = crop
  region = plane[top:top + ch, left:left + cw]
  if labels:
    return cv2.resize(np.ascontiguousarray(region), (out_size_px, out_size_px),
                      interpolation=cv2.INTER_NEAREST)
  return _resize_2d(region, out_size_px, out_size_px)


def center_crop_box(h: int, w: int) -> tuple[int, int, int, int]:
  """(top, left, side, side) of the centred square crop of an h x w image."""
  side = min(h, w)
  return (h - side) // 2, (w - side) // 2, side, side


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
  """Samples a crop box with torchvision ``RandomResizedCrop`` semantics.

  The crop area is drawn uniformly as a fraction ``scale`` of the image area and
  the aspect ratio (width / height) log-uniformly from ``ratio``. Up to ten
  draws are tried; if none fits inside the image, a central crop is returned
  whose aspect ratio is the input's, clamped to ``ratio``.

  Returns:
    (top, left, crop_height, crop_width) in pixels.
  """
  if not (0 < scale[0] <= scale[1]):
    raise ValueError(f'Invalid scale range {scale}.')
  if not (0 < ratio[0] <= ratio[1]):
    raise ValueError(f'Invalid ratio range {ratio}.')
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      return top, left, crop_h, crop_w

  # Fallback: the largest central crop whose aspect ratio lies within `ratio`.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    crop_w = width
    crop_h = int(round(crop_w / ratio[0]))
  elif in_ratio > ratio[1]:
    crop_h = height
    crop_w = int(round(crop_h * ratio[1]))
  else:
    crop_h, crop_w = height, width
  return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    out_size_px: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
  """Random crop (see ``random_resized_crop_box``) resized to a square.

  Args:
    image: uint8 array of shape [H, W, 1] or [H, W].
    rng: source of all randomness.
    out_size_px: side length of the output.
    scale: range of the crop area as a fraction of the image area.
    ratio: range of the crop aspect ratio (width / height).

  Returns:
    uint8 array of shape [out_size_px, out_size_px, 1].
  """
  plane = _as_2d(image)
  crop = random_resized_crop_box(plane.shape[0], plane.shape[1], rng, scale, ratio)
  return _crop_resize(plane, crop, out_size_px)[..., None]


def random_resized_crop_pair(image: np.ndarray, label_map: np.ndarray, rng: np.random.Generator,
                             out_size_px: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)
                             ) -> tuple[np.ndarray, np.ndarray]:
  """The same random resized crop of an image and a pixel-aligned label map (e.g. lung mask).

  The image is resized like `random_resized_crop`; the label map with nearest-neighbour so its
  values stay labels. Both come back as uint8 [out, out, 1].
  """
  plane, labels = _as_2d(image), _as_2d(label_map)
  if plane.shape != labels.shape:
    raise ValueError(f'image {plane.shape} and label map {labels.shape} differ in size')
  crop = random_resized_crop_box(plane.shape[0], plane.shape[1], rng, scale, ratio)
  return (_crop_resize(plane, crop, out_size_px)[..., None],
          _crop_resize(labels, crop, out_size_px, labels=True)[..., None])


def crop_boxes(boxes: np.ndarray, num_boxes: int, crop: tuple[int, int, int, int],
               image_hw: tuple[int, int], min_visible: float = 0.25
               ) -> tuple[np.ndarray, np.ndarray]:
  """Relative (ymin, xmin, ymax, xmax) boxes of an image -> relative to a crop of it.

  `crop` is (top, left, height, width) in pixels of an image of size `image_hw`. Boxes are clipped
  to the crop; a box keeps its place (`keep` True) if at least `min_visible` of its area is
  inside. Rows past `num_boxes` are padding and never kept. Returns (boxes [M, 4], keep [M]).
  """
  h, w = image_hw
  top, left, ch, cw = crop
  b = np.asarray(boxes, np.float32) * np.array([h, w, h, w], np.float32)
  clipped = np.stack([np.clip(b[:, 0], top, top + ch), np.clip(b[:, 1], left, left + cw),
                      np.clip(b[:, 2], top, top + ch), np.clip(b[:, 3], left, left + cw)], 1)
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
  keep = (np.arange(len(b)) < num_boxes) & (visible > 0) & (visible >= min_visible * area)
  out = (clipped - np.array([top, left, top, left], np.float32)) / np.array([ch, cw, ch, cw],
                                                                            np.float32)
  return np.where(keep[:, None], out, 0.0).astype(np.float32), keep


def compact_boxes(boxes: np.ndarray, labels: np.ndarray, keep: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.int32]:
  """Moves kept rows first (order preserved), zeroes the rest; returns (boxes, labels, count)."""
  order = np.argsort(~keep, kind='stable')
  count = int(keep.sum())
  boxes, labels = boxes[order].copy(), labels[order].copy()
  boxes[count:], labels[count:] = 0, 0
  return boxes, labels, np.int32(count)


def random_resized_crop_sample(image: np.ndarray, mask: np.ndarray, boxes: np.ndarray,
                               box_labels: np.ndarray, num_boxes: int, rng: np.random.Generator,
                               out_size_px: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> dict:
  """One random resized crop applied to an image, its mask and its boxes (multi-task targets)."""
  plane = _as_2d(image)
  crop = random_resized_crop_box(plane.shape[0], plane.shape[1], rng, scale, ratio)
  out_image = _crop_resize(plane, crop, out_size_px)
  out_mask = _crop_resize(_as_2d(mask), crop, out_size_px, labels=True)
  cropped, keep = crop_boxes(boxes, num_boxes, crop, plane.shape)
  cropped, box_labels, count = compact_boxes(cropped, np.asarray(box_labels), keep)
  return {'image': out_image[..., None], 'mask': out_mask[..., None], 'boxes': cropped,
          'box_labels': box_labels, 'num_boxes': count}


def center_resize_sample(image: np.ndarray, mask: np.ndarray, boxes: np.ndarray,
                         box_labels: np.ndarray, num_boxes: int, out_size_px: int) -> dict:
  """`center_resize` of an image, its mask and its boxes (evaluation)."""
  plane = _as_2d(image)
  crop = center_crop_box(*plane.shape)
  cropped, keep = crop_boxes(boxes, num_boxes, crop, plane.shape, min_visible=0.0)
  cropped, box_labels, count = compact_boxes(cropped, np.asarray(box_labels), keep)
  return {'image': _crop_resize(plane, crop, out_size_px)[..., None],
          'mask': _crop_resize(_as_2d(mask), crop, out_size_px, labels=True)[..., None],
          'boxes': cropped,
          'box_labels': box_labels, 'num_boxes': count}


def center_resize(image: np.ndarray, out_size_px: int, *, labels: bool = False) -> np.ndarray:
  """Deterministic evaluation transform: whole image resized to a square.

  Non-square inputs are first center-cropped to their shorter side, so the
  anatomy is never squashed.

  Args:
    image: uint8 array of shape [H, W, 1] or [H, W].
    out_size_px: side length of the output.
    labels: the input is a label map (mask): nearest-neighbour resizing.

  Returns:
    uint8 array of shape [out_size_px, out_size_px, 1].
  """
  plane = _as_2d(image)
  return _crop_resize(plane, center_crop_box(*plane.shape), out_size_px, labels=labels)[..., None]


# ---------------------------------------------------------------------------
# Host side: sampling of photometric parameters.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PhotometricConfig:
  """Ranges and probabilities of the photometric augmentations.

  Attributes:
    brightness: brightness factor is drawn from U(max(0, 1 - brightness),
      1 + brightness) and multiplies the [0, 1] image (torchvision's
      ColorJitter convention, which MoCo v2's 0.4 refers to). An additive
      shift of the same size would push large parts of a radiograph into
      saturation after clipping and erase the anatomy the encoder should see.
    contrast: contrast factor is drawn from U(max(0, 1 - contrast),
      1 + contrast).
    gamma: (low, high) range of the gamma exponent, drawn log-uniformly so that
      darkening and brightening are equally likely around 1.
    blur_prob: probability that a view is blurred.
    blur_sigma: (low, high) range of the blur sigma, drawn uniformly, in pixels
      of the output (cropped and resized) image.
    hflip_prob: probability of a horizontal flip. Zero by default: in chest
      X-rays laterality carries meaning (heart on the left, dextrocardia is a
      finding), and MoCo-CXR does not flip.
    jitter_prob: probability that brightness, contrast and gamma are applied to
      a view (all three together); otherwise they are left at identity.
  """

  brightness: float = 0.4
  contrast: float = 0.4
  gamma: tuple[float, float] = (0.7, 1.4)
  blur_prob: float = 0.5
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  hflip_prob: float = 0.0
  jitter_prob: float = 0.8

  def __post_init__(self):
    if self.brightness < 0 or self.contrast < 0:
      raise ValueError('brightness and contrast must be non-negative.')
    if not (0 < self.gamma[0] <= self.gamma[1]):
      raise ValueError(f'Invalid gamma range {self.gamma}.')
    if not (0 <= self.blur_sigma[0] <= self.blur_sigma[1]):
      raise ValueError(f'Invalid blur_sigma range {self.blur_sigma}.')
    for name in ('blur_prob', 'hflip_prob', 'jitter_prob'):
      p = getattr(self, name)
      if not 0.0 <= p <= 1.0:
        raise ValueError(f'{name} must lie in [0, 1], got {p}.')


def sample_photometric_params(
    rng: np.random.Generator, cfg: PhotometricConfig) -> np.ndarray:
  """Draws the photometric parameters of one view.

  The same number of random values is consumed on every call whatever the
  outcome of the coin flips, so changing a probability in the config does not
  shift the random stream seen by later draws.

  Returns:
    float32 vector of length ``NUM_PHOTOMETRIC_PARAMS`` (see module docstring
    for the slot layout). Slots of augmentations that were not drawn hold their
    identity values.
  """
  u = rng.random(7)
  params = _IDENTITY.copy()
  if u[0] < cfg.jitter_prob:
    b_lo, b_hi = max(0.0, 1.0 - cfg.brightness), 1.0 + cfg.brightness
    params[IDX_BRIGHTNESS] = b_lo + (b_hi - b_lo) * u[1]
    c_lo, c_hi = max(0.0, 1.0 - cfg.contrast), 1.0 + cfg.contrast
    params[IDX_CONTRAST] = c_lo + (c_hi - c_lo) * u[2]
    g_lo, g_hi = math.log(cfg.gamma[0]), math.log(cfg.gamma[1])
    params[IDX_GAMMA] = math.exp(g_lo + (g_hi - g_lo) * u[3])
  if u[4] < cfg.blur_prob:
    s_lo, s_hi = cfg.blur_sigma
    params[IDX_BLUR_SIGMA] = s_lo + (s_hi - s_lo) * u[5]
  if u[6] < cfg.hflip_prob:
    params[IDX_HFLIP] = 1.0
  return params


def two_views(
    image: np.ndarray,
    rng: np.random.Generator,
    out_size_px: int,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    photometric_cfg: PhotometricConfig = PhotometricConfig(),
    *,
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> dict[str, np.ndarray]:
  """Two independently augmented views of one image, for contrastive methods.

  Returns:
    dict with ``views``: uint8 [2, out, out, 1] (geometry applied) and
    ``view_params``: float32 [2, P] (photometric parameters, to be applied on
    device with ``apply_photometric``).
  """
  views, params = [], []
  for _ in range(2):
    views.append(random_resized_crop(image, rng, out_size_px, crop_scale,
                                     crop_ratio))
    params.append(sample_photometric_params(rng, photometric_cfg))
  return {'views': np.stack(views), 'view_params': np.stack(params)}


# ---------------------------------------------------------------------------
# Device side: photometric ops in jax (batched, jit-able).
# ---------------------------------------------------------------------------


def blur_radius(max_blur_sigma: float) -> int:
  """Half-width of the blur kernel used by ``apply_photometric``."""
  return int(math.ceil(3.0 * max_blur_sigma))


def _gaussian_kernels(sigma: jax.Array, radius: int) -> jax.Array:
  """Normalised 1-D Gaussian kernels, one per example: [B] -> [B, 2r+1].

  A sigma of zero (or below) gives a delta kernel, i.e. no blur. Sigmas much
  larger than radius / 3 are truncated at the radius (still normalised).
  """
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  # Clamp before dividing so that the unused branch stays finite as well.
  safe_sigma = jnp.maximum(sigma, 1e-3)[:, None]
  gauss = jnp.exp(-0.5 * jnp.square(taps / safe_sigma))
  gauss = gauss / jnp.sum(gauss, axis=-1, keepdims=True)
  delta = (taps == 0).astype(jnp.float32)
  return jnp.where(sigma[:, None] > 0, gauss, delta[None, :])


def _separable_blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """Per-example Gaussian blur of x [B, H, W] with reflect-101 borders.

  Each 1-D pass is a sum of 2r+1 shifted slices of the padded image, each weighted by that
  example's kernel tap. XLA fuses the sum into one elementwise loop, so the pass costs one read
  and one write of the image. The alternative, a grouped (depthwise) convolution with the batch as
  the feature axis, computes the same numbers but measured about 12x slower on CPU
  (B=64, 224x224, r=6: ~150 ms vs ~12 ms), and convolution libraries gain nothing from a
  single-channel, per-example kernel on accelerators either.
  """
  kernels = _gaussian_kernels(sigma, radius)  # [B, K]
  h, w = x.shape[1], x.shape[2]
  # numpy/jax "reflect" mirrors without repeating the edge pixel: OpenCV's BORDER_REFLECT_101.
  y = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius)), mode='reflect')
  taps = 2 * radius + 1
  y = sum(kernels[:, t, None, None] * y[:, t:t + h, :] for t in range(taps))      # vertical
  y = sum(kernels[:, t, None, None] * y[:, :, t:t + w] for t in range(taps))      # horizontal
  return y


def apply_photometric(
    images: jax.Array,
    params: jax.Array,
    max_blur_sigma: float = 2.0,
) -> jax.Array:
  """Applies per-example photometric augmentation on device.

  Steps, in order: horizontal flip, brightness (x * factor), contrast
  ((x - mean) * factor + mean, mean over each image), clip to [0, 1], gamma
  (x ** gamma), Gaussian blur, clip to [0, 1].

  Args:
    images: [B, H, W, 1]; uint8 (or other integer) pixels are scaled by 1/255,
      floating inputs are assumed to be in [0, 1] already.
    params: float32 [B, NUM_PHOTOMETRIC_PARAMS], e.g. from
      ``sample_photometric_params``.
    max_blur_sigma: static Python float fixing the blur kernel radius to
      ``ceil(3 * max_blur_sigma)``; it must cover the largest sigma sampled
      (``PhotometricConfig.blur_sigma[1]``) and H, W must exceed the radius.
      Under ``jax.jit`` pass it as a static argument or close over it.

  Returns:
    float32 [B, H, W, 1] in [0, 1].
  """
  if images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f'Expected images of shape [B, H, W, 1], got '
                     f'{images.shape}.')
  params = jnp.asarray(params, dtype=jnp.float32)
  if params.shape != (images.shape[0], NUM_PHOTOMETRIC_PARAMS):
    raise ValueError(f'Expected params of shape '
                     f'{(images.shape[0], NUM_PHOTOMETRIC_PARAMS)}, got '
                     f'{params.shape}.')

  if jnp.issubdtype(images.dtype, jnp.integer):
    x = images.astype(jnp.float32) / 255.0
  else:
    x = images.astype(jnp.float32)
  x = x[..., 0]  # [B, H, W]; single channel throughout.

  def per_image(slot):  # [B] -> [B, 1, 1] for broadcasting over pixels.
    return params[:, slot][:, None, None]

  x = jnp.where(per_image(IDX_HFLIP) > 0.5, x[:, :, ::-1], x)
  x = x * per_image(IDX_BRIGHTNESS)
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  x = (x - mean) * per_image(IDX_CONTRAST) + mean
  x = jnp.clip(x, 0.0, 1.0)
  x = jnp.power(x, per_image(IDX_GAMMA))

  radius = blur_radius(max_blur_sigma)
  if radius > 0:
    x = _separable_blur(x, params[:, IDX_BLUR_SIGMA], radius)
  x = jnp.clip(x, 0.0, 1.0)
  return x[..., None]


def normalize(images_f01: Any, mean: float = 0.5, std: float = 0.25):
  """Maps [0, 1] images to model inputs: (x - mean) / std.

  Chest X-rays are single-channel, so one fixed (mean, std) is used instead of
  per-dataset statistics; the defaults send [0, 1] to [-2, 2], centred on mid
  grey, which is close enough to zero mean / unit variance for typical CXR
  intensity histograms. Works on jax or numpy arrays.
  """
  return (images_f01 - mean) / std


def standardize_per_image(images: Any, eps: float = 1e-3):
  """Maps each image [B, H, W, C] to zero mean and unit variance over its own pixels.

  Radiograph exposure and detector response differ between machines and sites; standardising
  each image removes any affine change of intensity (and so the brightness/contrast jitter up to
  clipping), leaving the encoder to model structure. `eps` keeps blank images finite.
  """
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  std = jnp.std(images, axis=(1, 2, 3), keepdims=True)
  return (images - mean) / (std + eps)


def model_input(images_f01: Any, mode: str):
  """[0, 1] images -> encoder input: 'per_image' standardisation or the 'fixed' affine map."""
  if mode == 'per_image':
    return standardize_per_image(images_f01)
  if mode == 'fixed':
    return normalize(images_f01)
  raise ValueError(f"input normalisation {mode!r} is not 'per_image' or 'fixed'")
