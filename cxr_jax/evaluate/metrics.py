"""Host-side (numpy) metrics over a full validation split, computed once predictions are gathered.

Eval batches carry a `valid` mask [B] that is 0 on the rows padding the last batch up to the
global batch size; callers gather predictions (`gather`) and drop those rows
(`x[valid > 0]`) before calling anything here. Everything below assumes N real examples.

Classification (C classes, integer labels [N]):
  * confusion matrix: rows = true class, columns = predicted class.
  * F1 per class = 2 TP / (2 TP + FP + FN), 0 when the denominator is 0 (sklearn's
    `zero_division=0`); macro F1 = unweighted mean over all C classes.
  * sensitivity = TP / (TP + FN), specificity = TN / (TN + FP), one-vs-rest; NaN when undefined
    (no positives, resp. no negatives, of that class).
  * AUROC = P(score of a positive > score of a negative) + 0.5 P(tie), i.e. the Mann-Whitney U
    statistic from average ranks; NaN when only one class is present. Multi-class labels [N] are
    scored one-vs-rest against scores [N, C]; multi-label targets are multi-hot [N, C].
  * bootstrap CI: percentile interval of the metric over resamples of the N examples with
    replacement (seeded); resamples where the metric is NaN (e.g. one class only) are skipped,
    element-wise for vector-valued metrics.

Segmentation (boolean masks [N, *spatial]), per example:
  * Dice = 2|P & T| / (|P| + |T|), IoU = |P & T| / |P | T|; both 1 when P and T are empty.
  * HD95 = 95th percentile (numpy linear interpolation) of the pooled symmetric surface distances:
    distances from every border pixel of P to the nearest border pixel of T, and vice versa. The
    border of a mask is the mask minus its erosion by the 4-connected (face) cross, pixels outside
    the image counting as background, so a mask touching the image edge has a border there.
    Distances are Euclidean in physical units (`spacing` per axis). Both empty -> 0 (perfect);
    exactly one empty -> NaN (undefined); `segmentation_report` gives the nanmean and the number
    of undefined examples.

Detection (one class; boxes (ymin, xmin, ymax, xmax), absolute or relative, IoU without the +1
pixel convention): detections are matched greedily in descending score order (stable sort; ties
keep image order, then input order), each to the unmatched ground truth of its image with the
highest IoU if that IoU >= threshold (pycocotools' rule; ties between ground truths go to the
later one, as in pycocotools). Unmatched detections, including all those on images without
ground truth, are false positives. Precision/recall are then interpolated:
  * 'coco101': pycocotools' AP (iscrowd=0, area 'all', maxDets=100 per image): the precision
    envelope sampled at the 101 recalls 0, 0.01, ..., 1 (0 beyond the highest recall) and averaged.
  * 'voc_all': PASCAL VOC 2010+ all-points AP: area under the precision envelope, summed over
    recall steps (the mAP@0.5 described by the SIIM-FISABIO-RSNA COVID-19 challenge). No per-image
    cap on detections by default. Note the VOC devkit itself differs in matching (it takes the
    best-IoU ground truth even if already matched, making the detection a false positive) and uses
    IoU > threshold; here both interpolations share the matching above.
AP is NaN for a class without any ground truth; such classes are left out of the mean.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from scipy import ndimage
from scipy import stats

Array = np.ndarray


# ------------------------------------------------------------------------------------ gathering


def gather(tree):
  """All hosts' numpy arrays, concatenated along axis 0 (identity on a single process).

  Every host must pass arrays of the same shapes (pad the local split to a common size and carry a
  `valid` mask along; callers drop rows with valid == 0 after gathering).
  """
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, gathered)


# ------------------------------------------------------------------------------- classification


def accuracy(labels: Array, pred: Array) -> float:
  """Fraction of examples with pred == labels."""
  labels, pred = np.asarray(labels), np.asarray(pred)
  return float(np.mean(labels == pred)) if labels.size else float('nan')


def confusion_matrix(labels: Array, pred: Array, num_classes: int) -> Array:
  """Counts [C, C] with rows = true class and columns = predicted class."""
  labels = np.asarray(labels, np.int64).ravel()
  pred = np.asarray(pred, np.int64).ravel()
  if labels.shape != pred.shape:
    raise ValueError(f'labels {labels.shape} and pred {pred.shape} differ in size')
  for name, x in (('labels', labels), ('pred', pred)):
    if x.size and (x.min() < 0 or x.max() >= num_classes):
      raise ValueError(f'{name} out of range [0, {num_classes})')
  counts = np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)


def _one_vs_rest_counts(cm: Array) -> tuple[Array, Array, Array, Array]:
  tp = np.diag(cm).astype(np.float64)
  fp = cm.sum(axis=0) - tp
  fn = cm.sum(axis=1) - tp
  tn = cm.sum() - tp - fp - fn
  return tp, fp, fn, tn


def _safe_div(num: Array, den: Array, undefined: float) -> Array:
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.where(den > 0, num / np.where(den > 0, den, 1.0), undefined)


def f1_scores(labels: Array, pred: Array, num_classes: int) -> tuple[Array, float]:
  """Per-class F1 [C] (0 where undefined) and macro F1 (mean over all C classes)."""
  tp, fp, fn, _ = _one_vs_rest_counts(confusion_matrix(labels, pred, num_classes))
  f1 = _safe_div(2 * tp, 2 * tp + fp + fn, 0.0)
  return f1, float(np.mean(f1))


def sensitivity_specificity(labels: Array, pred: Array, num_classes: int) -> tuple[Array, Array]:
  """One-vs-rest sensitivity (recall) and specificity per class [C]; NaN where undefined."""
  tp, fp, fn, tn = _one_vs_rest_counts(confusion_matrix(labels, pred, num_classes))
  return _safe_div(tp, tp + fn, np.nan), _safe_div(tn, tn + fp, np.nan)


def _auroc_columns(targets: Array, scores: Array) -> Array:
  """Mann-Whitney AUROC of each column of scores [N, C] against binary targets [N, C]."""
  if targets.shape != scores.shape or targets.ndim != 2:
    raise ValueError(f'targets {targets.shape} and scores {scores.shape} must both be [N, C]')
  if np.isnan(scores).any():
    raise ValueError('scores contain NaN')
  pos = targets.astype(bool)
  n_pos = pos.sum(axis=0).astype(np.float64)
  n_neg = pos.shape[0] - n_pos
  ranks = stats.rankdata(scores, axis=0)                              # average ranks for ties
  u = np.sum(ranks * pos, axis=0) - n_pos * (n_pos + 1) / 2
  return _safe_div(u, n_pos * n_neg, np.nan)


def roc_auc(y_true: Array, scores: Array) -> float:
  """AUROC of scores [N] for binary targets [N]; NaN when only one class is present."""
  y_true, scores = np.asarray(y_true).ravel(), np.asarray(scores, np.float64).ravel()
  return float(_auroc_columns(y_true[:, None], scores[:, None])[0])


def per_class_auroc(labels: Array, scores: Array) -> Array:
  """AUROC per class [C] of scores [N, C].

  labels: integer classes [N] (multi-class, one-vs-rest) or multi-hot 0/1 targets [N, C]
  (multi-label). NaN for a class that is always or never present.
  """
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  if labels.ndim == 1:
    targets = labels[:, None] == np.arange(scores.shape[1])[None, :]
  else:
    targets = labels
  return _auroc_columns(targets, scores)


def bootstrap_ci(metric_fn: Callable[..., float | Array], *arrays: Array, num_samples: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> tuple:
  """Percentile (1 - alpha) CI of metric_fn(*arrays) over resamples of the examples (axis 0).

  Returns (low, high), floats for a scalar metric, arrays for a vector-valued one; NaN-valued
  resamples are skipped (element-wise); (NaN, NaN) when every resample is NaN.
  """
  arrays = tuple(np.asarray(a) for a in arrays)
  n = arrays[0].shape[0]
  if any(a.shape[0] != n for a in arrays):
    raise ValueError('bootstrap_ci: arrays differ in length along axis 0')
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_samples):
    idx = rng.integers(0, n, size=n)
    values.append(np.asarray(metric_fn(*(a[idx] for a in arrays)), np.float64))
  values = np.stack(values)                                           # [S, ...]
  shape = values.shape[1:]
  values = values.reshape(num_samples, -1)
  ok = ~np.isnan(values).all(axis=0)                                  # nanpercentile warns if none
  bounds = np.full((2, values.shape[1]), np.nan)
  if ok.any():
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    bounds[:, ok] = np.nanpercentile(values[:, ok], q, axis=0)
  low, high = bounds.reshape((2,) + shape)
  if not shape:
    return float(low), float(high)
  return low, high


def auroc_with_ci(labels: Array, scores: Array, *, num_samples: int = 1000, alpha: float = 0.05,
                  seed: int = 0) -> tuple[Array, Array, Array]:
  """Per-class AUROC [C] with its bootstrap percentile CI (low [C], high [C])."""
  auroc = per_class_auroc(labels, scores)
  low, high = bootstrap_ci(per_class_auroc, labels, scores, num_samples=num_samples, alpha=alpha,
                           seed=seed)
  return auroc, np.asarray(low), np.asarray(high)


def classification_report(labels: Array, probs: Array, class_names: Sequence[str], *,
                          num_samples: int = 1000, alpha: float = 0.05, seed: int = 0
                          ) -> tuple[dict[str, float], Array]:
  """Flat dict of scalar metrics of class scores probs [N, C] (prediction = argmax), and the
  confusion matrix [C, C] (rows = true)."""
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  num_classes = len(class_names)
  if probs.shape != (labels.shape[0], num_classes):
    raise ValueError(f'probs {probs.shape} != [N={labels.shape[0]}, C={num_classes}]')
  pred = np.argmax(probs, axis=1)
  f1, macro_f1 = f1_scores(labels, pred, num_classes)
  sens, spec = sensitivity_specificity(labels, pred, num_classes)
  auroc, low, high = auroc_with_ci(labels, probs, num_samples=num_samples, alpha=alpha, seed=seed)
  report = {'accuracy': accuracy(labels, pred), 'macro_f1': macro_f1,
            'macro_auroc': _nanmean(auroc)}
  for c, name in enumerate(class_names):
    report[f'f1/{name}'] = float(f1[c])
    report[f'sensitivity/{name}'] = float(sens[c])
    report[f'specificity/{name}'] = float(spec[c])
    report[f'auroc/{name}'] = float(auroc[c])
    report[f'auroc_ci_low/{name}'] = float(low[c])
    report[f'auroc_ci_high/{name}'] = float(high[c])
  return report, confusion_matrix(labels, pred, num_classes)


def _nanmean(x: Array) -> float:
  x = np.asarray(x, np.float64)
  return float(np.mean(x[~np.isnan(x)])) if (~np.isnan(x)).any() else float('nan')


# --------------------------------------------------------------------------------- segmentation


def _masks(pred_mask: Array, true_mask: Array) -> tuple[Array, Array]:
  pred_mask, true_mask = np.asarray(pred_mask, bool), np.asarray(true_mask, bool)
  if pred_mask.shape != true_mask.shape or pred_mask.ndim < 2:
    raise ValueError(f'masks must both be [N, *spatial]: {pred_mask.shape} vs {true_mask.shape}')
  return pred_mask, true_mask


def dice(pred_mask: Array, true_mask: Array) -> Array:
  """Dice per example [N] of boolean masks [N, *spatial]; 1 where both are empty."""
  p, t = _masks(pred_mask, true_mask)
  axes = tuple(range(1, p.ndim))
  inter = np.sum(p & t, axis=axes)
  total = np.sum(p, axis=axes) + np.sum(t, axis=axes)
  return _safe_div(2 * inter, total, 1.0)


def iou(pred_mask: Array, true_mask: Array) -> Array:
  """Intersection over union per example [N] of boolean masks [N, *spatial]; 1 where both empty."""
  p, t = _masks(pred_mask, true_mask)
  axes = tuple(range(1, p.ndim))
  return _safe_div(np.sum(p & t, axis=axes), np.sum(p | t, axis=axes), 1.0)


def _border(mask: Array) -> Array:
  return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred_mask: Array, true_mask: Array, spacing: float | Sequence[float] = 1.0) -> Array:
  """95th-percentile symmetric surface distance per example [N] (see the module docstring).

  0 where both masks are empty, NaN where exactly one is.
  """
  p, t = _masks(pred_mask, true_mask)
  out = np.zeros(p.shape[0])
  for i in range(p.shape[0]):
    has_p, has_t = p[i].any(), t[i].any()
    if not (has_p or has_t):
      continue
    if has_p != has_t:
      out[i] = np.nan
      continue
    bp, bt = _border(p[i]), _border(t[i])
    to_t = ndimage.distance_transform_edt(~bt, sampling=spacing)    # distance to T's border
    to_p = ndimage.distance_transform_edt(~bp, sampling=spacing)
    out[i] = np.percentile(np.concatenate([to_t[bp], to_p[bt]]), 95)
  return out


def segmentation_report(pred_mask: Array, true_mask: Array,
                        spacing: float | Sequence[float] = 1.0) -> dict[str, float]:
  """Mean Dice, IoU, HD95 (nanmean) and the count of examples with undefined HD95."""
  h = hd95(pred_mask, true_mask, spacing)
  return {'dice': float(np.mean(dice(pred_mask, true_mask))),
          'iou': float(np.mean(iou(pred_mask, true_mask))),
          'hd95': _nanmean(h), 'hd95_undefined': float(np.isnan(h).sum())}


# ------------------------------------------------------------------------------------ detection

_COCO_RECALLS = np.linspace(0.0, 1.0, 101)


def box_iou(boxes_a: Array, boxes_b: Array) -> Array:
  """IoU [n, m] of (ymin, xmin, ymax, xmax) boxes [n, 4] and [m, 4] (0 where the union is 0)."""
  a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
  b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
  area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
  area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
  return _safe_div(inter, area_a[:, None] + area_b[None, :] - inter, 0.0)


def _match_image(boxes: Array, scores: Array, gt_boxes: Array, iou_threshold: float,
                 max_detections: int | None) -> tuple[Array, Array]:
  """Scores (descending) and true-positive flags of one image's detections."""
  order = np.argsort(-scores, kind='stable')[:max_detections]
  boxes, scores = boxes[order], scores[order]
  tp = np.zeros(len(scores), bool)
  if len(scores) and len(gt_boxes):
    ious = box_iou(boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    threshold = min(iou_threshold, 1 - 1e-10)                         # as pycocotools
    for d in range(len(scores)):
      row = np.where(taken, -1.0, ious[d])
      g = len(row) - 1 - int(np.argmax(row[::-1]))                    # the last of equal maxima
      if row[g] >= threshold:
        taken[g], tp[d] = True, True
  return scores, tp


def average_precision(detections: Sequence[tuple[Array, Array]], ground_truths: Sequence[Array],
                      iou_threshold: float = 0.5, interpolation: str = 'coco101',
                      max_detections: int | None = -1) -> float:
  """AP of one class over a list of images.

  detections: per image (boxes [n, 4], scores [n]); ground_truths: per image boxes [m, 4].
  max_detections: per-image cap on detections (highest scores kept); -1 = the interpolation's
  default (100 for 'coco101', as pycocotools' maxDets, none for 'voc_all'), None = no cap.
  NaN when there is no ground truth at all.
  """
  if interpolation not in ('coco101', 'voc_all'):
    raise ValueError(f'unknown interpolation {interpolation!r}')
  if len(detections) != len(ground_truths):
    raise ValueError(f'{len(detections)} images of detections, '
                     f'{len(ground_truths)} of ground truth')
  if max_detections == -1:
    max_detections = 100 if interpolation == 'coco101' else None
  all_scores, all_tp, num_gt = [], [], 0
  for (boxes, scores), gt in zip(detections, ground_truths):
    gt = np.asarray(gt, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).ravel()
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    s, tp = _match_image(boxes, scores, gt, iou_threshold, max_detections)
    all_scores.append(s)
    all_tp.append(tp)
    num_gt += len(gt)
  if num_gt == 0:
    return float('nan')
  order = np.argsort(-np.concatenate(all_scores), kind='stable')
  tp = np.concatenate(all_tp)[order]
  if not tp.size:
    return 0.0
  tp_sum = np.cumsum(tp, dtype=np.float64)
  recall = tp_sum / num_gt
  precision = tp_sum / np.arange(1, tp.size + 1)
  if interpolation == 'coco101':
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _COCO_RECALLS, side='left')
    return float(np.mean(np.where(idx < tp.size, envelope[np.minimum(idx, tp.size - 1)], 0.0)))
  recall = np.concatenate([[0.0], recall, [1.0]])
  precision = np.concatenate([[0.0], precision, [0.0]])
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  steps = np.flatnonzero(recall[1:] != recall[:-1])
  return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def mean_average_precision(detections: Sequence[tuple[Array, Array, Array]],
                           ground_truths: Sequence[tuple[Array, Array]], num_classes: int,
                           iou_threshold: float = 0.5, interpolation: str = 'coco101',
                           max_detections: int | None = -1
                           ) -> tuple[dict[int, float], float, list[int]]:
  """Per-class AP, their mean, and the classes left out for having no ground truth anywhere.

  detections: per image (boxes [n, 4], scores [n], classes [n]); ground_truths: per image
  (boxes [m, 4], classes [m]); classes are integers in [0, num_classes). max_detections applies
  per image and class, as in pycocotools.
  """
  dets = [(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(s, np.float64).ravel(),
           np.asarray(c).ravel()) for b, s, c in detections]
  gts = [(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(c).ravel())
         for b, c in ground_truths]
  per_class, excluded = {}, []
  for k in range(num_classes):
    ap = average_precision([(b[c == k], s[c == k]) for b, s, c in dets],
                           [b[c == k] for b, c in gts], iou_threshold, interpolation,
                           max_detections)
    if np.isnan(ap):
      excluded.append(k)
    else:
      per_class[k] = ap
  mean = float(np.mean(list(per_class.values()))) if per_class else float('nan')
  return per_class, mean, excluded


def detection_report(detections: Sequence[tuple[Array, Array, Array]],
                     ground_truths: Sequence[tuple[Array, Array]], class_names: Sequence[str],
                     interpolation: str = 'coco101') -> dict[str, float]:
  """{'map50', 'ap50/<name>'} at IoU 0.5; a class without ground truth gets NaN and is left
  out of map50."""
  per_class, mean, _ = mean_average_precision(detections, ground_truths, len(class_names), 0.5,
                                              interpolation)
  report = {'map50': mean}
  for k, name in enumerate(class_names):
    report[f'ap50/{name}'] = per_class.get(k, float('nan'))
  return report
