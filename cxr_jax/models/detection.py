"""Anchor-free (FCOS-style) box detection for opacities and nodules on an encoder's pyramid.

What it is (Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection"): every
feature-map location ("point") of a few pyramid levels predicts, per class, whether it lies in an
object (sigmoid logits trained with the focal loss of Lin et al. 2017), the distances from the
point to the four sides of that object (left, top, right, bottom: "ltrb"; trained with a GIoU
loss) and a centre-ness logit that down-weights predictions from points near a box edge at
test time. Each ground-truth box is owned by the points that lie inside it (optionally only
those within `center_radius` strides of its centre) on the level whose size range holds the
box's largest ltrb distance; a point inside several boxes predicts the smallest.

Why anchor-free, when MultiCheXNet's detection branch is YOLOv2 with anchors:
  * No anchor hyper-parameters. YOLOv2 fits its anchor shapes to a dataset's boxes by k-means
    and its matching uses IoU thresholds; both must be redone per dataset and both are noisy
    when a dataset has a few hundred boxes, as chest X-ray sets (RSNA pneumonia, nodule sets)
    do. Here the only choices are the pyramid levels and their size ranges, which follow from
    the strides.
  * Few, large and variable boxes per image. A radiograph has 0-4 opacities whose aspect ratios
    range from thin to lobar. YOLOv2 makes each ground truth the target of one anchor, in the
    one cell that holds its centre, so a box gives one positive sample, and a shape far from
    every anchor is learned poorly. FCOS makes every point inside the box (or its centre
    region) a positive, weighted by centre-ness: many positives per box, which is what matters
    when a dataset has few boxes.
  * Images without boxes, and examples without box annotations, need nothing special: the
    former are all-negative points; the latter are masked out of the loss per example
    (`has_boxes`, see `detection_loss`).

Conventions. Images are [B, H, W, C]. Boxes are absolute pixel coordinates (ymin, xmin, ymax,
xmax) in continuous image space where pixel (i, j) covers [i, i+1) x [j, j+1). The point of cell
(i, j) of a stride-s level is its centre ((i + 0.5) s, (j + 0.5) s), stored as (y, x). Distances
are ordered (l, t, r, b) = (x - xmin, y - ymin, xmax - x, ymax - y), in pixels.
Points of all levels are concatenated level by level (finest first), row-major within a level;
`points_for` reproduces that order from the image size.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cxr_jax.models.layers import GroupBatchNorm, conv, resize_bilinear

# ResNet / DenseNet pyramid levels the head reads by default: stride 8 and 16.
DEFAULT_LEVELS = (('stage2', 8), ('stage3', 16))
_MAX_LOG_DISTANCE = 10.0  # exp(10) strides: caps the box regression before exp overflows


# ----- points and size ranges -------------------------------------------------------------------

def level_points(feature_hw: tuple[int, int], stride: int) -> np.ndarray:
  """Centres (y, x) [h*w, 2] of the cells of one level, row-major."""
  h, w = feature_hw
  ys = (np.arange(h, dtype=np.float32) + 0.5) * stride
  xs = (np.arange(w, dtype=np.float32) + 0.5) * stride
  yy, xx = np.meshgrid(ys, xs, indexing='ij')
  return np.stack([yy.reshape(-1), xx.reshape(-1)], axis=-1)


def points_for(image_hw: tuple[int, int], strides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Points [P, 2] (y, x) and the stride of each point [P] for an input of size image_hw.

  Level sizes are ceil(H / s) x ceil(W / s), what the encoders' 'SAME'-padded stride-2 layers
  produce; `DetectionHead` returns the same points computed from the actual feature shapes.
  """
  points, point_strides = [], []
  for s in strides:
    hw = (-(-image_hw[0] // s), -(-image_hw[1] // s))
    points.append(level_points(hw, s))
    point_strides.append(np.full((hw[0] * hw[1],), s, np.float32))
  return np.concatenate(points), np.concatenate(point_strides)


def level_size_ranges(point_strides: np.ndarray, bounds: Sequence[float] | None = None
                      ) -> np.ndarray:
  """Per-point (lo, hi] range [P, 2] of the largest ltrb distance a level is responsible for.

  `bounds` has one entry more than there are levels (ascending strides): level i takes boxes
  with lo_i < max(l, t, r, b) <= hi_i, lo_i = bounds[i], hi_i = bounds[i + 1]. Default: FCOS's
  rule, boundary 8 * stride after each level (64 after stride 8, 128 after 16, ...), 0 below
  the first and infinity above the last, so every box is some level's responsibility.
  """
  point_strides = np.asarray(point_strides)
  levels = np.unique(point_strides)
  if bounds is None:
    bounds = [0.0] + [8.0 * s for s in levels[:-1]] + [np.inf]
  if len(bounds) != len(levels) + 1:
    raise ValueError(f'size bounds {bounds} need {len(levels) + 1} entries for strides {levels}')
  ranges = np.zeros((point_strides.shape[0], 2), np.float32)
  for i, s in enumerate(levels):
    ranges[point_strides == s] = (bounds[i], bounds[i + 1])
  return ranges


# ----- the head ---------------------------------------------------------------------------------

class _Norm(nnx.Module):
  """GroupNorm (batch-independent; FCOS's choice) or the codebase's GroupBatchNorm."""

  def __init__(self, ch: int, kind: str, *, groups: int, bn_group_size, dtype, rngs):
    self.kind = kind
    if kind == 'group':
      self.norm = nnx.GroupNorm(ch, num_groups=math.gcd(groups, ch), epsilon=1e-5, dtype=dtype,
                                rngs=rngs)
    elif kind == 'batch':
      self.norm = GroupBatchNorm(ch, group_size=bn_group_size, dtype=dtype)
    else:
      raise ValueError(f"detection head norm {kind!r} is not 'group' or 'batch'")

  def __call__(self, x, *, train):
    return self.norm(x) if self.kind == 'group' else self.norm(x, train=train)


def _predictor(in_ch, out_ch, bias, *, dtype, rngs):
  """3x3 output conv, weights N(0, 0.01^2) as in RetinaNet / FCOS."""
  return nnx.Conv(in_ch, out_ch, (3, 3), padding='SAME', dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nnx.initializers.normal(0.01),
                  bias_init=nnx.initializers.constant(bias), rngs=rngs)


class DetectionHead(nnx.Module):
  """FCOS head over encoder features. `__call__(features, *, train)` -> dict (all float32):

    'cls_logits' [B, P, num_classes]  sigmoid logits per class,
    'box_ltrb'   [B, P, 4]            predicted (l, t, r, b) distances in pixels (> 0),
    'centerness' [B, P]               centre-ness logit,
    'points'     [P, 2]               (y, x) pixel centres (constants),
    'strides'    [P]                  stride of each point (constants).

  Layout: a 1x1 lateral conv brings each level to `width` channels and a top-down path adds
  the upsampled coarser level to each finer one (FPN, so stride-8 points see stride-16
  context). Then two towers of `depth` 3x3 conv-norm-ReLU layers, one for classification and
  one for the box and centre-ness, followed by 3x3 output convs (centre-ness on the regression
  branch, as in the improved FCOS rather than the paper's classification branch). Convolutions
  are shared across levels; normalisation layers are per level (with 'batch' norm, each level
  keeps its own running statistics). Box distances are `stride * exp(scale_level * raw)` with a
  learned per-level scale (init 1), so the output is in units of the stride and starts at one
  stride. The classification bias starts at -log((1 - prior) / prior): every point predicts
  `prior` (0.01), so the focal loss of the many background points does not swamp the first
  steps.

  Args:
    in_channels: channels per encoder feature (`unet.encoder_channels(encoder)`).
    num_classes: box classes (sigmoid per class, no background class).
    levels: (feature name, stride) pairs, strides increasing.
    width, depth: channels and 3x3 conv layers of each tower.
    norm: 'group' (GroupNorm, gcd(norm_groups, width) groups) or 'batch' (GroupBatchNorm over
      ghost batches of `bn_group_size`).
    prior_prob: initial class probability.
  """

  def __init__(self, in_channels: dict[str, int], num_classes: int, *,
               levels: Sequence[tuple[str, int]] = DEFAULT_LEVELS, width: int = 128,
               depth: int = 4, norm: str = 'group', norm_groups: int = 32,
               bn_group_size: int | None = None, prior_prob: float = 0.01, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.levels = tuple((name, int(stride)) for name, stride in levels)
    if list(self.strides) != sorted(set(self.strides)):
      raise ValueError(f'detection levels {levels} must have strictly increasing strides')
    self.num_classes = num_classes
    self.depth = depth
    self.dtype = dtype
    names = [name for name, _ in self.levels]

    def norms():
      return nnx.Dict({n: _Norm(width, norm, groups=norm_groups, bn_group_size=bn_group_size,
                                dtype=dtype, rngs=rngs) for n in names})

    self.lateral = nnx.Dict({n: conv(in_channels[n], width, 1, dtype=dtype, rngs=rngs,
                                     use_bias=True) for n in names})
    towers = {}
    for branch in ('cls', 'box'):
      towers[branch] = nnx.Dict({
          f'layer{i}': nnx.Dict({'conv': conv(width, width, 3, dtype=dtype, rngs=rngs),
                                 'norm': norms()}) for i in range(depth)})
    self.towers = nnx.Dict(towers)
    self.cls_out = _predictor(width, num_classes, -math.log((1 - prior_prob) / prior_prob),
                              dtype=dtype, rngs=rngs)
    self.box_out = _predictor(width, 4, 0.0, dtype=dtype, rngs=rngs)
    self.ctr_out = _predictor(width, 1, 0.0, dtype=dtype, rngs=rngs)
    self.scales = nnx.Dict({n: nnx.Param(jnp.ones((), jnp.float32)) for n in names})

  @property
  def strides(self) -> tuple[int, ...]:
    return tuple(stride for _, stride in self.levels)

  def _tower(self, branch, x, level, *, train):
    tower = self.towers[branch]
    for i in range(self.depth):
      layer = tower[f'layer{i}']
      x = jax.nn.relu(layer['norm'][level](layer['conv'](x), train=train))
    return x

  def __call__(self, features: dict[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
    # Lateral projections and the top-down path, coarsest level first.
    pyramid = {}
    coarser = None
    for name, _ in reversed(self.levels):
      x = self.lateral[name](features[name].astype(self.dtype))
      if coarser is not None:
        x = x + resize_bilinear(coarser, x.shape[1:3]).astype(x.dtype)
      pyramid[name] = coarser = x

    cls_all, box_all, ctr_all, points, strides = [], [], [], [], []
    for name, stride in self.levels:
      x = pyramid[name]
      b, h, w, _ = x.shape
      cls = self.cls_out(self._tower('cls', x, name, train=train)).astype(jnp.float32)
      box_features = self._tower('box', x, name, train=train)
      raw = self.box_out(box_features).astype(jnp.float32) * self.scales[name][...]
      ltrb = stride * jnp.exp(jnp.minimum(raw, _MAX_LOG_DISTANCE))
      ctr = self.ctr_out(box_features).astype(jnp.float32)
      cls_all.append(cls.reshape(b, h * w, self.num_classes))
      box_all.append(ltrb.reshape(b, h * w, 4))
      ctr_all.append(ctr.reshape(b, h * w))
      points.append(level_points((h, w), stride))
      strides.append(np.full((h * w,), stride, np.float32))
    return {'cls_logits': jnp.concatenate(cls_all, axis=1),
            'box_ltrb': jnp.concatenate(box_all, axis=1),
            'centerness': jnp.concatenate(ctr_all, axis=1),
            'points': jnp.asarray(np.concatenate(points)),
            'strides': jnp.asarray(np.concatenate(strides))}


# ----- boxes ------------------------------------------------------------------------------------

def ltrb_to_boxes(points: jax.Array, ltrb: jax.Array) -> jax.Array:
  """(y, x) points [..., 2] and (l, t, r, b) [..., 4] -> boxes (ymin, xmin, ymax, xmax)."""
  y, x = points[..., 0], points[..., 1]
  l, t, r, b = (ltrb[..., i] for i in range(4))
  return jnp.stack([y - t, x - l, y + b, x + r], axis=-1)


def iou_and_giou(boxes_a: jax.Array, boxes_b: jax.Array, eps: float = 1e-7
                 ) -> tuple[jax.Array, jax.Array]:
  """Element-wise (broadcasting) IoU and generalised IoU of (ymin, xmin, ymax, xmax) boxes.

  GIoU (Rezatofighi et al. 2019) = IoU - (|C| - |A u B|) / |C|, C the smallest box enclosing
  both; unlike IoU it still has a gradient when the boxes do not overlap. Range (-1, 1].
  """
  def area(bx):
    return jnp.maximum(bx[..., 2] - bx[..., 0], 0.0) * jnp.maximum(bx[..., 3] - bx[..., 1], 0.0)

  lo = jnp.maximum(boxes_a[..., :2], boxes_b[..., :2])
  hi = jnp.minimum(boxes_a[..., 2:], boxes_b[..., 2:])
  inter = jnp.prod(jnp.maximum(hi - lo, 0.0), axis=-1)
  union = area(boxes_a) + area(boxes_b) - inter
  iou = inter / (union + eps)
  enclose_lo = jnp.minimum(boxes_a[..., :2], boxes_b[..., :2])
  enclose_hi = jnp.maximum(boxes_a[..., 2:], boxes_b[..., 2:])
  enclose = jnp.prod(jnp.maximum(enclose_hi - enclose_lo, 0.0), axis=-1)
  return iou, iou - (enclose - union) / (enclose + eps)


# ----- targets ----------------------------------------------------------------------------------

def assign_targets(points: jax.Array, strides: jax.Array, gt_boxes: jax.Array,
                   gt_labels: jax.Array, gt_valid: jax.Array, size_ranges: jax.Array, *,
                   center_radius: float | None = 1.5) -> dict[str, jax.Array]:
  """FCOS target assignment; fixed shapes, jit-able.

  Args:
    points: [P, 2] (y, x) point centres; strides: [P] (both from `points_for` or the head).
    gt_boxes: [B, M, 4] (ymin, xmin, ymax, xmax) pixels, padded to M boxes per image.
    gt_labels: [B, M] int class ids in [0, num_classes); gt_valid: [B, M] bool (padding False).
    size_ranges: [P, 2] (lo, hi] of max(l, t, r, b) per point (`level_size_ranges`).
    center_radius: a point is a candidate for a box only within this many strides of the box
      centre (FCOS "centre sampling", 1.5); None = anywhere inside the box.
  A point is positive for box m if it is inside box m (strictly; with centre sampling inside the
  centre square clipped to the box), lo < max(l, t, r, b) <= hi, and the box is valid with a
  positive area; among several such boxes it takes the one of smallest area (ties: lowest m).
  Boxes smaller than the stride may own no point (as in FCOS).

  Returns a dict: 'labels' [B, P] int32 (class id, -1 = background), 'ltrb' [B, P, 4] pixel
  distances to the assigned box (0 for background), 'centerness' [B, P] sqrt(min(l, r) /
  max(l, r) * min(t, b) / max(t, b)) (0 for background), 'positive' [B, P] bool.
  """
  points = jnp.asarray(points, jnp.float32)
  strides = jnp.asarray(strides, jnp.float32)
  size_ranges = jnp.asarray(size_ranges, jnp.float32)
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  y = points[None, :, None, 0]  # [1, P, 1]
  x = points[None, :, None, 1]
  ymin, xmin, ymax, xmax = (gt_boxes[:, None, :, i] for i in range(4))  # [B, 1, M]
  ltrb = jnp.stack([x - xmin, y - ymin, xmax - x, ymax - y], axis=-1)  # [B, P, M, 4]

  if center_radius:
    radius = center_radius * strides[None, :, None]
    cy, cx = (ymin + ymax) / 2, (xmin + xmax) / 2
    inside = ((y > jnp.maximum(cy - radius, ymin)) & (y < jnp.minimum(cy + radius, ymax)) &
              (x > jnp.maximum(cx - radius, xmin)) & (x < jnp.minimum(cx + radius, xmax)))
  else:
    inside = jnp.min(ltrb, axis=-1) > 0
  max_dist = jnp.max(ltrb, axis=-1)
  in_range = ((max_dist > size_ranges[None, :, None, 0]) &
              (max_dist <= size_ranges[None, :, None, 1]))
  area = (ymax - ymin) * (xmax - xmin)  # [B, 1, M]
  ok_box = jnp.asarray(gt_valid, bool)[:, None, :] & (area > 0)
  candidate = inside & in_range & ok_box  # [B, P, M]

  owner = jnp.argmin(jnp.where(candidate, area, jnp.inf), axis=-1)  # [B, P]
  positive = jnp.any(candidate, axis=-1)
  target_ltrb = jnp.take_along_axis(ltrb, owner[:, :, None, None], axis=2)[:, :, 0]
  target_ltrb = jnp.where(positive[..., None], target_ltrb, 0.0)
  labels = jnp.take_along_axis(jnp.asarray(gt_labels, jnp.int32)[:, None, :],
                               owner[:, :, None], axis=2)[:, :, 0]
  labels = jnp.where(positive, labels, -1)
  l, t, r, b = (jnp.maximum(target_ltrb[..., i], 0.0) for i in range(4))
  ratio = (jnp.minimum(l, r) / jnp.maximum(jnp.maximum(l, r), 1e-12) *
           jnp.minimum(t, b) / jnp.maximum(jnp.maximum(t, b), 1e-12))
  centerness = jnp.where(positive, jnp.sqrt(ratio), 0.0)
  return {'labels': labels, 'ltrb': target_ltrb, 'centerness': centerness, 'positive': positive}


# ----- loss -------------------------------------------------------------------------------------

def loss_sums(outputs: dict, targets: dict, *, focal_alpha: float = 0.25,
              focal_gamma: float = 2.0, centerness_weighted_box: bool = True
              ) -> dict[str, jax.Array]:
  """Un-normalised per-example sums [B] that `detection_loss` normalises over the batch.

  'cls': focal loss summed over all points and classes; 'box': (1 - GIoU) summed over the
  positives, weighted by the centre-ness target if `centerness_weighted_box`; 'box_weight': the
  sum of those weights; 'centerness': centre-ness BCE summed over the positives; 'num_pos'.
  """
  logits = outputs['cls_logits']
  positive = targets['positive']
  pos = positive.astype(jnp.float32)
  onehot = jax.nn.one_hot(targets['labels'], logits.shape[-1], dtype=logits.dtype)  # -1 -> 0s
  focal = optax.sigmoid_focal_loss(logits, onehot, alpha=focal_alpha, gamma=focal_gamma)

  points = outputs['points']
  _, giou = iou_and_giou(ltrb_to_boxes(points, outputs['box_ltrb']),
                         ltrb_to_boxes(points, targets['ltrb']))
  box_weight = targets['centerness'] * pos if centerness_weighted_box else pos
  ctr_bce = optax.sigmoid_binary_cross_entropy(outputs['centerness'], targets['centerness'])
  return {'cls': jnp.sum(focal, axis=(1, 2)),
          'box': jnp.sum((1.0 - giou) * box_weight, axis=1),
          'box_weight': jnp.sum(box_weight, axis=1),
          'centerness': jnp.sum(ctr_bce * pos, axis=1),
          'num_pos': jnp.sum(pos, axis=1)}


def detection_loss(outputs: dict, targets: dict, has_boxes: jax.Array | None = None, *,
                   focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                   centerness_weighted_box: bool = True, box_loss_weight: float = 1.0,
                   centerness_loss_weight: float = 1.0) -> tuple[jax.Array, dict]:
  """FCOS loss of a batch; returns (total, metrics).

  total = cls + box_loss_weight * box + centerness_loss_weight * centerness with, summed over
  the examples with has_boxes:
    cls        = sum of focal losses (alpha, gamma) over all points / max(#positives, 1),
    box        = sum of (1 - GIoU) over positives, weighted by their centre-ness target (FCOS)
                 / max(sum of the weights, 1e-6)   (plain: weight 1, i.e. / #positives),
    centerness = sum of the centre-ness BCE over positives / max(#positives, 1).
  `has_boxes` [B] (bool or 0/1; None = all ones) marks the examples whose box annotation is
  known. The others contribute exactly nothing: neither their points nor their positives enter
  any sum or normaliser, so their (padding) targets can be anything. An annotated image with
  no boxes is has_boxes=1 with every gt_valid False: all its points are trained as background.

  metrics: 'cls', 'box', 'centerness' (the normalised terms), 'num_positives' (over the
  annotated examples), and 'per_example' [B]: each example's share of the total (0 where
  has_boxes is 0; they sum to the total).
  """
  sums = loss_sums(outputs, targets, focal_alpha=focal_alpha, focal_gamma=focal_gamma,
                   centerness_weighted_box=centerness_weighted_box)
  batch = sums['cls'].shape[0]
  mask = jnp.ones((batch,), bool) if has_boxes is None else jnp.asarray(has_boxes) > 0
  # where, not a product: a masked example's term is dropped even if it is not finite.
  sums = {k: jnp.where(mask, v, 0.0) for k, v in sums.items()}
  num_pos = jnp.maximum(jnp.sum(sums['num_pos']), 1.0)
  box_norm = jnp.maximum(jnp.sum(sums['box_weight']), 1e-6)
  per_example = (sums['cls'] / num_pos + box_loss_weight * sums['box'] / box_norm +
                 centerness_loss_weight * sums['centerness'] / num_pos)
  cls = jnp.sum(sums['cls']) / num_pos
  box = jnp.sum(sums['box']) / box_norm
  ctr = jnp.sum(sums['centerness']) / num_pos
  total = cls + box_loss_weight * box + centerness_loss_weight * ctr
  metrics = {'cls': cls, 'box': box, 'centerness': ctr, 'num_positives': jnp.sum(sums['num_pos']),
             'per_example': per_example}
  return total, metrics


# ----- inference (host side) ---------------------------------------------------------------------

def box_iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
  """Pairwise IoU [N, M] of numpy (ymin, xmin, ymax, xmax) boxes [N, 4] and [M, 4]."""
  a, b = np.asarray(boxes_a, np.float64)[:, None], np.asarray(boxes_b, np.float64)[None]
  hw = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
  inter = hw[..., 0] * hw[..., 1]
  area_a = np.prod(np.clip(a[..., 2:] - a[..., :2], 0, None), axis=-1)
  area_b = np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
  return inter / np.maximum(area_a + area_b - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Greedy NMS (numpy): indices of the kept boxes, by decreasing score. A box is dropped when
  its IoU with a higher-scoring kept box is > iou_threshold."""
  order = np.argsort(-np.asarray(scores), kind='stable')
  iou = box_iou_matrix(boxes, boxes)
  keep, suppressed = [], np.zeros(len(order), bool)
  for i in order:
    if suppressed[i]:
      continue
    keep.append(i)
    suppressed |= iou[i] > iou_threshold
  return np.asarray(keep, np.int64)


def decode(outputs: dict, score_threshold: float = 0.05, max_detections: int = 100,
           nms_iou: float = 0.5, *, pre_nms_top_k: int = 1000,
           image_hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
  """Head outputs -> detections per image, on the host in numpy (NMS is data-dependent and
  cheap for the few candidates a radiograph has; run the head under jit, then this).

  Score of (point, class) = sqrt(sigmoid(class logit) * sigmoid(centre-ness)): FCOS ranks by
  the product; the geometric mean keeps it on a probability scale for the threshold.
  Candidates above `score_threshold` (at most `pre_nms_top_k` per image) go through class-wise
  greedy NMS at `nms_iou`, and the best `max_detections` are kept. `image_hw` clips
  boxes to the image.

  Returns padded arrays: 'boxes' [B, K, 4] (ymin, xmin, ymax, xmax pixels), 'scores' [B, K]
  (descending), 'classes' [B, K] int (-1 padding), 'num_detections' [B]; K = max_detections.
  """
  cls = np.asarray(outputs['cls_logits'], np.float64)
  ctr = np.asarray(outputs['centerness'], np.float64)
  ltrb = np.asarray(outputs['box_ltrb'], np.float64)
  points = np.asarray(outputs['points'], np.float64)
  batch, _, num_classes = cls.shape
  def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|

  scores_all = np.sqrt(sigmoid(cls) * sigmoid(ctr)[..., None])
  boxes_all = np.stack([points[:, 0] - ltrb[..., 1], points[:, 1] - ltrb[..., 0],
                        points[:, 0] + ltrb[..., 3], points[:, 1] + ltrb[..., 2]], axis=-1)
  if image_hw is not None:
    limit = np.array([image_hw[0], image_hw[1], image_hw[0], image_hw[1]], np.float64)
    boxes_all = np.clip(boxes_all, 0, limit)

  out_boxes = np.zeros((batch, max_detections, 4), np.float32)
  out_scores = np.zeros((batch, max_detections), np.float32)
  out_classes = np.full((batch, max_detections), -1, np.int32)
  out_num = np.zeros((batch,), np.int32)
  for i in range(batch):
    point_idx, class_idx = np.nonzero(scores_all[i] > score_threshold)
    scores = scores_all[i, point_idx, class_idx]
    top = np.argsort(-scores, kind='stable')[:pre_nms_top_k]
    point_idx, class_idx, scores = point_idx[top], class_idx[top], scores[top]
    boxes = boxes_all[i, point_idx]
    kept = []
    for c in range(num_classes):
      members = np.nonzero(class_idx == c)[0]
      if members.size:
        kept.append(members[nms(boxes[members], scores[members], nms_iou)])
    kept = np.concatenate(kept) if kept else np.zeros((0,), np.int64)
    kept = kept[np.argsort(-scores[kept], kind='stable')][:max_detections]
    n = kept.size
    out_boxes[i, :n] = boxes[kept]
    out_scores[i, :n] = scores[kept]
    out_classes[i, :n] = class_idx[kept]
    out_num[i] = n
  return {'boxes': out_boxes, 'scores': out_scores, 'classes': out_classes,
          'num_detections': out_num}
