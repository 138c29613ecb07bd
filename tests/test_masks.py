"""Tests for cxr_jax.data.masks (random inpainting hole masks)."""

import dataclasses

import cv2
import numpy as np
import pytest

from cxr_jax.data import masks

DEFAULT = masks.MaskConfig()
NARROW = masks.MaskConfig(area_fraction=(0.2, 0.25))


def _ellipse_region(size, channel=False):
  """A centred filled ellipse covering about 30% of a size x size image."""
  region = np.zeros((size, size), np.uint8)
  axes = (int(round(0.38 * size)), int(round(0.25 * size)))  # pi*0.38*0.25 ~ 0.30
  cv2.ellipse(region, (size // 2, size // 2), axes, 0, 0, 360, 1, thickness=-1)
  return region[..., None] if channel else region


def _draw(cfg, size, n, seed=0, region=None):
  rng = np.random.default_rng(seed)
  return [masks.sample_mask(rng, size, cfg, region) for _ in range(n)]


def _assert_fractions_in_range(ms, cfg, denom):
  lo, hi = cfg.area_fraction
  frac = np.array([m.sum(dtype=np.int64) for m in ms]) / denom
  assert frac.min() >= lo - 1e-12, (frac.min(), cfg)
  assert frac.max() <= hi + 1e-12, (frac.max(), cfg)
  return frac


def _check_format(m, size):
  assert m.shape == (size, size, 1)
  assert m.dtype == np.uint8
  assert set(np.unique(m).tolist()) <= {0, 1}


# ----------------------------------------------------------------------------
# Area range.
# ----------------------------------------------------------------------------

_CONFIGS = {
    'default': DEFAULT,
    'narrow': NARROW,
    'rectangle': masks.MaskConfig(kinds=('rectangle',)),
    'stroke': masks.MaskConfig(kinds=('stroke',)),
    'blob': masks.MaskConfig(kinds=('blob',)),
    'narrow_stroke': masks.MaskConfig(kinds=('stroke',), area_fraction=(0.2, 0.25)),
}


@pytest.mark.parametrize('name', list(_CONFIGS))
@pytest.mark.parametrize('size,n', [(64, 1000), (224, 300)])
def test_area_fraction_always_in_range(name, size, n):
  cfg = _CONFIGS[name]
  ms = _draw(cfg, size, n, seed=size)
  for m in ms[:20]:
    _check_format(m, size)
  frac = _assert_fractions_in_range(ms, cfg, size * size)
  lo, hi = cfg.area_fraction
  # The range is used, not just one end of it.
  assert frac.max() - frac.min() > 0.5 * (hi - lo)


def test_default_area_spreads_over_range():
  frac = _assert_fractions_in_range(_draw(DEFAULT, 64, 1000), DEFAULT, 64 * 64)
  assert 0.2 < frac.mean() < 0.3
  assert np.mean(frac < 0.2) > 0.1 and np.mean(frac > 0.3) > 0.1


def test_extreme_ranges():
  full = masks.MaskConfig(area_fraction=(1.0, 1.0))
  for m in _draw(full, 32, 5):
    assert m.all()
  big = masks.MaskConfig(area_fraction=(0.8, 0.9))
  _assert_fractions_in_range(_draw(big, 64, 50), big, 64 * 64)
  # Narrower than one pixel at 16 px (256 pixels): the nearest count is used.
  tiny = masks.MaskConfig(area_fraction=(0.3001, 0.3002))
  for m in _draw(tiny, 16, 10):
    assert m.sum() == round(0.30015 * 256)


def test_repair_grows_to_range_when_shapes_cannot_reach_it(monkeypatch):
  # Tiny rectangles and a high floor: greedy drawing stalls far below 60%
  # even with the extra attempts, so the distance-transform growth has to make
  # up the rest.
  calls = []
  original = masks._adjust_count  # pylint: disable=protected-access

  def spy(*args):
    calls.append(int(args[0].sum()))
    return original(*args)

  monkeypatch.setattr(masks, '_adjust_count', spy)
  cfg = masks.MaskConfig(area_fraction=(0.6, 0.7), num_shapes=(1, 1), kinds=('rectangle',),
                         rect_size=(0.01, 0.02))
  ms = _draw(cfg, 64, 50)
  assert len(calls) == 50 and max(calls) < 0.6 * 64 * 64
  _assert_fractions_in_range(ms, cfg, 64 * 64)
  # Growth thickens the existing holes into a few large regions, no speckle:
  # at most one component per drawn rectangle, and usually far fewer.
  n_components = [cv2.connectedComponents(m[..., 0], connectivity=8)[0] - 1 for m in ms]
  assert max(n_components) <= 1 + masks._EXTRA_ATTEMPTS  # pylint: disable=protected-access
  assert np.median(n_components) <= 5


def test_adjust_count_trims_and_grows_exactly():
  rng = np.random.default_rng(0)
  mask = np.zeros((40, 40), np.uint8)
  mask[5:30, 5:30] = 1  # 625 holes
  allowed = np.ones_like(mask)
  masks._adjust_count(mask, allowed, 400, rng)  # pylint: disable=protected-access
  assert mask.sum() == 400
  # Trimming removes the border first: the centre of the square survives.
  assert mask[17, 17] == 1 and mask[5, 5] == 0
  masks._adjust_count(mask, allowed, 900, rng)  # pylint: disable=protected-access
  assert mask.sum() == 900


# ----------------------------------------------------------------------------
# Determinism.
# ----------------------------------------------------------------------------


def test_same_seed_same_mask_different_seeds_differ():
  for size in (64, 224):
    a = _draw(DEFAULT, size, 20, seed=7)
    b = _draw(DEFAULT, size, 20, seed=7)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
  singles = [masks.sample_mask(np.random.default_rng(s), 64, DEFAULT) for s in range(40)]
  flat = np.stack([m.reshape(-1) for m in singles])
  n_same = sum(np.array_equal(flat[i], flat[j]) for i in range(40) for j in range(i + 1, 40))
  assert n_same == 0
  # Masks of different seeds overlap about as much as independent ones would.
  iou = [(flat[i] & flat[i + 1]).sum() / (flat[i] | flat[i + 1]).sum() for i in range(39)]
  assert np.mean(iou) < 0.4


def test_same_seed_same_mask_with_region():
  cfg = masks.MaskConfig(restrict_to_region=True)
  region = _ellipse_region(128)
  a = masks.sample_mask(np.random.default_rng(3), 128, cfg, region)
  b = masks.sample_mask(np.random.default_rng(3), 128, cfg, region)
  np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------
# Region restriction.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('cfg_kwargs', [{}, {'area_fraction': (0.2, 0.25)},
                                        {'kinds': ('stroke',)}])
@pytest.mark.parametrize('size,n', [(64, 300), (224, 100)])
def test_restrict_to_region(cfg_kwargs, size, n):
  cfg = masks.MaskConfig(restrict_to_region=True, **cfg_kwargs)
  region = _ellipse_region(size, channel=(size == 64))
  region_area = int(region.sum())
  assert 0.27 < region_area / size**2 < 0.33
  ms = _draw(cfg, size, n, region=region)
  r = region.reshape(size, size)
  for m in ms:
    _check_format(m, size)
    assert not np.any(m[..., 0] & (1 - r)), 'hole outside the region'
  _assert_fractions_in_range(ms, cfg, region_area)


def test_region_accepts_0_255_and_other_resolution():
  cfg = masks.MaskConfig(restrict_to_region=True)
  region = _ellipse_region(256) * 255
  m = masks.sample_mask(np.random.default_rng(0), 128, cfg, region)
  expected_region = _ellipse_region(128)
  _check_format(m, 128)
  # Nearest-neighbour resize of the 256 px ellipse differs from the 128 px one
  # only along the outline.
  outside = m[..., 0] & (1 - cv2.dilate(expected_region, np.ones((3, 3), np.uint8)))
  assert not outside.any()


def test_region_ignored_without_flag():
  region = _ellipse_region(64)
  a = masks.sample_mask(np.random.default_rng(1), 64, DEFAULT, region)
  b = masks.sample_mask(np.random.default_rng(1), 64, DEFAULT, None)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('kind', ['empty', 'tiny'])
def test_empty_or_tiny_region_falls_back_to_whole_image(kind):
  size = 64
  cfg = masks.MaskConfig(restrict_to_region=True)
  region = np.zeros((size, size), np.uint8)
  if kind == 'tiny':
    region[:5, :5] = 1  # 25 / 4096 = 0.6% of the image
  ms = _draw(cfg, size, 200, region=region)
  _assert_fractions_in_range(ms, cfg, size * size)
  # Same masks as without any region.
  for m, ref in zip(ms[:20], _draw(DEFAULT, size, 20)):
    np.testing.assert_array_equal(m, ref)
  # Holes reach outside the (tiny) region.
  assert all(m.sum() > region.sum() for m in ms)


def test_bad_region_shape_raises():
  cfg = masks.MaskConfig(restrict_to_region=True)
  with pytest.raises(ValueError, match='region'):
    masks.sample_mask(np.random.default_rng(0), 64, cfg, np.ones((64, 64, 3), np.uint8))


# ----------------------------------------------------------------------------
# Shape kinds.
# ----------------------------------------------------------------------------


def _fills_bounding_box(m):
  ys, xs = np.nonzero(m[..., 0])
  return m.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)


def _components(m):
  n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(m[..., 0], connectivity=4)
  return n_labels - 1, labels, stats


def test_rectangles_are_axis_aligned_boxes():
  cfg = masks.MaskConfig(kinds=('rectangle',), num_shapes=(1, 1), area_fraction=(0.01, 0.35))
  ms = _draw(cfg, 64, 200)
  # A single rectangle fills its bounding box exactly.
  assert np.mean([_fills_bounding_box(m) for m in ms]) > 0.95


@pytest.mark.parametrize('kind', ['stroke', 'blob'])
def test_strokes_and_blobs_are_not_boxes(kind):
  ms = _draw(masks.MaskConfig(kinds=(kind,)), 64, 200)
  assert np.mean([_fills_bounding_box(m) for m in ms]) < 0.02
  # Every component, not just the union, is non-rectangular in most cases.
  box_like = total = 0
  for m in ms[:50]:
    n, labels, stats = _components(m)
    for i in range(1, n + 1):
      if stats[i, cv2.CC_STAT_AREA] < 30:
        continue
      total += 1
      area, w, h = (stats[i, k] for k in (cv2.CC_STAT_AREA, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
      box_like += area == w * h
  assert total > 50 and box_like / total < 0.05


def test_strokes_are_thin_and_blobs_are_compact():
  """Strokes: long and thin (low fill of their bounding box); blobs: round-ish."""
  def fill_ratios(kind):
    cfg = masks.MaskConfig(kinds=(kind,), num_shapes=(1, 1), area_fraction=(0.005, 0.35))
    out = []
    for m in _draw(cfg, 128, 100):
      n, _, stats = _components(m)
      i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
      area, w, h = (stats[i, k] for k in (cv2.CC_STAT_AREA, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
      out.append(area / (w * h))
    return np.median(out)
  stroke, blob = fill_ratios('stroke'), fill_ratios('blob')
  # A disc fills pi/4 ~ 0.785 of its box; a thin zig-zag much less.
  assert 0.6 < blob < 0.9, blob
  assert stroke < 0.45, stroke


def test_kind_weights_select_kinds():
  # Zero-weight kinds are never drawn: all weight on blobs gives exactly the
  # masks of kinds=('blob',) (the random stream does not depend on the kinds).
  ms = _draw(masks.MaskConfig(kind_weights=(0.0, 0.0, 1.0)), 64, 100)
  ref = _draw(masks.MaskConfig(kinds=('blob',)), 64, 100)
  for m, r in zip(ms, ref):
    np.testing.assert_array_equal(m, r)
  # Rectangles weighted 8:1:1 against the default 1:1:1: more box-shaped masks.
  one = masks.MaskConfig(num_shapes=(1, 1), area_fraction=(0.01, 0.35))
  heavy = dataclasses.replace(one, kind_weights=(8.0, 1.0, 1.0))
  box_equal = np.mean([_fills_bounding_box(m) for m in _draw(one, 64, 300)])
  box_heavy = np.mean([_fills_bounding_box(m) for m in _draw(heavy, 64, 300)])
  assert box_heavy > 0.7 > box_equal, (box_heavy, box_equal)


def test_default_mixes_all_kinds():
  cfg = masks.MaskConfig(num_shapes=(1, 1), area_fraction=(0.01, 0.35))
  ms = _draw(cfg, 128, 300)
  box = np.mean([_fills_bounding_box(m) for m in ms])
  # One shape per mask: about a third are rectangles (box-filling).
  assert 0.2 < box < 0.47, box


# ----------------------------------------------------------------------------
# Config validation.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('field,value', [
    ('area_fraction', (0.4, 0.3)),
    ('area_fraction', (-0.1, 0.3)),
    ('area_fraction', (0.1, 1.2)),
    ('area_fraction', (0.0, 0.0)),
    ('area_fraction', (0.1,)),
    ('num_shapes', (0, 3)),
    ('num_shapes', (4, 2)),
    ('num_shapes', (1.5, 3)),
    ('kinds', ()),
    ('kinds', ('rectangle', 'triangle')),
    ('kinds', ('blob', 'blob')),
    ('kinds', 'blob'),
    ('kind_weights', (1.0, 1.0)),
    ('kind_weights', (1.0, -1.0, 1.0)),
    ('kind_weights', (0.0, 0.0, 0.0)),
    ('rect_size', (0.0, 0.4)),
    ('rect_size', (0.5, 0.4)),
    ('rect_size', (0.1, 1.5)),
    ('stroke_width', (0.1, 0.05)),
    ('stroke_vertices', (1, 4)),
    ('stroke_vertices', (5, 4)),
    ('stroke_step', (-0.1, 0.2)),
    ('blob_radius', (0.0, 0.2)),
    ('blob_radius', (float('nan'), 0.2)),
    ('restrict_to_region', 'yes'),
])
def test_invalid_config_raises_naming_field(field, value):
  with pytest.raises(ValueError, match=field):
    masks.MaskConfig(**{field: value})


def test_config_normalises_lists_to_tuples():
  cfg = masks.MaskConfig(area_fraction=[0.1, 0.2], kinds=['blob', 'stroke'], num_shapes=[2, 3],
                         kind_weights=[1, 2])
  assert cfg.area_fraction == (0.1, 0.2) and cfg.kinds == ('blob', 'stroke')
  assert cfg.num_shapes == (2, 3) and cfg.kind_weights == (1.0, 2.0)
  hash(cfg)
  assert dataclasses.replace(cfg, num_shapes=(1, 1)).num_shapes == (1, 1)


def test_bad_size_raises():
  with pytest.raises(ValueError, match='size_px'):
    masks.sample_mask(np.random.default_rng(0), 0, DEFAULT)


# ----------------------------------------------------------------------------
# Visual check.
# ----------------------------------------------------------------------------


def test_save_grid_png():
  """Writes 16 default masks at 128 px to /tmp/masks.png (holes black) for inspection."""
  ms = _draw(DEFAULT, 128, 16, seed=2024)
  tiles = []
  for m in ms:
    tile = np.full((132, 132), 128, np.uint8)
    tile[2:130, 2:130] = 255 * (1 - m[..., 0])
    tiles.append(tile)
  grid = np.concatenate([np.concatenate(tiles[r * 4:(r + 1) * 4], axis=1) for r in range(4)], 0)
  assert cv2.imwrite('/tmp/masks.png', grid)
  assert cv2.imread('/tmp/masks.png', cv2.IMREAD_GRAYSCALE).shape == grid.shape
