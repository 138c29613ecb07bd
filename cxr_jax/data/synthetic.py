"""Procedural chest-radiograph generator (numpy + OpenCV only).

Every example is a frontal (PA-like) radiograph rendered from a randomly
sampled "patient": a torso outline, two lung fields with diaphragm domes, a
cardiac silhouette, mediastinum, spine, posterior/anterior ribs, clavicles,
humeral heads and branching pulmonary vessels.  One of four lesion patterns is
painted into the lungs:

  0 ``normal``                no opacity.
  1 ``bilateral_peripheral``  several hazy ground-glass patches hugging the
                              lateral lung borders of *both* lungs, mostly in
                              the lower zones.
  2 ``focal_lobar``           one dense consolidation confined to a lobe of a
                              single lung, with a sharp fissure-side border.
  3 ``diffuse``               fine reticulo-nodular opacity spread over both
                              lungs, or a perihilar ("bat-wing") haze.

The scene is built in a canonical unit square (x to the right, y downward,
image left = patient right) and mapped to pixels through a random similarity
transform, so anatomy and lesions share one geometry and the returned lung
mask is pixel-aligned with the image.  Acquisition is simulated on an
attenuation map: exposure, quantum (Poisson-like) and electronic noise,
detector blur and a random characteristic curve / gamma / window.

Global intensity statistics must not give the class away, so every image with
lesions is also acquired without them (same patient, exposure and noise) and
its intensities are remapped, monotonically, onto the histogram of that
lesion-free exposure.  Lesions therefore remain brighter than the surrounding
lung, but the image histogram (mean, std, any percentile) is exactly the one of
a healthy patient drawn from a class-independent distribution.  The lesions
themselves are large (patches >= ~9% of the image width) with clear local
contrast, and diffuse disease is patchy as well as fine, so the patterns
survive down-sampling to 64 px.

Rendering is deterministic in ``(seed, index, image_size_px)``.  The scene
geometry depends on ``(seed, index)`` only, so the same example rendered at
two resolutions shows the same patient (noise differs).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

CLASS_NAMES: Tuple[str, ...] = (
    'normal',
    'bilateral_peripheral',
    'focal_lobar',
    'diffuse',
)
NUM_CLASSES = len(CLASS_NAMES)
OBJECT_CLASS_NAMES: Tuple[str, ...] = ('opacity',)

# Distinct stream tags so the label, geometry and noise generators never share
# a random stream.
_TAG_LABEL = 7001
_TAG_SCENE = 7002
_TAG_NOISE = 7003

# Fixed-point precision for OpenCV polygon drawing (coordinates * 2**_SHIFT).
_SHIFT = 4
_FP = float(1 << _SHIFT)
# Outputs smaller than this are rendered at an integer multiple and shrunk.
_MIN_RENDER_PX = 128

# ---------------------------------------------------------------------------
# Canonical anatomy templates: (lateral distance from midline, y) pairs for the
# patient's right lung (drawn on the image left).  The left lung is mirrored
# with a few adjustments.  Entries flagged True are corners (duplicated before
# spline smoothing so they stay sharp).
_RIGHT_LUNG = (
    (0.100, 0.160, False),
    (0.155, 0.128, False),  # apex
    (0.215, 0.145, False),
    (0.280, 0.210, False),
    (0.328, 0.320, False),
    (0.356, 0.460, False),
    (0.372, 0.600, False),
    (0.382, 0.735, True),  # costophrenic angle
    (0.320, 0.700, False),
    (0.240, 0.655, False),  # diaphragm dome
    (0.150, 0.652, False),
    (0.080, 0.690, True),  # cardiophrenic angle
    (0.068, 0.560, False),
    (0.078, 0.420, False),  # hilum
    (0.066, 0.280, False),
)
_BODY = (
    (0.075, -0.10),
    (0.080, 0.040),
    (0.180, 0.075),
    (0.320, 0.090),
    (0.430, 0.110),
    (0.490, 0.160),
    (0.475, 0.250),
    (0.445, 0.420),
    (0.440, 0.600),
    (0.435, 0.800),
    (0.425, 1.100),
)


def label_for_index(seed: int, index: int) -> int:
  """Class of example ``index``: exactly balanced within blocks of four."""
  perm = np.random.default_rng([_TAG_LABEL, int(seed), int(index) // 4])
  return int(perm.permutation(NUM_CLASSES)[int(index) % NUM_CLASSES])


# ---------------------------------------------------------------------------
# Geometry helpers.


def _closed_spline(points: np.ndarray, corners: Sequence[bool], n: int) -> np.ndarray:
  """Closed Catmull-Rom curve through ``points`` (corners are duplicated)."""
  pts = []
  for p, c in zip(points, corners):
    pts.append(p)
    if c:
      pts.append(p)
  p1 = np.asarray(pts, np.float64)
  p0 = np.roll(p1, 1, axis=0)
  p2 = np.roll(p1, -1, axis=0)
  p3 = np.roll(p1, -2, axis=0)
  t = np.linspace(0.0, 1.0, n, endpoint=False)[None, :, None]
  a, b, c2, d = p0[:, None], p1[:, None], p2[:, None], p3[:, None]
  out = 0.5 * (
      2 * b
      + (c2 - a) * t
      + (2 * a - 5 * b + 4 * c2 - d) * t**2
      + (3 * b - a - 3 * c2 + d) * t**3
  )
  return out.reshape(-1, 2)


def _ellipse(cx, cy, ax, ay, angle_deg=0.0, n=40, jitter=None) -> np.ndarray:
  t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
  r = 1.0 if jitter is None else jitter
  x = ax * r * np.cos(t)
  y = ay * r * np.sin(t)
  a = math.radians(angle_deg)
  ca, sa = math.cos(a), math.sin(a)
  return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def _blob_jitter(rng: np.random.Generator, n: int, amount: float) -> np.ndarray:
  """Smooth random radial modulation (low-order Fourier series) for blobs."""
  t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
  r = np.ones(n)
  for k in (2, 3, 4):
    amp, ph = rng.uniform(0, amount / k), rng.uniform(0, 2 * math.pi)
    r += amp * np.cos(k * t + ph)
  return r


class _Canvas:
  """Maps canonical coordinates to pixels and draws on float32 layers."""

  def __init__(self, size: int, matrix: np.ndarray):
    self.size = size
    self.m = matrix  # 2x3, canonical -> canonical (similarity transform)

  def to_px(self, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    q = pts @ self.m[:, :2].T + self.m[:, 2]
    return q * self.size - 0.5

  def _fixed(self, pts) -> np.ndarray:
    return np.round(self.to_px(pts) * _FP).astype(np.int32)

  def layer(self) -> np.ndarray:
    return np.zeros((self.size, self.size), np.float32)

  def fill(self, img, polys, value=1.0):
    cv2.fillPoly(img, [self._fixed(p) for p in polys], (float(value),),
                 lineType=cv2.LINE_8, shift=_SHIFT)
    return img

  def line(self, img, pts, width, value=1.0):
    th = max(1, int(round(width * self.size)))
    cv2.polylines(img, [self._fixed(pts)], False, (float(value),),
                  thickness=th, lineType=cv2.LINE_8, shift=_SHIFT)
    return img

  def blur(self, img, sigma):
    s = sigma * self.size
    if s < 0.3:
      return img
    return cv2.GaussianBlur(img, (0, 0), s, borderType=cv2.BORDER_REPLICATE)

  def wide_blur(self, img, sigma):
    """Large Gaussian blur done at reduced resolution (fast)."""
    s = sigma * self.size
    f = max(1, int(s // 3))
    if f <= 1:
      return self.blur(img, sigma)
    small = cv2.resize(img, (self.size // f, self.size // f), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), s / f, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (self.size, self.size), interpolation=cv2.INTER_LINEAR)


def _keep_largest(mask: np.ndarray, k: int) -> np.ndarray:
  """Keeps the k largest 8-connected components of a binary uint8 mask."""
  n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
  if n - 1 <= k:
    return mask
  areas = stats[1:, cv2.CC_STAT_AREA]
  keep = 1 + np.argsort(areas)[::-1][:k]
  lut = np.zeros(n, np.uint8)
  lut[keep] = 1
  return lut[lab]


def _bbox(mask: np.ndarray):
  rows = np.flatnonzero(mask.any(axis=1))
  if rows.size == 0:
    return None
  cols = np.flatnonzero(mask.any(axis=0))
  s = float(mask.shape[0])
  return [rows[0] / s, cols[0] / s, (rows[-1] + 1) / s, (cols[-1] + 1) / s]


# ---------------------------------------------------------------------------
# Scene sampling (resolution independent; fixed number of draws per branch).


def _sample_patient(rng: np.random.Generator) -> Dict:
  p = {}
  p['wf'] = rng.uniform(0.88, 1.04)  # thorax width factor
  p['hf'] = rng.uniform(0.90, 1.07)  # lung height factor
  p['apex_y'] = rng.uniform(0.10, 0.15)
  p['dome_shift'] = rng.uniform(-0.03, 0.03)
  p['left_dome_drop'] = rng.uniform(0.01, 0.04)
  p['heart_w'] = rng.uniform(0.15, 0.19)
  p['heart_h'] = rng.uniform(0.115, 0.145)
  p['heart_dx'] = rng.uniform(0.05, 0.08)
  p['heart_ang'] = rng.uniform(15, 30)
  p['rot'] = rng.uniform(-6.0, 6.0)
  p['scale'] = rng.uniform(0.92, 1.06)
  p['shift'] = rng.uniform(-0.035, 0.035, size=2)
  p['rib_gap'] = rng.uniform(0.052, 0.062)
  p['rib_w'] = rng.uniform(0.016, 0.022)
  p['lung_jit'] = rng.normal(0, 0.006, size=(2, len(_RIGHT_LUNG), 2))
  p['air'] = rng.uniform(0.42, 0.76)  # how much the lungs lower attenuation
  p['bone'] = rng.uniform(0.8, 1.2)
  p['stomach'] = rng.uniform(0.0, 1.0) < 0.6
  p['stomach_xy'] = rng.uniform([0.15, 0.02], [0.26, 0.07])
  p['vessel_seed'] = int(rng.integers(0, 2**31 - 1))
  p['tissue'] = rng.uniform(0.85, 1.2)  # soft-tissue thickness (habitus)
  return p


def _lung_outline(p: Dict, side: int) -> np.ndarray:
  """Canonical polygon of one lung; side=-1 image-left, +1 image-right."""
  tpl = np.array([[d, y] for d, y, _ in _RIGHT_LUNG], np.float64)
  corners = [c for *_, c in _RIGHT_LUNG]
  if side > 0:  # patient left: lower dome, narrower cardiac side
    low = tpl[:, 1] > 0.6
    tpl[low, 1] += p['left_dome_drop'] * np.clip((tpl[low, 1] - 0.6) / 0.1, 0, 1)
    tpl[11] = (0.14, 0.71)
    tpl[12] = (0.10, 0.56)
    tpl[13] = (0.09, 0.42)
  tpl = tpl + p['lung_jit'][0 if side < 0 else 1]
  top = 0.128
  d = tpl[:, 0] * p['wf']
  y = p['apex_y'] + (tpl[:, 1] - top) * p['hf']
  low = tpl[:, 1] > 0.6
  y[low] += p['dome_shift']
  pts = np.stack([0.5 + side * d, y], axis=1)
  return _closed_spline(pts, corners, 10)


def _lateral_wall(outline: np.ndarray, side: int, y: float) -> float:
  """Most lateral x of the lung outline near height y."""
  near = np.abs(outline[:, 1] - y) < 0.02
  xs = outline[near, 0] if near.any() else outline[:, 0]
  return float(xs.max() if side > 0 else xs.min())


def _lung_extent(outline: np.ndarray) -> Tuple[float, float]:
  return float(outline[:, 1].min()), float(outline[:, 1].max())


# ---------------------------------------------------------------------------
# Anatomy rendering.


def _draw_anatomy(cv: _Canvas, p: Dict, lungs: List[np.ndarray]):
  """Returns (attenuation map, lung mask uint8, lung soft mask, heart poly)."""
  wf = p['wf']
  body_pts = np.array([[0.5 - d * wf, y] for d, y in _BODY]
                      + [[0.5 + d * wf, y] for d, y in reversed(_BODY)])
  body = cv.fill(cv.layer(), [body_pts])
  # Tissue path length: thickest centrally, thinner at the chest wall.
  xx = np.arange(cv.size, dtype=np.float32)[None, :]
  yy = np.arange(cv.size, dtype=np.float32)[:, None]
  mi = np.linalg.inv(np.vstack([cv.m, [0, 0, 1]]))[:2]
  xc = ((xx + 0.5) * mi[0, 0] + (yy + 0.5) * mi[0, 1]) / cv.size + mi[0, 2]
  prof = 1.0 - 0.45 * np.clip(np.abs(xc - 0.5) / (0.45 * wf), 0, 1) ** 2
  soft = (0.55 * cv.blur(body, 0.004) + 0.45 * cv.wide_blur(body, 0.05)) * prof

  heart_y = p['apex_y'] + 0.47 * p['hf'] + p['dome_shift']
  heart = _ellipse(0.5 + p['heart_dx'] * wf, heart_y, p['heart_w'] * wf,
                   p['heart_h'], p['heart_ang'], n=48)
  knob = _ellipse(0.5 + 0.06 * wf, p['apex_y'] + 0.17 * p['hf'], 0.035, 0.03, 0, n=24)

  lung_u8 = np.zeros((cv.size, cv.size), np.uint8)
  cv2.fillPoly(lung_u8, [cv._fixed(l) for l in lungs], (1,), cv2.LINE_8, _SHIFT)
  cv2.fillPoly(lung_u8, [cv._fixed(heart), cv._fixed(knob)], (0,), cv2.LINE_8, _SHIFT)
  lung_u8 = _keep_largest(lung_u8, 2)
  lung_f = lung_u8.astype(np.float32)
  lung_soft = cv.blur(lung_f, 0.004)
  # Deeper air centrally, thinner towards the chest wall and apices.
  air = p['air'] * (0.45 * lung_soft + 0.55 * cv.wide_blur(lung_f, 0.035) * 1.6)
  air = np.minimum(air, p['air'] * 1.05)

  att = soft * p['tissue'] - air

  # Trachea and main bronchi (air column).
  ty = p['apex_y'] + 0.20 * p['hf']
  trach = cv.line(cv.layer(), [(0.5, -0.05), (0.5, ty)], 0.032)
  cv.line(trach, [(0.5, ty), (0.5 - 0.07 * wf, ty + 0.06)], 0.018)
  cv.line(trach, [(0.5, ty), (0.5 + 0.075 * wf, ty + 0.07)], 0.018)
  att -= 0.28 * cv.blur(trach, 0.006)

  if p['stomach']:
    sx, sy = p['stomach_xy']  # gastric bubble under the left dome
    cy = _lung_extent(lungs[1])[1] + sy
    gas = cv.fill(cv.layer(), [_ellipse(0.5 + sx * wf, cy, 0.055, 0.035, 0, 24)])
    att -= 0.3 * cv.blur(gas, 0.01)

  # ---- bones -------------------------------------------------------------
  bone = cv.layer()
  b = p['bone']
  # Spine: column plus vertebral bodies and pedicles.
  cv.fill(bone, [np.array([[0.5 - 0.036, -0.1], [0.5 + 0.036, -0.1],
                           [0.5 + 0.04, 1.1], [0.5 - 0.04, 1.1]])], 0.10 * b)
  gap = p['rib_gap'] * p['hf']
  y = p['apex_y'] - 0.06
  verts = []
  peds = []
  while y < 1.05:
    verts.append(np.array([[0.5 - 0.032, y + 0.004], [0.5 + 0.032, y + 0.004],
                           [0.5 + 0.034, y + gap - 0.010], [0.5 - 0.034, y + gap - 0.010]]))
    for s in (-1, 1):
      peds.append(_ellipse(0.5 + s * 0.024, y + 0.35 * gap, 0.007, 0.011, 0, 12))
    y += gap
  cv.fill(bone, verts, 0.10 * b)
  cv.fill(bone, peds, 0.12 * b)

  # Ribs: posterior ribs arch laterally from the spine; fainter anterior
  # ribs slope down towards the sternum.  Cortex is denser than medulla.
  cortex, medulla, anterior = cv.layer(), cv.layer(), cv.layer()
  rw = p['rib_w']
  u = np.linspace(0.0, 1.0, 18)
  ua = np.linspace(0.0, 1.0, 10)
  for side_i, side in enumerate((-1, 1)):
    lung = lungs[side_i]
    for i in range(10):
      y0 = p['apex_y'] + 0.005 + i * gap
      dend = abs(_lateral_wall(lung, side, y0 + 0.05) - 0.5) + 0.035
      d = 0.03 + u * (dend - 0.03)
      yy = (y0 - 0.03 * np.sin(math.pi * np.minimum(u * 1.3, 1.0))
            + (0.05 + 0.008 * i) * u**2.0)
      pts = np.stack([0.5 + side * d, yy], 1)
      cv.line(cortex, pts, rw, 1.0)
      cv.line(medulla, pts[2:-1], rw * 0.45, 1.0)
      if i < 7:
        da = dend - 0.01 - ua * (dend - 0.16)
        ya = y0 + 0.06 + ua * 0.085 + 0.02 * np.sin(math.pi * ua)
        cv.line(anterior, np.stack([0.5 + side * da, ya], 1), rw * 0.9, 1.0)
  bone += 0.13 * b * (cortex - 0.35 * medulla + 0.5 * anterior)

  # Clavicles and humeral heads.
  for side in (-1, 1):
    cl = np.array([[0.5 + side * 0.045 * wf, p['apex_y'] + 0.055],
                   [0.5 + side * 0.14 * wf, p['apex_y'] + 0.035],
                   [0.5 + side * 0.25 * wf, p['apex_y'] + 0.005],
                   [0.5 + side * 0.33 * wf, p['apex_y'] - 0.025]])
    cl = _closed_spline(cl, [False] * 4, 6)[: 6 * 3]  # open part of spline
    cv.line(bone, cl, 0.026, 0.3 * b)
    cv.fill(bone, [_ellipse(0.5 + side * 0.455 * wf, p['apex_y'] + 0.02,
                            0.065, 0.07, 0, 32)], 0.22 * b)

  att += cv.blur(bone, 0.004) * np.clip(soft * 1.5, 0, 1)

  # ---- pulmonary vessels (branching, tapering) ---------------------------
  vrng = np.random.default_rng(p['vessel_seed'])
  ves = cv.layer()
  for side_i, side in enumerate((-1, 1)):
    lo, hi = _lung_extent(lungs[side_i])
    hx = 0.5 + side * 0.095 * wf
    hy = lo + 0.45 * (hi - lo)
    cv.fill(ves, [_ellipse(hx, hy, 0.028, 0.05, 0, 16)], 1.3)  # hilar vessels
    for k in range(8):
      ang = math.radians(-75 + 160 * (k + vrng.uniform(-0.3, 0.3)) / 7.0)
      stack = [(hx, hy, ang, 0.10, 0.010, 0)]
      while stack:
        x0, y0_, a, ln, w, depth = stack.pop()
        bend = vrng.uniform(-0.25, 0.25)
        xm = x0 + side * 0.5 * ln * math.cos(a + bend)
        ym = y0_ + 0.5 * ln * math.sin(a + bend)
        x1 = xm + side * 0.5 * ln * math.cos(a - bend)
        y1 = ym + 0.5 * ln * math.sin(a - bend)
        cv.line(ves, [(x0, y0_), (xm, ym), (x1, y1)], w, 1.0 - 0.25 * depth)
        if depth < 2:
          for da in (-0.5, 0.45):
            stack.append((x1, y1, a + da + vrng.uniform(-0.2, 0.2),
                          ln * 0.72, w * 0.6, depth + 1))
  att += 0.14 * cv.blur(ves, 0.004) * lung_soft
  return att, lung_u8, lung_soft, heart


# ---------------------------------------------------------------------------
# Lesions.  Each returns (density layer, list of binary support masks).


# Vertical slots (fraction of lung height) for peripheral patches, lowest
# first; patches fill slots in this order so the lower zones dominate.
_PERIPHERAL_SLOTS = ((0.72, 0.90), (0.52, 0.68), (0.28, 0.46))


def _lesions_bilateral(cv, rng, lungs, lung_u8):
  dens = cv.layer()
  supports = []
  for side_i, side in enumerate((-1, 1)):
    lo, hi = _lung_extent(lungs[side_i])
    n = int(rng.integers(2, 4))
    for j, (z0, z1) in enumerate(_PERIPHERAL_SLOTS):
      # The same random draws happen for every slot (stable streams).
      zone = rng.uniform(z0, z1)
      r = rng.uniform(0.05, 0.07)
      ry = r * rng.uniform(1.0, 1.4)
      ang = rng.uniform(-30, 30)
      inset = rng.uniform(0.7, 1.0)
      amp = rng.uniform(0.38, 0.5)
      jit = rng.uniform(0.25, 0.5)
      jseed = int(rng.integers(0, 2**31 - 1))
      if j >= n:
        continue
      y = lo + zone * (hi - lo)
      xw = _lateral_wall(lungs[side_i], side, y)
      x = xw - side * r * inset
      poly = _ellipse(x, y, r, ry, ang, 36,
                      _blob_jitter(np.random.default_rng(jseed), 36, jit))
      m = cv.fill(cv.layer(), [poly])
      sup = (m > 0) & (lung_u8 > 0)
      if sup.sum() < 4:
        continue
      # Ground glass: soft edge and mottled interior.
      dens += amp * cv.blur(m, 0.014)
      supports.append(sup)
  mot = _mottle(cv, rng)
  dens *= 0.8 + 0.4 * mot
  return dens, supports


def _mottle(cv, rng):
  """Smooth noise field in [0, 1] from a coarse random grid (S independent)."""
  g = rng.uniform(0, 1, size=(12, 12)).astype(np.float32)
  f = cv2.resize(g, (cv.size, cv.size), interpolation=cv2.INTER_CUBIC)
  return np.clip(f, 0, 1)


def _lesions_focal(cv, rng, lungs, lung_u8, p):
  side_i = int(rng.integers(0, 2))
  side = (-1, 1)[side_i]
  lobe = int(rng.integers(0, 3))
  if side > 0 and lobe == 1:
    lobe = 2  # no middle lobe on the patient's left
  tilt = rng.uniform(-0.03, 0.03)
  fis = rng.uniform(0.38, 0.48)
  obl = rng.uniform(0.55, 0.65)
  cover = rng.uniform(0.65, 1.0)
  amp = rng.uniform(0.5, 0.65)
  jseed = int(rng.integers(0, 2**31 - 1))
  lo, hi = _lung_extent(lungs[side_i])
  h = hi - lo
  med = 0.5 + side * 0.02
  lat = 0.5 + side * 0.55
  yf = lo + fis * h
  yo = lo + obl * h
  big = 2.0
  if lobe == 0:  # upper lobe: above the (minor/oblique) fissure
    half = [(med, yf - tilt), (lat, yf + tilt + 0.04), (lat, -big), (med, -big)]
  elif lobe == 1:  # right middle lobe: medial wedge between fissures
    half = [(med, yf - tilt), (lat, yf + tilt + 0.02), (lat, yo + 0.2), (med, yo + 0.12)]
  else:  # lower lobe: below an oblique line rising medially
    half = [(med, yo - 0.06), (lat, yo + 0.07), (lat, big), (med, big)]
  half_m = cv.fill(cv.layer(), [np.array(half)])
  # Restrict to part of the lobe with an irregular blob centred in it.
  ys, xs = np.nonzero((half_m > 0) & (lung_u8 > 0))
  if ys.size == 0:  # should not happen; fall back to the whole lung
    half_m = lung_u8.astype(np.float32)
    ys, xs = np.nonzero(lung_u8)
  inv = np.linalg.inv(np.vstack([cv.m, [0, 0, 1]]))
  cpx = np.array([xs.mean() + 0.5, ys.mean() + 0.5]) / cv.size
  c = inv[:2, :2] @ cpx + inv[:2, 2]
  ext = max(np.ptp(xs), np.ptp(ys)) / cv.size
  jr = _blob_jitter(np.random.default_rng(jseed), 40, 0.35)
  blob = _ellipse(c[0], c[1], ext * 0.6 * cover + 0.03, ext * 0.55 * cover + 0.03,
                  0, 40, jr)
  blob_m = cv.fill(cv.layer(), [blob])
  sup = (half_m > 0) & (blob_m > 0) & (lung_u8 > 0)
  if not sup.any():  # blob missed a very concave lobe: take the whole lobe
    blob_m = np.ones_like(blob_m)
    sup = (half_m > 0) & (lung_u8 > 0)
  dens = amp * cv.blur(half_m, 0.003) * cv.blur(blob_m, 0.012)
  # Air bronchograms: a few dark branching lines inside the consolidation.
  br = cv.layer()
  for k in range(4):
    a = rng.uniform(0, 2 * math.pi)
    ln = rng.uniform(0.04, 0.09)
    cv.line(br, [(c[0], c[1]), (c[0] + ln * math.cos(a), c[1] + ln * math.sin(a))], 0.008)
  mot = _mottle(cv, rng)
  dens = dens * (0.88 + 0.24 * mot) - 0.15 * amp * cv.blur(br, 0.003) * (dens > 0.2 * amp)
  return dens, [sup]


def _lesions_diffuse(cv, rng, lungs, lung_u8, p):
  perihilar = rng.uniform() < 0.35
  dens = cv.layer()
  n_nod = 110
  supports = []
  amp = rng.uniform(0.2, 0.28)
  haze = rng.uniform(0.03, 0.07)
  reticular = cv.layer()
  # Coarse patchiness: nodules and haze cluster, so the pattern keeps
  # mid-frequency structure even after blurring / down-sampling.
  patchy = 0.35 + 1.3 * _mottle(cv, rng)
  for side_i, side in enumerate((-1, 1)):
    lo, hi = _lung_extent(lungs[side_i])
    xin = 0.5 + side * 0.07
    xout = _lateral_wall(lungs[side_i], side, lo + 0.6 * (hi - lo))
    xs = rng.uniform(min(xin, xout), max(xin, xout), n_nod)
    ys = rng.uniform(lo, hi, n_nod)
    rs = rng.uniform(0.009, 0.017, n_nod)
    # Reticular lines: short random segments.
    seg = rng.uniform(0, 1, size=(70, 4))
    nod = cv.layer()
    for x, y, r in zip(xs, ys, rs):
      (cx, cy), = cv.to_px([(x, y)])
      cv2.circle(nod, (int(round(cx * _FP)), int(round(cy * _FP))),
                 max(1, int(round(r * cv.size * _FP))), (1.0,), -1, cv2.LINE_8, _SHIFT)
    for s in seg:
      x0 = min(xin, xout) + s[0] * abs(xout - xin)
      y0 = lo + s[1] * (hi - lo)
      a = s[2] * 2 * math.pi
      ln = 0.03 + 0.04 * s[3]
      cv.line(reticular, [(x0, y0), (x0 + ln * math.cos(a), y0 + ln * math.sin(a))],
              0.005)
    hxy = (0.5 + side * 0.11 * p['wf'], lo + 0.45 * (hi - lo))
    if perihilar:
      # Weight decays away from the hilum ("bat-wing").
      yy, xx = np.mgrid[0:cv.size, 0:cv.size].astype(np.float32)
      (hx, hy), = cv.to_px([hxy])
      d2 = ((xx - hx) ** 2 + (yy - hy) ** 2) / (0.15 * cv.size * p['scale']) ** 2
      w = np.exp(-0.5 * d2).astype(np.float32)
    else:
      w = np.ones((cv.size, cv.size), np.float32)
    side_mask = np.zeros_like(lung_u8)
    half = np.array([(0.5, -1), (0.5 + side * 2, -1), (0.5 + side * 2, 2), (0.5, 2)])
    cv2.fillPoly(side_mask, [cv._fixed(half)], (1,), cv2.LINE_8, _SHIFT)
    lm = (lung_u8 > 0) & (side_mask > 0)
    dens += w * patchy * (amp * cv.blur(nod, 0.004) + haze * (1.6 if perihilar else 1.0)) * lm
    sup = lm & (w > 0.3)
    supports.append(sup)
  dens += amp * 0.8 * cv.blur(reticular, 0.003) * (dens > 0)
  return dens, supports


# ---------------------------------------------------------------------------
# Acquisition / display.


def _acquire(att: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """Attenuation map -> display intensities in [0, 1] (float32)."""
  k = rng.uniform(0.9, 1.7)  # beam quality: attenuation per unit of tissue
  t = np.exp(-k * np.maximum(att, 0.0))
  blur_px = rng.uniform(0.2, 1.2) * size / 256.0
  if blur_px > 0.3:
    t = cv2.GaussianBlur(t, (0, 0), blur_px)
  photons = math.exp(rng.uniform(math.log(400), math.log(4000))) * (256.0 / size) ** 2
  noise = rng.standard_normal(t.shape, dtype=np.float32)
  t = t + noise * np.sqrt(t / photons)
  a = -np.log(np.maximum(t, 1e-4)) / k  # back to (noisy) attenuation units
  # Characteristic curve with random window centre / width.
  centre = rng.uniform(0.4, 0.72)
  width = rng.uniform(0.18, 0.32)
  v = 1.0 / (1.0 + np.exp(-(a - centre) / width))
  v0 = 1.0 / (1.0 + math.exp(centre / width))
  v1 = 1.0 / (1.0 + math.exp(-(1.6 - centre) / width))
  v = np.clip((v - v0) / (v1 - v0), 0.0, 1.0)
  v = v ** rng.uniform(0.6, 1.6)
  lo = rng.uniform(0.0, 0.18)
  hi = rng.uniform(0.78, 1.0)
  v = lo + (hi - lo) * v
  v = v + rng.standard_normal(t.shape, dtype=np.float32) * rng.uniform(0.003, 0.015)
  return np.clip(v, 0.0, 1.0).astype(np.float32)


def _match_histogram(src: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """Monotone remap of ``src`` so its value distribution equals ``ref``'s."""
  # 16-bit keys make the stable sort a fast radix sort.
  keys = (np.clip(src, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
  order = np.argsort(keys, axis=None, kind='stable')
  out = np.empty(src.size, np.float32)
  out[order] = np.sort(ref, axis=None)
  return out.reshape(src.shape)


def _shrink(img: np.ndarray, factor: int) -> np.ndarray:
  if factor == 1:
    return img
  n = img.shape[0] // factor
  return cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA)


def _to_uint8(v: np.ndarray) -> np.ndarray:
  return np.clip(v * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Public API.


def render_example(seed: int, index: int, image_size_px: int) -> Dict[str, np.ndarray]:
  """Renders example ``index`` of the synthetic dataset with base ``seed``.

  Returns a dict with ``image`` (uint8 [S,S,1]), ``lung_mask`` (uint8
  [S,S,1] in {0,1}), ``label`` (int in [0, 4)) and ``bboxes`` (float32
  [N,4], normalized ymin, xmin, ymax, xmax; one per opacity).
  """
  out_size = int(image_size_px)
  if out_size < 16:
    raise ValueError(f'image_size_px must be >= 16, got {out_size}')
  # Thin structures (vessels, rib cortex, nodules) alias badly when drawn
  # straight into a tiny grid, so small outputs are supersampled.
  factor = max(1, -(-_MIN_RENDER_PX // out_size))
  size = out_size * factor
  label = label_for_index(seed, index)
  rng = np.random.default_rng([_TAG_SCENE, int(seed), int(index)])
  p = _sample_patient(rng)

  a = math.radians(p['rot'])
  rs = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * p['scale']
  c = np.array([0.5, 0.5])
  m = np.concatenate([rs, (c - rs @ c + p['shift'])[:, None]], axis=1)
  cv = _Canvas(size, m)

  lungs = [_lung_outline(p, -1), _lung_outline(p, 1)]
  att, lung_u8, lung_soft, _ = _draw_anatomy(cv, p, lungs)

  lesion_rng = np.random.default_rng([_TAG_SCENE, int(seed), int(index), label])
  if label == 0:
    dens, supports = None, []
  elif label == 1:
    dens, supports = _lesions_bilateral(cv, lesion_rng, lungs, lung_u8)
  elif label == 2:
    dens, supports = _lesions_focal(cv, lesion_rng, lungs, lung_u8, p)
  else:
    dens, supports = _lesions_diffuse(cv, lesion_rng, lungs, lung_u8, p)
  noise_key = [_TAG_NOISE, int(seed), int(index), out_size]
  clean = _shrink(_acquire(att, np.random.default_rng(noise_key), size), factor)
  if dens is None:
    image = _to_uint8(clean)
  else:
    # Same patient, same exposure and noise, plus the lesions.  The
    # result is remapped (monotonically) onto the intensity distribution
    # of the lesion-free exposure: lesions stay brighter than the
    # surrounding lung, but the image histogram - and with it every
    # global statistic - is exactly that of a lesion-free patient.
    sick = _acquire(att + dens * lung_soft, np.random.default_rng(noise_key), size)
    image = _to_uint8(_match_histogram(_shrink(sick, factor), clean))
  if factor > 1:
    lung_u8 = (_shrink(lung_u8.astype(np.float32), factor) >= 0.5).astype(np.uint8)

  boxes = [b for b in (_bbox(s) for s in supports) if b is not None]
  bboxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return {
      'image': image[:, :, None],
      'lung_mask': lung_u8[:, :, None],
      'label': label,
      'bboxes': np.clip(bboxes, 0.0, 1.0),
  }


def render_range(seed: int, indices: Sequence[int],
                 image_size_px: int) -> List[Dict[str, np.ndarray]]:
  """Renders several examples; a picklable unit of work for process pools."""
  return [render_example(seed, i, image_size_px) for i in indices]


def init_render_worker() -> None:
  """Process-pool initializer: one OpenCV thread per rendering process."""
  cv2.setNumThreads(1)


def contact_sheet(seed: int, indices: Sequence[int], image_size_px: int,
                  cols: int = 4, draw_boxes: bool = True) -> np.ndarray:
  """Tiles renders into one uint8 BGR image (boxes in red, mask contour green)."""
  tiles = []
  for i in indices:
    ex = render_example(seed, i, image_size_px)
    rgb = cv2.cvtColor(ex['image'][:, :, 0], cv2.COLOR_GRAY2BGR)
    if draw_boxes:
      cnts, _ = cv2.findContours(ex['lung_mask'][:, :, 0], cv2.RETR_EXTERNAL,
                                 cv2.CHAIN_APPROX_SIMPLE)
      cv2.drawContours(rgb, cnts, -1, (0, 160, 0), 1)
      for b in ex['bboxes']:
        y0, x0, y1, x1 = (b * image_size_px).astype(int)
        cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 255), 1)
    cv2.putText(rgb, CLASS_NAMES[ex['label']], (3, 12), cv2.FONT_HERSHEY_SIMPLEX,
                0.4, (0, 255, 255), 1, cv2.LINE_AA)
    tiles.append(rgb)
  while len(tiles) % cols:
    tiles.append(np.zeros_like(tiles[0]))
  rows = [np.concatenate(tiles[r:r + cols], axis=1) for r in range(0, len(tiles), cols)]
  return np.concatenate(rows, axis=0)
