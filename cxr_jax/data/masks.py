"""Random hole masks for inpainting pre-training, drawn on the host.

A mask is a uint8 array of shape [size, size, 1] where 1 marks a hole (pixels
hidden from the model, to be reconstructed) and 0 a visible pixel. Masks are a
union of random shapes of three kinds:

* ``rectangle``: an axis-aligned box, each side drawn independently.
* ``stroke``: a free-form brush stroke, i.e. a thick polyline following a
  random walk with random turning angles, with round joints. This follows the
  idea of the free-form masks used to train DeepFill v2 (gated convolutions).
* ``blob``: an irregular closed region, a star-shaped polygon whose radius is a
  smooth random function of the angle (a few low-order Fourier terms).

Everything random comes from the ``np.random.Generator`` passed in (grain hands
one per example), so the same generator state always gives the same mask.

Hitting the area range
----------------------
The covered fraction must land in ``cfg.area_fraction`` for every draw, not
just on average. Fractions are converted to whole pixel counts
``[lo_count, hi_count]`` (relative to the region's pixel count when holes are
restricted to a region) and the mask is built in two stages:

1. Greedy union with rejection. A target count is drawn uniformly in
   ``[lo_count, hi_count]``. Shapes are drawn one at a time onto a copy of
   the current mask; a shape is kept only if the union stays at or below
   ``hi_count``, so the upper bound can never be crossed. After each rejected
   shape all later shapes are drawn smaller (scale x 0.7), so that the
   shrinking remaining budget can still be filled. Drawing stops once at
   least ``num_shapes[0]`` shapes were kept and the area is at least
   ``lo_count`` and either reaches the target or ``num_shapes[1]`` shapes
   were kept. If the area is still below ``lo_count`` after
   ``num_shapes[1]`` shapes, more shapes are drawn (up to
   ``_EXTRA_ATTEMPTS`` more tries): the area range wins over the shape count.

2. Exact repair (rare; only if stage 1 ran out of attempts). The mask is
   grown ring by ring: the visible pixels closest to a hole (Euclidean
   distance transform, ties broken randomly) are switched to holes until the
   count reaches the target. This thickens existing shapes rather than adding
   speckle, and hits the count exactly. The symmetric operation (removing the
   hole pixels closest to the visible area) trims a mask that is too large;
   stage 1 never produces one, but the guard keeps the guarantee independent
   of the shape code.

So the result always satisfies ``lo_count <= holes <= hi_count``. (When the
configured range is narrower than one pixel for the given size there is no
such integer count; the count nearest the middle of the range is used.)
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

__all__ = [
    'KINDS',
    'MIN_REGION_FRACTION',
    'MaskConfig',
    'sample_mask',
]

KINDS = ('rectangle', 'stroke', 'blob')

# A region covering less than this fraction of the image is treated as absent
# (holes are then drawn over the whole image).
MIN_REGION_FRACTION = 0.02

# Stage-1 limits (see the module docstring).
_SHRINK_ON_REJECT = 0.7
_EXTRA_ATTEMPTS = 24

# Blob outline: number of polygon vertices and of Fourier harmonics.
_BLOB_VERTICES = 32
_BLOB_HARMONICS = 3
_BLOB_ANGLES = np.linspace(0.0, 2.0 * np.pi, _BLOB_VERTICES, endpoint=False)
_BLOB_K = np.arange(1, _BLOB_HARMONICS + 1, dtype=np.float64)[:, None]
_BLOB_KTHETA = _BLOB_K * _BLOB_ANGLES[None, :]  # [harmonics, vertices]
_BLOB_COS = np.cos(_BLOB_ANGLES)
_BLOB_SIN = np.sin(_BLOB_ANGLES)

# Largest heading change between two consecutive stroke segments.
_STROKE_MAX_TURN = 0.75 * np.pi


def _as_pair(value, name: str, kind: type) -> tuple:
  try:
    pair = tuple(value)
  except TypeError:
    raise ValueError(f'MaskConfig.{name} must be a (low, high) pair, got {value!r}.') from None
  if len(pair) != 2:
    raise ValueError(f'MaskConfig.{name} must be a (low, high) pair, got {value!r}.')
  if kind is int:
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
      raise ValueError(f'MaskConfig.{name} must hold integers, got {value!r}.')
    return tuple(int(v) for v in pair)
  if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
             for v in pair) or not all(math.isfinite(v) for v in pair):
    raise ValueError(f'MaskConfig.{name} must hold finite numbers, got {value!r}.')
  return tuple(float(v) for v in pair)


@dataclasses.dataclass(frozen=True)
class MaskConfig:
  """How hole masks are drawn.

  Sizes are fractions of the image side (of ``sqrt(region area)`` when holes
  are restricted to a region, so that shapes keep the same size relative to
  the area they are drawn in).

  Attributes:
    area_fraction: (low, high) bounds on the fraction of the image (or of the
      region, with ``restrict_to_region``) covered by holes. Every mask lands
      in this range; see the module docstring for how.
    num_shapes: (min, max) number of shapes; a soft target, the area range
      takes precedence.
    kinds: shape kinds to draw from, a subset of ``KINDS``.
    kind_weights: relative probabilities of ``kinds``; None for equal weights.
    rect_size: (low, high) range of each rectangle side.
    stroke_width: (low, high) range of the brush width.
    stroke_vertices: (min, max) number of polyline vertices of a stroke.
    stroke_step: (low, high) range of the length of one stroke segment.
    blob_radius: (low, high) range of the mean blob radius.
    restrict_to_region: draw holes only inside the region passed to
      ``sample_mask`` (e.g. a lung mask). Ignored when no region is given or
      when the region covers less than ``MIN_REGION_FRACTION`` of the image.
  """

  area_fraction: tuple[float, float] = (0.15, 0.35)
  num_shapes: tuple[int, int] = (1, 6)
  kinds: tuple[str, ...] = KINDS
  kind_weights: tuple[float, ...] | None = None
  rect_size: tuple[float, float] = (0.1, 0.4)
  stroke_width: tuple[float, float] = (0.03, 0.08)
  stroke_vertices: tuple[int, int] = (4, 10)
  stroke_step: tuple[float, float] = (0.05, 0.2)
  blob_radius: tuple[float, float] = (0.05, 0.2)
  restrict_to_region: bool = False

  def __post_init__(self):
    # Lists (e.g. from a config file) are turned into tuples so that the
    # frozen config stays hashable.
    def store(name, value):
      object.__setattr__(self, name, value)

    lo, hi = _as_pair(self.area_fraction, 'area_fraction', float)
    if not (0.0 <= lo <= hi <= 1.0) or hi == 0.0:
      raise ValueError(
          f'MaskConfig.area_fraction must satisfy 0 <= low <= high <= 1 with high > 0, '
          f'got {self.area_fraction!r}.')
    store('area_fraction', (lo, hi))

    lo, hi = _as_pair(self.num_shapes, 'num_shapes', int)
    if not 1 <= lo <= hi:
      raise ValueError(f'MaskConfig.num_shapes must satisfy 1 <= min <= max, '
                       f'got {self.num_shapes!r}.')
    store('num_shapes', (lo, hi))

    if isinstance(self.kinds, str):
      raise ValueError(f'MaskConfig.kinds must be a sequence of kind names, got {self.kinds!r}.')
    kinds = tuple(self.kinds)
    if not kinds:
      raise ValueError('MaskConfig.kinds must not be empty.')
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
      raise ValueError(f'MaskConfig.kinds has unknown kinds {unknown}; choose from {KINDS}.')
    if len(set(kinds)) != len(kinds):
      raise ValueError(f'MaskConfig.kinds has duplicates: {kinds!r}.')
    store('kinds', kinds)

    if self.kind_weights is not None:
      weights = tuple(float(w) for w in self.kind_weights)
      if len(weights) != len(kinds):
        raise ValueError(f'MaskConfig.kind_weights needs one weight per kind ({len(kinds)}), '
                         f'got {self.kind_weights!r}.')
      if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f'MaskConfig.kind_weights must be non-negative with a positive sum, '
                         f'got {self.kind_weights!r}.')
      store('kind_weights', weights)

    for name, upper in (('rect_size', 1.0), ('stroke_width', 1.0), ('stroke_step', None),
                        ('blob_radius', None)):
      lo, hi = _as_pair(getattr(self, name), name, float)
      if not (0.0 < lo <= hi) or (upper is not None and hi > upper):
        bound = f' <= {upper}' if upper is not None else ''
        raise ValueError(f'MaskConfig.{name} must satisfy 0 < low <= high{bound}, '
                         f'got {getattr(self, name)!r}.')
      store(name, (lo, hi))

    lo, hi = _as_pair(self.stroke_vertices, 'stroke_vertices', int)
    if not 2 <= lo <= hi:
      raise ValueError(f'MaskConfig.stroke_vertices must satisfy 2 <= min <= max, '
                       f'got {self.stroke_vertices!r}.')
    store('stroke_vertices', (lo, hi))

    if not isinstance(self.restrict_to_region, (bool, np.bool_)):
      raise ValueError(f'MaskConfig.restrict_to_region must be a bool, '
                       f'got {self.restrict_to_region!r}.')
    store('restrict_to_region', bool(self.restrict_to_region))

  def kind_cdf(self) -> np.ndarray:
    """Cumulative kind probabilities (last entry exactly 1)."""
    w = np.ones(len(self.kinds)) if self.kind_weights is None else np.asarray(self.kind_weights)
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0
    return cdf


# ----------------------------------------------------------------------------
# Shape painters. Each draws one shape with value 1 onto a [S, S] uint8 canvas,
# centred at (cx, cy) in pixel coordinates; `side` is the reference length that
# the config's fractions are multiplied by (already including the scale).
# ----------------------------------------------------------------------------


def _paint_rectangle(canvas, rng, cfg, cx, cy, side):
  lo, hi = cfg.rect_size
  w, h = rng.uniform(lo, hi, size=2) * side
  w, h = max(w, 1.0), max(h, 1.0)
  s = canvas.shape[0]
  x0 = min(max(int(round(cx - 0.5 * w)), 0), s - 1)
  y0 = min(max(int(round(cy - 0.5 * h)), 0), s - 1)
  x1 = max(int(round(cx + 0.5 * w)), x0 + 1)
  y1 = max(int(round(cy + 0.5 * h)), y0 + 1)
  canvas[y0:y1, x0:x1] = 1


def _paint_stroke(canvas, rng, cfg, cx, cy, side):
  n = int(rng.integers(cfg.stroke_vertices[0], cfg.stroke_vertices[1] + 1))
  width = max(1, int(round(rng.uniform(*cfg.stroke_width) * side)))
  steps = rng.uniform(cfg.stroke_step[0], cfg.stroke_step[1], size=n - 1) * side
  # Heading of each segment: a random start, then a random turn at every vertex.
  turns = rng.uniform(-_STROKE_MAX_TURN, _STROKE_MAX_TURN, size=n - 1)
  turns[0] = rng.uniform(0.0, 2.0 * np.pi)
  heading = np.cumsum(turns)
  pts = np.zeros((n, 2))
  pts[1:, 0] = np.cumsum(steps * np.cos(heading))
  pts[1:, 1] = np.cumsum(steps * np.sin(heading))
  # Centre the stroke (mean of its vertices) on the requested point.
  pts += np.array([cx, cy]) - pts.mean(axis=0)
  pts = np.round(pts).astype(np.int32)
  cv2.polylines(canvas, [pts], False, 1, thickness=width, lineType=cv2.LINE_8)
  # Round joints and ends: a disc of the brush's diameter at every vertex.
  if width > 2:
    r = width // 2
    for x, y in pts:
      cv2.circle(canvas, (int(x), int(y)), r, 1, thickness=-1, lineType=cv2.LINE_8)


def _paint_blob(canvas, rng, cfg, cx, cy, side):
  r0 = rng.uniform(*cfg.blob_radius) * side
  # Radius as a smooth random function of the angle: 1 + sum_k a_k cos(k t + p_k),
  # with amplitudes falling off as 1/k so that the outline stays smooth.
  u = rng.random((2, _BLOB_HARMONICS))
  amp = (0.35 * u[0])[:, None] / _BLOB_K
  phase = (2.0 * np.pi * u[1])[:, None]
  radius = r0 * np.maximum(1.0 + (amp * np.cos(_BLOB_KTHETA + phase)).sum(axis=0), 0.3)
  pts = np.stack([cx + radius * _BLOB_COS, cy + radius * _BLOB_SIN], axis=-1)
  cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)


_PAINTERS = {'rectangle': _paint_rectangle, 'stroke': _paint_stroke, 'blob': _paint_blob}


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def _prepare_region(region: np.ndarray, size_px: int) -> np.ndarray:
  """Region as a contiguous 0/1 uint8 [S, S] array."""
  region = np.asarray(region)
  if region.ndim == 3 and region.shape[-1] == 1:
    region = region[..., 0]
  if region.ndim != 2:
    raise ValueError(f'region must have shape [H, W] or [H, W, 1], got {region.shape}.')
  region = (region != 0).astype(np.uint8)
  if region.shape != (size_px, size_px):
    # Assumes the region covers the same field of view as the image.
    region = cv2.resize(region, (size_px, size_px), interpolation=cv2.INTER_NEAREST)
  return np.ascontiguousarray(region)


def _count_bounds(lo: float, hi: float, n: int) -> tuple[int, int]:
  """Integer hole counts [lo_count, hi_count] whose fraction of n lies in [lo, hi]."""
  eps = 1e-9
  lo_count = math.ceil(lo * n - eps)
  hi_count = math.floor(hi * n + eps)
  if lo_count > hi_count:  # Range narrower than one pixel.
    lo_count = hi_count = min(max(int(round(0.5 * (lo + hi) * n)), 0), n)
  return lo_count, hi_count


def _adjust_count(mask, allowed, target, rng):
  """Grows or trims `mask` in place so that it has exactly `target` holes.

  Pixels are added (removed) in order of their distance to the nearest hole
  (visible pixel), with random tie-breaking; only pixels where `allowed` is
  nonzero are added.
  """
  count = cv2.countNonZero(mask)
  if count == target:
    return
  flat = mask.reshape(-1)
  if count < target:
    if count == 0:
      # Seed a hole at a random allowed pixel to grow from.
      candidates = np.flatnonzero(allowed)
      flat[candidates[rng.integers(candidates.size)]] = 1
      count = 1
    dist = cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_5).reshape(-1)
    candidates = np.flatnonzero((flat == 0) & (allowed.reshape(-1) != 0))
    need = target - count
  else:
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_5).reshape(-1)
    candidates = np.flatnonzero(flat)
    need = count - target
  if need <= 0:
    return
  key = dist[candidates] + 0.5 * rng.random(candidates.size)
  if need < candidates.size:
    chosen = candidates[np.argpartition(key, need - 1)[:need]]
  else:
    chosen = candidates
  flat[chosen] = 1 if count < target else 0


# ----------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------


def sample_mask(rng: np.random.Generator, size_px: int, cfg: MaskConfig,
                region: np.ndarray | None = None) -> np.ndarray:
  """Draws one hole mask.

  Args:
    rng: per-example generator; the mask is a deterministic function of its state.
    size_px: side of the square mask in pixels.
    cfg: mask configuration.
    region: optional uint8 [H, W] or [H, W, 1] mask (nonzero = inside), e.g. a
      lung mask, resized with nearest neighbour if its size differs from
      ``size_px``. Used only when ``cfg.restrict_to_region`` is set: holes are
      then centred in and clipped to the region, and ``cfg.area_fraction`` is
      measured relative to the region's area. A region smaller than
      ``MIN_REGION_FRACTION`` of the image is ignored.

  Returns:
    uint8 array [size_px, size_px, 1]; 1 = hole (to be inpainted), 0 = visible.
  """
  size_px = int(size_px)
  if size_px < 1:
    raise ValueError(f'size_px must be positive, got {size_px}.')
  total = size_px * size_px

  reg = None
  if cfg.restrict_to_region and region is not None:
    reg = _prepare_region(region, size_px)
    if cv2.countNonZero(reg) < MIN_REGION_FRACTION * total:
      reg = None
  if reg is None:
    n_ref = total
    region_idx = None
    ref_side = float(size_px)
  else:
    region_idx = np.flatnonzero(reg)
    n_ref = region_idx.size
    ref_side = math.sqrt(n_ref)

  lo_count, hi_count = _count_bounds(*cfg.area_fraction, n_ref)
  target = int(rng.integers(lo_count, hi_count + 1))
  min_shapes, max_shapes = cfg.num_shapes
  cdf = cfg.kind_cdf()
  painters = [_PAINTERS[k] for k in cfg.kinds]

  mask = np.zeros((size_px, size_px), np.uint8)
  area = 0
  kept = 0
  scale = 1.0
  for _ in range(max_shapes + _EXTRA_ATTEMPTS):
    if area >= lo_count and kept >= min_shapes and (area >= target or kept >= max_shapes):
      break
    # Three uniforms per attempt whatever the kinds, so that the stream does
    # not depend on how many kinds there are. side='right' never selects a
    # kind of weight zero.
    u = rng.random(3)
    painter = painters[int(np.searchsorted(cdf, u[0], side='right'))]
    if region_idx is None:
      cx, cy = u[1] * size_px, u[2] * size_px
    else:
      cy, cx = divmod(int(region_idx[int(u[1] * region_idx.size) % region_idx.size]), size_px)
      cx, cy = cx + 0.5, cy + 0.5
    candidate = mask.copy()
    painter(candidate, rng, cfg, cx, cy, ref_side * scale)
    if reg is not None:
      cv2.bitwise_and(candidate, reg, dst=candidate)
    new_area = cv2.countNonZero(candidate)
    if new_area <= hi_count:
      mask, area = candidate, new_area
      kept += 1
    else:
      scale *= _SHRINK_ON_REJECT

  if not lo_count <= area <= hi_count:
    allowed = reg if reg is not None else np.ones_like(mask)
    _adjust_count(mask, allowed, min(max(target, lo_count), hi_count), rng)

  return mask[..., None]
