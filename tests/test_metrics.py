"""Host metrics against sklearn, pycocotools and small independent references."""

from __future__ import annotations

import contextlib
import io
import itertools

import numpy as np
import pytest
from scipy.spatial import distance
from sklearn import metrics as skm

from cxr_jax.evaluate import metrics

# ------------------------------------------------------------------------------- classification


def _labels_preds(seed, n=300, num_classes=5, used=4):
  """Labels and noisy predictions over the first `used` classes (the rest never occur)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, used, n)
  pred = np.where(rng.random(n) < 0.6, labels, rng.integers(0, used, n))
  return labels, pred


@pytest.mark.parametrize('seed', [0, 1])
def test_confusion_accuracy_f1_match_sklearn(seed):
  labels, pred = _labels_preds(seed)
  classes = list(range(5))
  np.testing.assert_array_equal(metrics.confusion_matrix(labels, pred, 5),
                                skm.confusion_matrix(labels, pred, labels=classes))
  assert metrics.accuracy(labels, pred) == pytest.approx(skm.accuracy_score(labels, pred))
  f1, macro = metrics.f1_scores(labels, pred, 5)
  np.testing.assert_allclose(
      f1, skm.f1_score(labels, pred, labels=classes, average=None, zero_division=0), atol=1e-12)
  assert macro == pytest.approx(
      skm.f1_score(labels, pred, labels=classes, average='macro', zero_division=0), abs=1e-12)
  assert f1[4] == 0.0                                   # absent class, zero_division=0


def test_f1_class_predicted_but_never_true():
  labels = np.array([0, 0, 1, 1])
  pred = np.array([0, 2, 1, 1])
  f1, macro = metrics.f1_scores(labels, pred, 3)
  np.testing.assert_allclose(f1, [2 / 3, 1.0, 0.0])
  assert macro == pytest.approx(skm.f1_score(labels, pred, average='macro', zero_division=0))


@pytest.mark.parametrize('seed', [0, 3])
def test_sensitivity_specificity_match_sklearn(seed):
  labels, pred = _labels_preds(seed)
  sens, spec = metrics.sensitivity_specificity(labels, pred, 5)
  np.testing.assert_allclose(
      sens, skm.recall_score(labels, pred, labels=list(range(5)), average=None,
                             zero_division=np.nan), atol=1e-12)
  for c in range(5):                                    # specificity = recall of "not c"
    assert spec[c] == pytest.approx(skm.recall_score(labels != c, pred != c), abs=1e-12)
  assert np.isnan(sens[4]) and not np.isnan(spec[4])


def test_confusion_matrix_rejects_out_of_range():
  with pytest.raises(ValueError):
    metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


@pytest.mark.parametrize('seed,decimals', [(0, None), (1, 1), (2, 0)])
def test_roc_auc_matches_sklearn_with_ties(seed, decimals):
  rng = np.random.default_rng(seed)
  y = rng.random(200) < 0.3
  scores = rng.normal(size=200) + y
  if decimals is not None:                              # heavy ties
    scores = np.round(scores, decimals)
  assert metrics.roc_auc(y, scores) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)


def test_roc_auc_simple_values_and_single_class():
  assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
  assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
  assert metrics.roc_auc([1, 0], [0.9, 0.1]) == pytest.approx(1.0)
  assert np.isnan(metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
  assert np.isnan(metrics.roc_auc([0, 0], [0.1, 0.2]))


def test_per_class_auroc_multiclass_one_vs_rest():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 250)
  logits = rng.normal(size=(250, 4)) + 1.5 * np.eye(4)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  got = metrics.per_class_auroc(labels, probs)
  expected = [skm.roc_auc_score(labels == c, probs[:, c]) for c in range(4)]
  np.testing.assert_allclose(got, expected, atol=1e-12)
  # sklearn's macro one-vs-rest AUROC is the plain mean of the per-class values
  assert np.mean(got) == pytest.approx(
      skm.roc_auc_score(labels, probs, multi_class='ovr', average='macro'), abs=1e-12)


def test_per_class_auroc_multilabel_with_ties_and_missing_class():
  rng = np.random.default_rng(1)
  targets = (rng.random((180, 5)) < [0.1, 0.3, 0.5, 0.2, 0.0]).astype(np.int32)
  scores = np.round(rng.random((180, 5)) + 0.5 * targets, 1)
  got = metrics.per_class_auroc(targets, scores)
  np.testing.assert_allclose(got[:4], skm.roc_auc_score(targets[:, :4], scores[:, :4],
                                                        average=None), atol=1e-12)
  assert np.isnan(got[4])                               # never positive


# ------------------------------------------------------------------------------------ bootstrap


def _auc_data(n, seed):
  rng = np.random.default_rng(seed)
  y = rng.random(n) < 0.4
  return y, rng.normal(size=n) + y


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data():
  widths = []
  for n in (80, 2000):
    y, s = _auc_data(n, seed=n)
    low, high = metrics.bootstrap_ci(metrics.roc_auc, y, s, num_samples=300)
    assert low < metrics.roc_auc(y, s) < high
    widths.append(high - low)
  assert widths[1] < 0.5 * widths[0]                   # ~ 1 / sqrt(n): ratio ~ 0.2


def test_bootstrap_ci_of_mean_matches_normal_approximation():
  x = np.random.default_rng(0).normal(2.0, 3.0, 2000)
  low, high = metrics.bootstrap_ci(np.mean, x, num_samples=1000, alpha=0.1)
  half = 1.6449 * x.std() / np.sqrt(x.size)
  assert (low + high) / 2 == pytest.approx(x.mean(), abs=0.15 * half)
  assert (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_bootstrap_ci_deterministic_for_seed():
  y, s = _auc_data(150, seed=0)
  a = metrics.bootstrap_ci(metrics.roc_auc, y, s, num_samples=200, seed=7)
  b = metrics.bootstrap_ci(metrics.roc_auc, y, s, num_samples=200, seed=7)
  c = metrics.bootstrap_ci(metrics.roc_auc, y, s, num_samples=200, seed=8)
  assert a == b
  assert a != c


def test_bootstrap_ci_skips_nan_resamples():
  y = np.zeros(12, bool)
  y[0] = True                                           # ~1/e of resamples miss the positive
  s = np.linspace(0, 1, 12)
  calls = []

  def metric(yy, ss):
    calls.append(bool(yy.any()))
    return metrics.roc_auc(yy, ss)

  low, high = metrics.bootstrap_ci(metric, y, s, num_samples=400)
  assert 0 < sum(not c for c in calls) < 400 and np.isfinite([low, high]).all()
  # An equivalent metric that never returns NaN but ignores the same resamples gives the same CI.
  defined = [metrics.roc_auc(*(a[idx] for a in (y, s))) for idx in _indices(400, 12, seed=0)]
  defined = [v for v in defined if not np.isnan(v)]
  np.testing.assert_allclose((low, high), np.percentile(defined, [2.5, 97.5]))
  assert np.isnan(metrics.bootstrap_ci(lambda a: np.nan, s, num_samples=5)).all()


def _indices(num_samples, n, seed):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, n, size=n) for _ in range(num_samples)]


def test_auroc_with_ci_per_class():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 3, 300)
  scores = rng.normal(size=(300, 3)) + np.eye(3)[labels]
  auroc, low, high = metrics.auroc_with_ci(labels, scores, num_samples=200)
  assert auroc.shape == low.shape == high.shape == (3,)
  np.testing.assert_allclose(auroc, metrics.per_class_auroc(labels, scores))
  assert np.all(low < auroc) and np.all(auroc < high) and np.all(high - low < 0.2)
  # each class's interval is the scalar bootstrap of that class (same resamples)
  lo1, hi1 = metrics.bootstrap_ci(lambda l, s: metrics.roc_auc(l == 1, s[:, 1]), labels, scores,
                                  num_samples=200)
  assert (low[1], high[1]) == pytest.approx((lo1, hi1))


def test_classification_report():
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 3, 200)
  probs = rng.dirichlet(np.ones(3), 200) + 0.5 * np.eye(3)[labels]
  names = ['normal', 'pneumonia', 'covid']
  report, cm = metrics.classification_report(labels, probs, names, num_samples=100)
  pred = probs.argmax(1)
  np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, pred))
  assert all(isinstance(v, float) for v in report.values())
  assert report['accuracy'] == pytest.approx(skm.accuracy_score(labels, pred))
  assert report['macro_f1'] == pytest.approx(skm.f1_score(labels, pred, average='macro'))
  for c, name in enumerate(names):
    assert report[f'f1/{name}'] == pytest.approx(skm.f1_score(labels == c, pred == c))
    assert report[f'sensitivity/{name}'] == pytest.approx(skm.recall_score(labels == c, pred == c))
    assert report[f'specificity/{name}'] == pytest.approx(skm.recall_score(labels != c, pred != c))
    assert report[f'auroc/{name}'] == pytest.approx(skm.roc_auc_score(labels == c, probs[:, c]))
    assert report[f'auroc_ci_low/{name}'] < report[f'auroc/{name}'] < report[
        f'auroc_ci_high/{name}']
  assert report['macro_auroc'] == pytest.approx(
      np.mean([report[f'auroc/{n}'] for n in names]))
  assert len(report) == 3 + 6 * len(names)


# ------------------------------------------------------------------------------------ gathering


def test_gather_single_process_is_identity():
  tree = {'label': np.arange(4), 'valid': np.ones(4)}
  assert metrics.gather(tree) is tree


def test_gather_multi_process_uses_tiled_allgather(monkeypatch):
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  calls = []

  def fake_allgather(tree, tiled=False):
    calls.append(tiled)
    return {k: np.concatenate([v, v]) for k, v in tree.items()}

  monkeypatch.setattr(metrics.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'process_allgather', fake_allgather)
  out = metrics.gather({'label': np.arange(3)})
  assert calls == [True]
  np.testing.assert_array_equal(out['label'], [0, 1, 2, 0, 1, 2])


# --------------------------------------------------------------------------------- segmentation


def _square(size, top, left, side):
  m = np.zeros((size, size), bool)
  m[top:top + side, left:left + side] = True
  return m


def test_dice_iou_hand_computed():
  a = np.zeros((3, 4, 4), bool)
  b = np.zeros((3, 4, 4), bool)
  a[0, 0:2], b[0, 1:3] = True, True                    # 8 and 8 pixels, 4 shared
  a[1, 0, 0] = True                                     # one empty, one not
  np.testing.assert_allclose(metrics.dice(a, b), [0.5, 0.0, 1.0])   # example 2: both empty
  np.testing.assert_allclose(metrics.iou(a, b), [1 / 3, 0.0, 1.0])


def test_dice_iou_random_match_sklearn():
  rng = np.random.default_rng(0)
  p, t = rng.random((4, 16, 16)) < 0.4, rng.random((4, 16, 16)) < 0.5
  np.testing.assert_allclose(metrics.dice(p, t),
                             [skm.f1_score(t[i].ravel(), p[i].ravel()) for i in range(4)])
  np.testing.assert_allclose(metrics.iou(p, t),
                             [skm.jaccard_score(t[i].ravel(), p[i].ravel()) for i in range(4)])


@pytest.mark.parametrize('k', [1, 3, 5])
def test_hd95_squares_offset_by_k(k):
  a = _square(48, 10, 10, 20)[None]
  b = _square(48, 10, 10 + k, 20)[None]
  np.testing.assert_allclose(metrics.hd95(a, b), [k])
  np.testing.assert_allclose(metrics.hd95(b, a), [k])
  np.testing.assert_allclose(metrics.hd95(a, b, spacing=(1.0, 2.0)), [2 * k])   # offset along x
  np.testing.assert_allclose(metrics.hd95(a, b, spacing=(2.0, 1.0)), [k])


def test_hd95_hand_computed_cases():
  a, b = np.zeros((1, 10, 10), bool), np.zeros((1, 10, 10), bool)
  a[0, 1, 1], b[0, 4, 5] = True, True                  # single pixels 3-4-5 apart
  np.testing.assert_allclose(metrics.hd95(a, b), [5.0])
  same = _square(20, 3, 4, 9)[None]
  np.testing.assert_allclose(metrics.hd95(same, same), [0.0])
  inner = _square(64, 7, 7, 51)[None]                  # concentric squares 2 pixels apart
  outer = _square(64, 5, 5, 55)[None]
  np.testing.assert_allclose(metrics.hd95(inner, outer), [2.0])


def _brute_force_hd95(p, t):
  """Borders by explicit 4-neighbour test (outside = background), pairwise distances."""
  def border_points(m):
    pad = np.pad(m, 1)
    interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return np.argwhere(m & ~interior).astype(float)
  bp, bt = border_points(p), border_points(t)
  d = distance.cdist(bp, bt)
  return np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)


def test_hd95_random_blobs_match_brute_force():
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:24, :24]
  p, t = [], []
  for _ in range(4):
    cy, cx, r = rng.uniform(4, 20, 2).tolist() + [rng.uniform(3, 9)]
    p.append((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2)
    t.append(rng.random((24, 24)) < 0.3)               # ragged, touches the image edge
  p, t = np.stack(p), np.stack(t)
  np.testing.assert_allclose(metrics.hd95(p, t), [_brute_force_hd95(p[i], t[i]) for i in range(4)])


def test_hd95_empty_cases_and_report():
  full = _square(12, 2, 2, 5)
  shifted = _square(12, 2, 4, 5)
  empty = np.zeros((12, 12), bool)
  pred = np.stack([full, empty, empty, full])
  true = np.stack([shifted, empty, full, empty])
  h = metrics.hd95(pred, true)
  assert h[0] == pytest.approx(2.0) and h[1] == 0.0
  assert np.isnan(h[2]) and np.isnan(h[3])
  report = metrics.segmentation_report(pred, true)
  assert report['hd95'] == pytest.approx(1.0)           # nanmean of [2, 0]
  assert report['hd95_undefined'] == 2
  assert report['dice'] == pytest.approx(np.mean([2 * 15 / 50, 1.0, 0.0, 0.0]))
  assert report['iou'] == pytest.approx(np.mean([15 / 35, 1.0, 0.0, 0.0]))
  only_undefined = metrics.segmentation_report(pred[2:], true[2:])
  assert np.isnan(only_undefined['hd95']) and only_undefined['hd95_undefined'] == 2


# ------------------------------------------------------------------------------------ detection


def _coco_ap50(dets, gts, num_classes):
  """pycocotools AP@0.5 (area all, maxDets 100): stats[1] and per-category AP (with GT)."""
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top

  def xywh(b):
    return [float(b[1]), float(b[0]), float(b[3] - b[1]), float(b[2] - b[0])]

  anns = []
  for i, (boxes, classes) in enumerate(gts):
    for b, c in zip(boxes, classes):
      w, h = b[3] - b[1], b[2] - b[0]
      # ids start at 1: pycocotools stores matched GT ids and treats id 0 as "unmatched"
      anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': int(c) + 1,
                   'bbox': xywh(b), 'area': float(w * h), 'iscrowd': 0})
  results = [{'image_id': i + 1, 'category_id': int(c) + 1, 'bbox': xywh(b), 'score': float(s)}
             for i, (boxes, scores, classes) in enumerate(dets)
             for b, s, c in zip(boxes, scores, classes)]
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = {'images': [{'id': i + 1} for i in range(len(gts))], 'annotations': anns,
                       'categories': [{'id': k + 1} for k in range(num_classes)]}
    coco_gt.createIndex()
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), 'bbox')
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
  precision = coco_eval.eval['precision'][0, :, :, 0, 2]       # IoU .5, [R, K], area all, 100
  per_class = {k: float(precision[:, k].mean()) for k in range(num_classes)
               if precision[0, k] > -1}
  return float(coco_eval.stats[1]), per_class


def _random_boxes(rng, n, scale):
  yx = rng.uniform(0, 0.8, (n, 2))
  hw = rng.uniform(0.05, 0.3, (n, 2))
  return np.concatenate([yx, yx + hw], axis=1) * scale


def _scene(seed, num_images=12, num_classes=3, scale=1.0, score_decimals=None, crowded=False):
  """Random GT (class 2 never has GT) and detections: jittered hits, duplicates, clutter."""
  rng = np.random.default_rng(seed)
  dets, gts = [], []
  for i in range(num_images):
    m = 0 if i % 4 == 0 else int(rng.integers(1, 5))          # some images without GT
    gt_boxes = _random_boxes(rng, m, scale)
    gt_classes = rng.integers(0, num_classes - 1, m)
    if m and rng.random() < 0.3:                                # an exact duplicate GT box
      gt_boxes = np.concatenate([gt_boxes, gt_boxes[:1]])
      gt_classes = np.concatenate([gt_classes, gt_classes[:1]])
    gts.append((gt_boxes, gt_classes))
    if i % 5 == 3:                                              # some images without detections
      dets.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)))
      continue
    found = rng.random(len(gt_boxes)) < 0.8
    hits = gt_boxes[found]
    hit_classes = np.where(rng.random(len(hits)) < 0.1, 1 - gt_classes[found], gt_classes[found])
    jitter = rng.normal(0, 0.02 * scale, hits.shape)
    n_dup = min(len(hits), 2)
    n_clutter = int(rng.integers(0, 4))
    boxes = np.concatenate([hits + jitter, hits[:n_dup] + jitter[:n_dup] * 0.5,
                            _random_boxes(rng, n_clutter, scale)])
    classes = np.concatenate([hit_classes, hit_classes[:n_dup],
                              rng.integers(0, num_classes, n_clutter)])
    if crowded and i == 1:                                      # > 100 detections of class 0
      boxes = np.concatenate([boxes, _random_boxes(rng, 200, scale)])
      classes = np.concatenate([classes, np.zeros(200, int)])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1e-3 * scale)
    scores = rng.random(len(boxes))
    if score_decimals is not None:
      scores = np.round(scores, score_decimals)                 # ties across images
    dets.append((boxes, scores, classes))
  return dets, gts


@pytest.mark.parametrize('seed,scale,score_decimals,crowded', [
    (0, 1.0, None, False), (1, 512.0, None, False), (2, 1.0, 1, False), (3, 1024.0, 1, True),
    (4, 1.0, None, True)])
def test_coco101_matches_pycocotools(seed, scale, score_decimals, crowded):
  dets, gts = _scene(seed, scale=scale, score_decimals=score_decimals, crowded=crowded)
  stats1, coco_per_class = _coco_ap50(dets, gts, 3)
  per_class, mean, excluded = metrics.mean_average_precision(dets, gts, 3)
  assert excluded == [2] and sorted(per_class) == [0, 1] == sorted(coco_per_class)
  for k in per_class:
    assert per_class[k] == pytest.approx(coco_per_class[k], abs=1e-6)
  assert mean == pytest.approx(stats1, abs=1e-6)
  assert 0.05 < mean < 0.95                                     # a non-degenerate scene
  if crowded:                                                   # the maxDets=100 cap matters
    _, uncapped, _ = metrics.mean_average_precision(dets, gts, 3, max_detections=None)
    assert abs(uncapped - stats1) > 1e-5


def test_coco101_matching_edge_cases_match_pycocotools():
  """IoU exactly at the threshold matches; equal-IoU ground truths go to the later one."""
  a, b = [0, 0, 10, 10], [0, 5, 10, 15]
  tie, near_b = [0, 2.5, 10, 12.5], [0, 6, 10, 16]              # IoU 0.6 with a and b; 0.82 with b
  half = [20, 20, 30, 25]                                       # IoU exactly 0.5 with its GT
  gts = [(np.array([a, b], float), np.zeros(2, int)),
         (np.array([[20, 20, 30, 30]], float), np.zeros(1, int))]
  dets = [(np.array([tie, near_b], float), np.array([0.9, 0.8]), np.zeros(2, int)),
          (np.array([half], float), np.array([0.7]), np.zeros(1, int))]
  stats1, _ = _coco_ap50(dets, gts, 1)
  # TP (takes b), FP (a is left but IoU 0.25), TP: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3
  expected = (34 * 1 + 33 * 2 / 3) / 101
  assert stats1 == pytest.approx(expected, abs=1e-12)
  _, mean, _ = metrics.mean_average_precision(dets, gts, 1)
  assert mean == pytest.approx(expected, abs=1e-12)


def test_coco101_respects_max_detections_per_image():
  dets, gts = _scene(3, scale=1.0, crowded=True)  # image 1: > 100 detections of class 0
  capped, _, _ = metrics.mean_average_precision(dets, gts, 3)
  uncapped, _, _ = metrics.mean_average_precision(dets, gts, 3, max_detections=None)
  assert capped != uncapped


def _voc_reference(dets, gts, thr=0.5):
  """Plain-loop VOC all-points AP with the same greedy matching (best unmatched GT)."""
  def iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

  records = sorted(((s, i, b) for i, (boxes, scores) in enumerate(dets)
                    for b, s in zip(boxes, scores)), key=lambda r: -r[0])
  taken = [[False] * len(g) for g in gts]
  tp, fp, npos = 0, 0, sum(len(g) for g in gts)
  rec, prec = [], []
  for _, i, b in records:
    best, best_j = -1.0, -1
    for j, g in enumerate(gts[i]):
      if not taken[i][j] and iou(b, g) >= best:
        best, best_j = iou(b, g), j
    if best_j >= 0 and best >= thr:
      taken[i][best_j] = True
      tp += 1
    else:
      fp += 1
    rec.append(tp / npos)
    prec.append(tp / (tp + fp))
  mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
  for j in range(len(mpre) - 2, -1, -1):
    mpre[j] = max(mpre[j], mpre[j + 1])
  return sum((mrec[j + 1] - mrec[j]) * mpre[j + 1] for j in range(len(mrec) - 1)
             if mrec[j + 1] != mrec[j])


def _single_class(dets, gts, k):
  return ([(b[c == k], s[c == k]) for b, s, c in dets], [b[c == k] for b, c in gts])


@pytest.mark.parametrize('seed,thr', [(0, 0.5), (5, 0.5), (6, 0.3), (7, 0.7)])
def test_voc_all_matches_reference(seed, thr):
  dets, gts = _scene(seed)
  for k in (0, 1):
    d, g = _single_class(dets, gts, k)
    got = metrics.average_precision(d, g, thr, interpolation='voc_all')
    assert got == pytest.approx(_voc_reference(d, g, thr), abs=1e-12)
    assert got != pytest.approx(metrics.average_precision(d, g, thr), abs=1e-9)


def test_ap_hand_computed():
  gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)]
  boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 21, 30, 31]], float)
  dets = [(boxes, np.array([0.9, 0.8, 0.7]))]                   # TP, FP, TP (IoU 9/11)
  # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
  assert metrics.average_precision(dets, gt, interpolation='voc_all') == pytest.approx(
      0.5 * 1 + 0.5 * 2 / 3)
  assert metrics.average_precision(dets, gt, interpolation='coco101') == pytest.approx(
      (51 * 1 + 50 * 2 / 3) / 101)
  assert metrics.average_precision(dets, gt, iou_threshold=0.85) == pytest.approx(
      51 / 101 * 1)                                             # third now a FP


def test_ap_duplicates_empty_images_and_no_gt():
  gt = [np.array([[0, 0, 10, 10]], float), np.zeros((0, 4))]
  box = np.array([[0, 0, 10, 10]], float)
  # a higher-scoring detection on an image without GT is a false positive
  dets = [(box, np.array([0.5])), (box, np.array([0.9]))]
  for interp in ('coco101', 'voc_all'):
    assert metrics.average_precision(dets, gt, interpolation=interp) == pytest.approx(0.5)
  # a duplicate after the match is a false positive that does not lower the envelope at recall 1
  dup = [(np.concatenate([box, box]), np.array([0.9, 0.8])), (np.zeros((0, 4)), np.zeros(0))]
  assert metrics.average_precision(dup, gt, interpolation='voc_all') == pytest.approx(1.0)
  no_dets = [(np.zeros((0, 4)), np.zeros(0))] * 2
  assert metrics.average_precision(no_dets, gt) == 0.0
  assert np.isnan(metrics.average_precision(dets, [np.zeros((0, 4))] * 2))


def test_detection_report_keys_and_excluded_class():
  dets, gts = _scene(0)
  names = ['opacity', 'nodule', 'never']
  report = metrics.detection_report(dets, gts, names)
  per_class, mean, _ = metrics.mean_average_precision(dets, gts, 3)
  assert set(report) == {'map50', 'ap50/opacity', 'ap50/nodule', 'ap50/never'}
  assert report['map50'] == pytest.approx(mean)
  assert report['ap50/nodule'] == pytest.approx(per_class[1])
  assert np.isnan(report['ap50/never'])


def test_box_iou_matches_direct_formula():
  rng = np.random.default_rng(0)
  a, b = _random_boxes(rng, 5, 10.0), _random_boxes(rng, 7, 10.0)
  got = metrics.box_iou(a, b)
  for i, j in itertools.product(range(5), range(7)):
    ih = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
    iw = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
    union = np.prod(a[i, 2:] - a[i, :2]) + np.prod(b[j, 2:] - b[j, :2]) - ih * iw
    assert got[i, j] == pytest.approx(ih * iw / union)
