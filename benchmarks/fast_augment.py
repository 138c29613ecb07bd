"""A faster MoCo host transform, for comparison in `benchmarks/input_pipeline.py` only.

Same output structure and the same random draws as `cxr_jax.methods.moco._two_view_transform`
(crop boxes from `augment.random_resized_crop_box`, parameters from
`augment.sample_photometric_params`, in the same order), so the two views cover the same pixels;
only the resampling and the memory traffic differ:

* `cv2.INTER_AREA` is used only when the crop shrinks by 2x or more in both directions. Between
  1x and 2x OpenCV's area interpolation takes its general (non-integer scale) path, which costs
  about 6x bilinear for a 240 -> 224 px resize, while its anti-aliasing gain at < 2x is below what
  the device blur already does. For 256 px sources and 224 px views the shrink is at most 1.14x,
  so every view is bilinear.
* Each view is resized straight into a preallocated [2, S, S, 1] output (`cv2.resize(dst=...)`),
  so there is no per-view `copy()` / `np.stack`.

If adopted, the change belongs in `cxr_jax/data/augment.py`: `_resize_2d` (the interpolation
rule) and `two_views` (preallocated output); see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxr_jax.data import augment


def resize_into(plane: np.ndarray, out: np.ndarray) -> None:
  """Resizes the [h, w] uint8 `plane` into the contiguous [H, W] uint8 `out`."""
  h, w = plane.shape
  out_h, out_w = out.shape
  if (h, w) == (out_h, out_w):
    out[...] = plane
    return
  area = h >= 2 * out_h and w >= 2 * out_w
  cv2.resize(plane, (out_w, out_h), dst=out,
             interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)


def two_views_fast(image: np.ndarray, rng: np.random.Generator, out_size_px: int,
                   crop_scale=(0.2, 1.0), photometric=augment.PhotometricConfig(),
                   crop_ratio=(3 / 4, 4 / 3)) -> dict[str, np.ndarray]:
  plane = image[..., 0] if image.ndim == 3 else image
  views = np.empty((2, out_size_px, out_size_px, 1), np.uint8)
  params = np.empty((2, augment.NUM_PHOTOMETRIC_PARAMS), np.float32)
  for v in range(2):
    top, left, ch, cw = augment.random_resized_crop_box(plane.shape[0], plane.shape[1], rng,
                                                        crop_scale, crop_ratio)
    resize_into(plane[top:top + ch, left:left + cw], views[v, :, :, 0])
    params[v] = augment.sample_photometric_params(rng, photometric)
  return {'views': views, 'view_params': params}


def two_view_transform_fast(example, rng, *, out_size_px, crop_scale, photometric):
  """Drop-in for `moco._two_view_transform` (a grain random_map function)."""
  out = two_views_fast(example['image'], rng, out_size_px, crop_scale, photometric)
  out['label'] = np.int32(example['label'])
  return out
