"""FCOS detection head: points, target assignment, losses against numpy, masking, decoding, and
overfitting one image."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cxr_jax.models import detection as det
from cxr_jax.models import unet
from cxr_jax.models.resnet import ResNet


def fast_rngs(seed=0):
  """RBG keys: eager initialisation compiles faster on CPU than with threefry keys."""
  return nnx.Rngs(jax.random.key(seed, impl='rbg'))


def test_points_and_default_size_ranges():
  points, strides = det.points_for((32, 48), (8, 16))
  assert points.shape == (4 * 6 + 2 * 3, 2) and strides.shape == (30,)
  np.testing.assert_array_equal(points[:3], [[4, 4], [4, 12], [4, 20]])  # row-major, (y, x)
  np.testing.assert_array_equal(points[24:27], [[8, 8], [8, 24], [8, 40]])
  np.testing.assert_array_equal(strides[[0, 23, 24, 29]], [8, 8, 16, 16])
  ranges = det.level_size_ranges(strides)
  np.testing.assert_array_equal(ranges[0], [0, 64])
  np.testing.assert_array_equal(ranges[-1], [64, np.inf])
  np.testing.assert_array_equal(det.level_size_ranges(strides, (0, 10, 20))[-1], [10, 20])
  # odd sizes round up, like the encoders' 'SAME' strided layers
  assert det.points_for((33, 17), (8,))[0].shape == (5 * 3, 2)


@pytest.mark.parametrize('norm', ['group', 'batch'])
def test_head_output_shapes_and_points_match_points_for(norm):
  features = {'stage2': jnp.zeros((2, 5, 7, 12)), 'stage3': jnp.zeros((2, 3, 4, 20))}
  head = det.DetectionHead({'stage2': 12, 'stage3': 20}, num_classes=3, width=8, depth=1,
                           norm=norm, bn_group_size=1, rngs=fast_rngs())
  out = head(features, train=norm == 'batch')
  p = 5 * 7 + 3 * 4
  assert out['cls_logits'].shape == (2, p, 3)
  assert out['box_ltrb'].shape == (2, p, 4) and out['centerness'].shape == (2, p)
  points, strides = det.points_for((40, 56), head.strides)
  np.testing.assert_array_equal(out['points'], points)
  np.testing.assert_array_equal(out['strides'], strides)
  # initial state: every class at the prior, boxes one stride from the point
  np.testing.assert_allclose(jax.nn.sigmoid(out['cls_logits']), 0.01, atol=1e-3)
  assert np.all(np.asarray(out['box_ltrb']) > 0)


def test_assign_targets_hand_made_boxes():
  points, strides = det.points_for((32, 32), (8, 16))  # 16 points of stride 8, then 4 of 16
  ranges = det.level_size_ranges(strides, bounds=(0, 16, np.inf))
  boxes = np.zeros((2, 4, 4), np.float32)
  labels = np.zeros((2, 4), np.int32)
  valid = np.zeros((2, 4), bool)
  boxes[0, 0], labels[0, 0] = (2, 2, 18, 14), 0     # small: stride-8 level
  boxes[0, 1], labels[0, 1] = (0, 0, 32, 32), 1     # large: stride-16 level
  boxes[0, 2], labels[0, 2] = (0, 0, 30, 20), 2     # large, smaller than box 1
  boxes[0, 3], labels[0, 3] = (0, 0, 32, 32), 3     # padding (invalid): ignored
  valid[0, :3] = True
  boxes[1, 0] = (0, 0, 32, 32)                       # image 2: padding only -> background
  t = jax.jit(det.assign_targets, static_argnames='center_radius')(
      points, strides, boxes, labels, valid, ranges, center_radius=None)
  t = jax.tree_util.tree_map(np.asarray, t)

  expected = np.full((2, 20), -1)
  # stride 8 (centres 4, 12, 20, 28): the points strictly inside box 0 are y in {4, 12},
  # x in {4, 12}; all have max(ltrb) <= 16. Box 1 and 2 are too large for this level.
  for y in (0, 1):
    for x in (0, 1):
      expected[0, 4 * y + x] = 0
  # stride 16 (centres 8, 24): box 2 (area 600) wins over box 1 (1024) where it contains the
  # point: (8, 8) and (24, 8); (8, 24) and (24, 24) lie right of x=20 and go to box 1.
  expected[0, 16:] = (2, 1, 2, 1)
  np.testing.assert_array_equal(t['labels'], expected)
  np.testing.assert_array_equal(t['positive'], expected >= 0)

  # (l, t, r, b) = (x - xmin, y - ymin, xmax - x, ymax - y)
  np.testing.assert_allclose(t['ltrb'][0, 0], [2, 2, 10, 14])       # point (4, 4), box 0
  np.testing.assert_allclose(t['ltrb'][0, 5], [10, 10, 2, 6])       # point (12, 12), box 0
  np.testing.assert_allclose(t['ltrb'][0, 18], [8, 24, 12, 6])      # point (24, 8), box 2
  np.testing.assert_allclose(t['ltrb'][0, 19], [24, 24, 8, 8])      # point (24, 24), box 1
  np.testing.assert_allclose(t['centerness'][0, 0], np.sqrt(2 / 10 * 2 / 14), rtol=1e-6)
  np.testing.assert_allclose(t['centerness'][0, 5], np.sqrt(2 / 10 * 6 / 10), rtol=1e-6)
  np.testing.assert_allclose(t['centerness'][0, 19], np.sqrt(8 / 24 * 8 / 24), rtol=1e-6)
  assert np.all(t['centerness'][~t['positive']] == 0)
  assert np.all(t['ltrb'][~t['positive']] == 0)


def test_assign_targets_center_sampling():
  points, strides = det.points_for((32, 32), (8,))
  ranges = det.level_size_ranges(strides)
  boxes = np.array([[[0, 0, 32, 32]]], np.float32)
  args = (points, strides, boxes, np.zeros((1, 1), np.int32), np.ones((1, 1), bool), ranges)
  everywhere = det.assign_targets(*args, center_radius=None)['positive']
  assert int(everywhere.sum()) == 16
  # radius 1.5 strides = 12 px around the centre (16, 16): only centres 12 and 20 qualify
  central = np.asarray(det.assign_targets(*args, center_radius=1.5)['positive'])[0].reshape(4, 4)
  np.testing.assert_array_equal(central, np.outer([0, 1, 1, 0], [0, 1, 1, 0]).astype(bool))


def giou_reference(a, b):
  """GIoU of two (ymin, xmin, ymax, xmax) boxes, written out from the definition."""
  area_a = (a[2] - a[0]) * (a[3] - a[1])
  area_b = (b[2] - b[0]) * (b[3] - b[1])
  ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ih * iw
  union = area_a + area_b - inter
  hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
  return inter / union, inter / union - (hull - union) / hull


def test_iou_and_giou_match_numpy_reference():
  rng = np.random.default_rng(0)
  lo = rng.uniform(0, 50, size=(64, 2))
  a = np.concatenate([lo, lo + rng.uniform(1, 30, size=(64, 2))], axis=1)
  lo = rng.uniform(0, 50, size=(64, 2))
  b = np.concatenate([lo, lo + rng.uniform(1, 30, size=(64, 2))], axis=1)
  b[0] = a[0]                               # identical
  b[1] = (a[1, 0] + 0.2, a[1, 1] + 0.2, a[1, 2] - 0.2, a[1, 3] - 0.2)  # nested
  b[2] = a[2] + 100                         # disjoint
  iou, giou = det.iou_and_giou(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  ref = np.array([giou_reference(x, y) for x, y in zip(a, b)])
  np.testing.assert_allclose(iou, ref[:, 0], atol=1e-5)
  np.testing.assert_allclose(giou, ref[:, 1], atol=1e-5)
  assert abs(float(giou[0]) - 1) < 1e-5 and float(giou[2]) < 0
  assert np.any(ref[:, 0] == 0) and np.any((ref[:, 0] > 0) & (ref[:, 0] < 1))


def random_batch(seed, batch=3, num_points=20, num_classes=2):
  rng = np.random.default_rng(seed)
  points, strides = det.points_for((32, 32), (8, 16))
  outputs = {'cls_logits': jnp.asarray(rng.normal(size=(batch, num_points, num_classes)) * 2,
                                       jnp.float32),
             'box_ltrb': jnp.asarray(rng.uniform(1, 20, size=(batch, num_points, 4)), jnp.float32),
             'centerness': jnp.asarray(rng.normal(size=(batch, num_points)), jnp.float32),
             'points': jnp.asarray(points), 'strides': jnp.asarray(strides)}
  return outputs, points, strides


_assign_jit = jax.jit(det.assign_targets, static_argnames='center_radius')


def make_targets(points, strides, boxes, labels, valid):
  return _assign_jit(points, strides, np.asarray(boxes, np.float32), labels, valid,
                     det.level_size_ranges(strides), center_radius=None)


def test_loss_terms_match_numpy_formulas():
  outputs, points, strides = random_batch(0)
  boxes = np.array([[[0, 0, 20, 28]], [[4, 4, 30, 12]], [[0, 0, 1, 1]]], np.float32)
  targets = make_targets(points, strides, boxes, np.array([[1], [0], [1]]),
                         np.array([[True], [True], [False]]))
  total, m = det.detection_loss(outputs, targets, centerness_weighted_box=True)

  logits = np.asarray(outputs['cls_logits'], np.float64)
  labels = np.asarray(targets['labels'])
  y = np.stack([labels == c for c in range(2)], -1).astype(np.float64)
  p = 1 / (1 + np.exp(-logits))
  p_t = np.where(y == 1, p, 1 - p)
  alpha_t = np.where(y == 1, 0.25, 0.75)
  focal = -alpha_t * (1 - p_t) ** 2 * np.log(p_t)
  pos = np.asarray(targets['positive'])
  num_pos = pos.sum()
  assert num_pos > 0
  np.testing.assert_allclose(m['cls'], focal.sum() / num_pos, rtol=1e-5)

  ltrb, tgt = np.asarray(outputs['box_ltrb']), np.asarray(targets['ltrb'])
  ctr_t = np.asarray(targets['centerness'])
  giou_loss, weights = 0.0, 0.0
  for b, i in zip(*np.nonzero(pos)):
    as_box = lambda d: (-d[1], -d[0], d[3], d[2])  # relative to the point
    giou_loss += ctr_t[b, i] * (1 - giou_reference(as_box(ltrb[b, i]), as_box(tgt[b, i]))[1])
    weights += ctr_t[b, i]
  np.testing.assert_allclose(m['box'], giou_loss / weights, rtol=1e-5)

  z = np.asarray(outputs['centerness'], np.float64)
  bce = np.maximum(z, 0) - z * ctr_t + np.log1p(np.exp(-np.abs(z)))
  np.testing.assert_allclose(m['centerness'], (bce * pos).sum() / num_pos, rtol=1e-5)
  np.testing.assert_allclose(total, m['cls'] + m['box'] + m['centerness'], rtol=1e-6)
  np.testing.assert_allclose(np.sum(m['per_example']), total, rtol=1e-6)
  # the plain variant averages (1 - GIoU) over the positives
  _, plain = det.detection_loss(outputs, targets, centerness_weighted_box=False)
  assert not np.isclose(plain['box'], m['box'])


def test_examples_without_box_annotations_contribute_nothing():
  outputs, points, strides = random_batch(1)
  labels = np.array([[0, 1], [1, 1], [0, 0]])
  valid = np.array([[True, True], [True, False], [True, False]])
  boxes = np.array([[[0, 0, 20, 28], [10, 10, 30, 30]],
                    [[4, 4, 30, 12], [0, 0, 0, 0]],
                    [[2, 2, 14, 30], [0, 0, 0, 0]]], np.float32)
  has_boxes = np.array([1, 0, 1])
  loss_fn = jax.jit(det.detection_loss)

  total, m = loss_fn(outputs, make_targets(points, strides, boxes, labels, valid), has_boxes)
  other = boxes.copy()
  other[1] = [[0, 0, 32, 32], [8, 8, 16, 16]]
  other_valid = valid.copy()
  other_valid[1] = True
  total2, m2 = loss_fn(outputs, make_targets(points, strides, other, labels, other_valid),
                       has_boxes)
  assert float(total) == float(total2)
  for k in ('cls', 'box', 'centerness', 'num_positives'):
    assert float(m[k]) == float(m2[k]), k
  assert float(m['per_example'][1]) == 0.0
  np.testing.assert_allclose(np.sum(m['per_example']), total, rtol=1e-6)
  nothing, _ = loss_fn(outputs, make_targets(points, strides, boxes, labels, valid), 0 * has_boxes)
  assert float(nothing) == 0.0

  # the same loss as the batch without the masked example
  keep = np.array([0, 2])
  sub = {k: (v if k in ('points', 'strides') else v[keep]) for k, v in outputs.items()}
  total_sub, _ = det.detection_loss(sub, make_targets(points, strides, boxes[keep],
                                                      labels[keep], valid[keep]))
  np.testing.assert_allclose(total, total_sub, rtol=1e-6)

  # and no gradient reaches its outputs
  targets = make_targets(points, strides, boxes, labels, valid)
  grads = jax.jit(jax.grad(lambda o: loss_fn(o, targets, has_boxes)[0]))(outputs)
  for k in ('cls_logits', 'box_ltrb', 'centerness'):
    assert not np.any(np.asarray(grads[k][1])), k
    assert np.any(np.asarray(grads[k][0])), k


def test_decode_scores_and_classwise_nms():
  logit = lambda p: float(np.log(p / (1 - p)))
  big = 30.0  # centre-ness logit -> sigmoid 1, so score = sqrt(class probability)
  points = np.array([[10, 10], [11, 11], [40, 40], [10, 10], [50, 50]], np.float32)
  ltrb = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [8, 4, 8, 4], [5, 5, 5, 5], [3, 3, 3, 3]],
                  np.float32)
  cls = np.full((1, 5, 2), -big, np.float32)
  cls[0, 0, 0] = logit(0.81)   # box A, class 0
  cls[0, 1, 0] = logit(0.64)   # A shifted by 1 px, class 0: IoU 0.68 -> suppressed
  cls[0, 2, 0] = logit(0.49)   # box B elsewhere, class 0: kept
  cls[0, 3, 1] = logit(0.36)   # box A again but class 1: NMS is per class -> kept
  cls[0, 4, 1] = logit(0.0001)  # below the threshold
  outputs = {'cls_logits': cls, 'box_ltrb': ltrb[None], 'centerness': np.full((1, 5), big),
             'points': points}
  out = det.decode(outputs, score_threshold=0.05, max_detections=4, nms_iou=0.5)
  assert out['num_detections'][0] == 3
  np.testing.assert_allclose(out['scores'][0], [0.9, 0.7, 0.6, 0], rtol=1e-5)
  np.testing.assert_array_equal(out['classes'][0], [0, 0, 1, -1])
  np.testing.assert_allclose(out['boxes'][0, :3], [[5, 5, 15, 15], [36, 32, 44, 48],
                                                   [5, 5, 15, 15]])
  # a looser NMS threshold keeps the shifted box; max_detections truncates by score
  out = det.decode(outputs, score_threshold=0.05, max_detections=2, nms_iou=0.7)
  np.testing.assert_allclose(out['scores'][0], [0.9, 0.8], rtol=1e-5)
  # clipping to the image
  out = det.decode(outputs, 0.05, 4, 0.5, image_hw=(12, 46))
  np.testing.assert_allclose(out['boxes'][0, 1], [12, 32, 12, 46])


def test_nms_and_iou_matrix():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [0, 5, 10, 15]], float)
  np.testing.assert_allclose(det.box_iou_matrix(boxes[:1], boxes),
                             [[1, 0.9, 0, 50 / 150]])
  np.testing.assert_array_equal(det.nms(boxes, np.array([0.5, 0.9, 0.3, 0.8]), 0.5), [1, 3, 2])


class _Detector(nnx.Module):

  def __init__(self, rngs):
    self.encoder = ResNet(18, width=8, rngs=rngs)
    self.head = det.DetectionHead(unet.encoder_channels(self.encoder), num_classes=1, width=16,
                                  depth=1, rngs=rngs)

  def __call__(self, x, *, train):
    return self.head(self.encoder(x, train=train), train=train)


def test_head_and_loss_overfit_one_image(steps=100):
  image = np.zeros((1, 64, 64, 1), np.float32)
  image[0, 18:42, 10:30] = 1.0                        # a bright 24 x 20 "opacity"
  gt = np.array([[[18, 10, 42, 30]]], np.float32)
  x = jnp.asarray(image - 0.15)
  points, strides = det.points_for((64, 64), (8, 16))
  targets = det.assign_targets(points, strides, gt, np.zeros((1, 1), np.int32),
                               np.ones((1, 1), bool), det.level_size_ranges(strides))
  assert int(targets['positive'].sum()) >= 4

  graphdef, params, stats = nnx.split(_Detector(fast_rngs()), nnx.Param, nnx.BatchStat)
  params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)
  tx = optax.adam(3e-3)

  def loss_fn(p, s):
    model = nnx.merge(graphdef, p, s)
    loss, metrics = det.detection_loss(model(x, train=True), targets)
    return loss, (nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), metrics)

  @jax.jit
  def train(p, s):
    def body(carry, _):
      p, s, o = carry
      (_, (s, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
      updates, o = tx.update(grads, o, p)
      return (optax.apply_updates(p, updates), s, o), metrics
    (p, s, _), metrics = jax.lax.scan(body, (p, s, tx.init(p)), None, length=steps)
    return p, s, metrics

  params, stats, metrics = train(params, stats)
  metrics = jax.tree_util.tree_map(np.asarray, metrics)
  # classification and box terms go (nearly) to zero; centre-ness BCE keeps the entropy of its
  # soft targets, so the total plateaus above 0
  fit = metrics['cls'] + metrics['box']
  assert np.all(np.isfinite(fit))
  assert fit[-1] < 0.1 * fit[0], (fit[0], fit[-1])
  # inference mode (BN running statistics), as evaluation runs it
  out = jax.jit(lambda p, s: nnx.merge(graphdef, p, s)(x, train=False))(params, stats)
  found = det.decode(out, score_threshold=0.05, max_detections=5, nms_iou=0.5)
  assert found['num_detections'][0] >= 1
  iou = det.box_iou_matrix(found['boxes'][0, :1], gt[0])[0, 0]
  assert iou > 0.5, (iou, found['boxes'][0, 0], found['scores'][0, 0])
