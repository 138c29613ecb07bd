"""Multi-task fine-tuning: one shared encoder, any subset of classification / segmentation /
detection heads (the second stage of MoCo-CXR-style pipelines, and MultiCheXNet).

Model. `config.model` picks the encoder (ResNet or DenseNet); `config.heads` switches heads on:
  classification  pooled features -> dropout -> linear; softmax (multi-class) or sigmoid
                  (config.data.multi_label) over config.data.class_names
  segmentation    U-Net decoder over the encoder's stride 2..32 features (resize + conv upsampling),
                  one logit per pixel for the standardised `mask` target
  detection       FCOS-style anchor-free head on the stride-8 and stride-16 features
                  (cxr_jax.models.detection, which explains the choice)
One model class covers every combination; a disabled head has no parameters.

Losses. CE (optional class weights and focal gamma) or BCE; BCE + soft Dice on masks; focal +
GIoU + centre-ness for boxes. Each head's loss is a mean over the examples that carry its target
(`has_label` / `has_mask` / `has_boxes` from cxr_jax.data.mixture), so batches can mix datasets
with disjoint label sets and an example without a target contributes exactly nothing to that
head. With `config.loss.positive_only` (MultiCheXNet) segmentation and detection losses count only
examples with a finding (mask pixels or boxes). Heads are combined with fixed weights
(`config.loss.weights`) or with learned homoscedastic-uncertainty weights (Kendall et al. 2018:
sum_i exp(-s_i) L_i + s_i, s_i trained with the network).

Stage chaining is the trainer's `config.init_from` (encoder subtree from a MoCo / inpainting /
MUSCLE workdir); `config.optim.lr_multipliers=(('^encoder/', 0.1),)` gives the encoder a lower
learning rate and `(('^encoder/', 0.0),)` freezes it (linear probe).

Evaluation covers the full validation split of every configured source on all hosts: accuracy,
F1, sensitivity / specificity, AUROC with bootstrap CIs; Dice, IoU, HD95; AP@0.5 and mAP@0.5
(cxr_jax.evaluate.metrics).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cxr_jax import models
from cxr_jax.data import augment
from cxr_jax.evaluate import metrics as metrics_lib
from cxr_jax.methods import base
from cxr_jax.models import detection
from cxr_jax.models import unet

HEADS = ('classification', 'segmentation', 'detection')


class MultiTaskNet(nnx.Module):
  """Encoder + the enabled heads. `__call__` -> dict of head outputs; `features` -> pooled."""

  def __init__(self, config, *, num_classes: int, num_box_classes: int, rngs: nnx.Rngs):
    dtype = base.compute_dtype(config)
    heads = config.heads
    self.encoder = models.build_encoder(config.model, dtype=dtype, rngs=rngs)
    self.dropout_rate = float(heads.classification.get('dropout', 0.0))
    # A disabled head is None (no parameters); nnx.data marks the attributes as submodules.
    classifier = segmenter = detector = None
    if heads.classification.enabled:
      classifier = nnx.Linear(self.encoder.num_features, num_classes, dtype=dtype, rngs=rngs)
    if heads.segmentation.enabled:
      segmenter = unet.Decoder(
          unet.encoder_channels(self.encoder), out_channels=1,
          widths=tuple(heads.segmentation.widths), skips=True,
          bn_group_size=config.model.bn_group_size or None, dtype=dtype, rngs=rngs)
    if heads.detection.enabled:
      channels = unet.encoder_channels(self.encoder)
      det = heads.detection
      detector = detection.DetectionHead(
          {level: channels[level] for level in det.levels}, num_box_classes,
          levels=tuple(zip(det.levels, det.strides)), width=det.width, depth=det.depth,
          norm=det.norm, norm_groups=det.norm_groups,
          bn_group_size=config.model.bn_group_size or None, dtype=dtype, rngs=rngs)
    self.classifier = nnx.data(classifier)
    self.segmenter = nnx.data(segmenter)
    self.detector = nnx.data(detector)

  def __call__(self, x, *, train: bool, dropout_rng=None):
    feats = self.encoder(x, train=train)
    out = {}
    if self.classifier is not None:
      pooled = feats['pooled']
      if train and self.dropout_rate > 0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - self.dropout_rate, pooled.shape)
        pooled = jnp.where(keep, pooled / (1.0 - self.dropout_rate), 0)
      out['cls_logits'] = self.classifier(pooled).astype(jnp.float32)
    if self.segmenter is not None:
      out['seg_logits'] = self.segmenter(feats, train=train, output_hw=x.shape[1:3])[..., 0]
    if self.detector is not None:
      out['det'] = self.detector(feats, train=train)
    return out

  def features(self, x, *, train: bool):
    return self.encoder(x, train=train)['pooled']


# ----------------------------------------------------------------------------------- losses


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """sum(w * v) / max(sum(w), 1): mean over the examples that carry a target (0 if none)."""
  weights = weights.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def classification_loss(logits, labels, multi_hot, *, multi_label: bool, class_weights=None,
                        focal_gamma: float = 0.0) -> jax.Array:
  """Per-example loss [B]: softmax CE (optionally class-weighted, focal) or mean sigmoid BCE."""
  if multi_label:
    bce = (jnp.maximum(logits, 0) - logits * multi_hot
           + jnp.log1p(jnp.exp(-jnp.abs(logits))))
    return jnp.mean(bce, axis=-1)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  log_pt = jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
  loss = -log_pt
  if focal_gamma:
    loss = loss * (1.0 - jnp.exp(log_pt)) ** focal_gamma
  if class_weights is not None:
    loss = loss * jnp.asarray(class_weights, jnp.float32)[labels]
  return loss


def segmentation_loss(logits, target, *, dice_weight: float = 1.0, bce_weight: float = 1.0,
                      eps: float = 1.0) -> jax.Array:
  """Per-example BCE (mean over pixels) + soft Dice loss [B]; logits/target [B, H, W]."""
  target = target.astype(jnp.float32)
  bce = jnp.mean(jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits))),
                 axis=(1, 2))
  p = jax.nn.sigmoid(logits)
  inter = jnp.sum(p * target, axis=(1, 2))
  dice = 1.0 - (2.0 * inter + eps) / (jnp.sum(p, axis=(1, 2)) + jnp.sum(target, axis=(1, 2)) + eps)
  return bce_weight * bce + dice_weight * dice


def combine(losses: dict[str, jax.Array], weights: dict[str, float], mode: str,
            log_vars: jax.Array | None) -> jax.Array:
  """Fixed weighted sum, or Kendall et al.'s uncertainty weighting sum exp(-s) L + s."""
  names = sorted(losses)
  if mode == 'fixed':
    return sum(weights[n] * losses[n] for n in names)
  if mode == 'uncertainty':
    return sum(jnp.exp(-log_vars[HEADS.index(n)]) * losses[n] + log_vars[HEADS.index(n)]
               for n in names)
  raise ValueError(f"config.loss.weighting={mode!r} is not 'fixed' or 'uncertainty'")


# ----------------------------------------------------------------------------------- method


class MultiTask(base.Method):
  """See the module docstring. Config: model, heads, loss, aug, data (class names, sources)."""

  def __init__(self, config, num_train_steps: int, targets=None):
    if config.aug.hflip_prob:
      raise ValueError('config.aug.hflip_prob must be 0 for multitask: flips are applied on the '
                       'device to images only, not to masks and boxes')
    if not any(config.heads[h].enabled for h in HEADS):
      raise ValueError('config.heads enables no head (classification/segmentation/detection)')
    self.class_names = tuple(config.data.class_names) or (
        tuple(targets.class_names) if targets else ())
    self.box_class_names = tuple(config.data.box_class_names) or (
        tuple(targets.box_class_names) if targets else ())
    if config.heads.classification.enabled and not self.class_names:
      raise ValueError('classification head without class names: set config.data.class_names '
                       'or use a source with a `label` feature')
    if config.heads.detection.enabled and not self.box_class_names:
      raise ValueError('detection head without box classes: set config.data.box_class_names '
                       'or use a source with `objects`')
    super().__init__(config, num_train_steps, targets)
    self.jit_predict = jax.jit(self._predict)

  def build_model(self, rngs):
    model = MultiTaskNet(self.config, num_classes=max(len(self.class_names), 1),
                         num_box_classes=max(len(self.box_class_names), 1), rngs=rngs)
    if self.config.loss.weighting == 'uncertainty':
      model.log_vars = nnx.Param(jnp.zeros((len(HEADS),), jnp.float32))
    return model

  # ----- host transforms ------------------------------------------------------------------------
  def train_transform(self):
    return functools.partial(_train_transform, out_size_px=self.config.aug.image_size_px,
                             crop_scale=tuple(self.config.aug.crop_scale),
                             photometric=self.photometric_config())

  def eval_transform(self):
    return functools.partial(_eval_transform, out_size_px=self.config.aug.image_size_px)

  # ----- device step ------------------------------------------------------------------------------
  def _enabled(self, head: str) -> bool:
    return bool(self.config.heads[head].enabled)

  def losses(self, outputs: dict, batch: dict) -> tuple[dict, dict]:
    """Per-head mean losses over the examples that carry the head's target, and statistics."""
    cfg = self.config.loss
    losses, stats = {}, {}
    if self._enabled('classification'):
      per_example = classification_loss(
          outputs['cls_logits'], batch['label'], batch['labels'],
          multi_label=bool(self.config.data.multi_label),
          class_weights=tuple(cfg.class_weights) or None, focal_gamma=cfg.focal_gamma)
      losses['classification'] = masked_mean(per_example, batch['has_label'])
      stats['examples/classification'] = jnp.sum(batch['has_label'])
    positive_only = bool(cfg.positive_only)
    if self._enabled('segmentation'):
      weight = batch['has_mask']
      if positive_only:
        weight = weight & jnp.any(batch['mask'][..., 0] > 0, axis=(1, 2))
      per_example = segmentation_loss(outputs['seg_logits'], batch['mask'][..., 0],
                                      dice_weight=cfg.dice_weight, bce_weight=cfg.bce_weight)
      losses['segmentation'] = masked_mean(per_example, weight)
      stats['examples/segmentation'] = jnp.sum(weight)
    if self._enabled('detection'):
      weight = batch['has_boxes']
      if positive_only:
        weight = weight & (batch['num_boxes'] > 0)
      det_losses = self._detection_loss(outputs['det'], batch, weight)
      losses['detection'] = det_losses.pop('total')
      stats.update({f'detection/{k}': v for k, v in det_losses.items()})
      stats['examples/detection'] = jnp.sum(weight)
    return losses, stats

  def _detection_loss(self, det_outputs, batch, example_weight):
    """FCOS targets from the padded boxes (relative -> pixels), loss over weighted examples."""
    h, w = batch['image'].shape[1:3]
    cfg = self.config.heads.detection
    _, point_strides = detection.points_for((h, w), tuple(cfg.strides))
    bounds = tuple(cfg.size_bounds) or None
    size_ranges = detection.level_size_ranges(point_strides, bounds)
    valid = jnp.arange(batch['boxes'].shape[1])[None, :] < batch['num_boxes'][:, None]
    scale = jnp.asarray([h, w, h, w], jnp.float32)
    targets = detection.assign_targets(det_outputs['points'], det_outputs['strides'],
                                       batch['boxes'] * scale, batch['box_labels'], valid,
                                       jnp.asarray(size_ranges))
    total, det_metrics = detection.detection_loss(det_outputs, targets, example_weight)
    return {'total': total, 'cls': det_metrics['cls'], 'box': det_metrics['box'],
            'centerness': det_metrics['centerness'],
            'num_positives': det_metrics['num_positives']}

  def train_step(self, state, batch, rng):
    images = augment.apply_photometric(batch['image'], batch['image_params'],
                                       float(self.config.aug.blur_sigma[1]))
    x = self.model_input(images)
    cfg = self.config.loss
    weights = {h: float(cfg.weights[h]) for h in HEADS}

    def loss_fn(params):
      outputs, model_state = self.apply(params, state.model_state, x, train=True,
                                        dropout_rng=rng)
      losses, stats = self.losses(outputs, batch)
      log_vars = params.get('log_vars') if cfg.weighting == 'uncertainty' else None
      total = combine(losses, weights, cfg.weighting, log_vars)
      return total, (model_state, losses, stats)

    (loss, (model_state, losses, stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    state, opt_metrics = self.apply_gradients(state, grads, model_state=model_state)
    return state, {'loss': loss, **{f'loss/{k}': v for k, v in losses.items()}, **stats,
                   **opt_metrics}

  # ----- evaluation -------------------------------------------------------------------------------
  def _predict(self, state, images):
    x = self.model_input(images.astype(jnp.float32) / 255.0)
    outputs, _ = self.apply(state.params, state.model_state, x, train=False)
    preds = {}
    if 'cls_logits' in outputs:
      logits = outputs['cls_logits']
      preds['probs'] = (jax.nn.sigmoid(logits) if self.config.data.multi_label
                        else jax.nn.softmax(logits, axis=-1))
    if 'seg_logits' in outputs:
      preds['mask'] = outputs['seg_logits'] > 0
    if 'det' in outputs:
      preds['det'] = {k: outputs['det'][k] for k in ('cls_logits', 'box_ltrb', 'centerness')}
    return preds

  def evaluate(self, state, evaluator):
    """Metrics over the eval split of every source that provides a target."""
    rows = {k: [] for k in ('valid', 'label', 'labels', 'has_label', 'mask', 'has_mask',
                            'boxes', 'box_labels', 'num_boxes', 'has_boxes')}
    pred_rows: dict[str, list] = {}
    for index in range(len(evaluator.mixture.specs)):
      split = evaluator.mixture.specs[index].eval_split
      for batch in evaluator.batches(split, self.eval_transform(), source_index=index):
        preds = self.jit_predict(state, batch['image'])
        host = _to_host({**{k: batch[k] for k in rows},
                         **{f'pred/{k}': v for k, v in preds.items()}})
        for k in rows:
          rows[k].append(np.asarray(host[k]))
        for k, v in host.items():
          if k.startswith('pred/'):
            pred_rows.setdefault(k[5:], []).append(v)
    data = {k: np.concatenate(v) for k, v in rows.items()}
    preds = {k: jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *v)
             for k, v in pred_rows.items()}
    valid = data['valid'] > 0
    results = {}
    if 'probs' in preds:
      results.update(self._classification_metrics(data, preds['probs'], valid))
    if 'mask' in preds:
      keep = valid & data['has_mask']
      if keep.any():
        results.update(metrics_lib.segmentation_report(preds['mask'][keep],
                                                       data['mask'][keep, ..., 0] > 0))
    if 'det' in preds:
      results.update(self._detection_metrics(data, preds['det'], valid))
    return results

  def _classification_metrics(self, data, probs, valid):
    keep = valid & data['has_label']
    if not keep.any():
      return {}
    names = self.class_names
    if self.config.data.multi_label:
      auroc = metrics_lib.per_class_auroc(data['labels'][keep], probs[keep])
      out = {f'auroc/{n}': float(a) for n, a in zip(names, auroc)}
      out['macro_auroc'] = float(np.nanmean(auroc)) if np.isfinite(auroc).any() else float('nan')
      return out
    report, _ = metrics_lib.classification_report(
        data['label'][keep], probs[keep], names,
        num_samples=int(self.config.eval.bootstrap_samples))
    return report

  def _detection_metrics(self, data, det, valid):
    keep = np.flatnonzero(valid & data['has_boxes'])
    if not len(keep):
      return {}
    cfg = self.config.heads.detection
    size = int(self.config.aug.image_size_px)
    points, _ = detection.points_for((size, size), tuple(cfg.strides))
    decoded = detection.decode({**{k: v[keep] for k, v in det.items()}, 'points': points},
                               score_threshold=cfg.score_threshold,
                               max_detections=cfg.max_detections, nms_iou=cfg.nms_iou,
                               image_hw=(size, size))
    detections, truths = [], []
    for j, i in enumerate(keep):
      n = int(decoded['num_detections'][j])
      detections.append((decoded['boxes'][j, :n] / size, decoded['scores'][j, :n],
                         decoded['classes'][j, :n]))
      m = int(data['num_boxes'][i])
      truths.append((data['boxes'][i, :m], data['box_labels'][i, :m]))
    return metrics_lib.detection_report(detections, truths, self.box_class_names,
                                        interpolation=cfg.ap_interpolation)


def _to_host(tree):
  """Global (sharded) arrays -> full numpy arrays on every host (all-gather across hosts)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _targets(example, sample):
  return {'label': np.int32(example['label']), 'labels': np.asarray(example['labels'], np.float32),
          'has_label': np.bool_(example['has_label']), 'has_mask': np.bool_(example['has_mask']),
          'has_boxes': np.bool_(example['has_boxes']), 'mask': sample['mask'],
          'boxes': sample['boxes'], 'box_labels': np.asarray(sample['box_labels'], np.int32),
          'num_boxes': np.int32(sample['num_boxes'])}


def _train_transform(example, rng, *, out_size_px, crop_scale, photometric):
  sample = augment.random_resized_crop_sample(
      example['image'], example['mask'], example['boxes'], example['box_labels'],
      int(example['num_boxes']), rng, out_size_px, crop_scale)
  return {'image': sample['image'],
          'image_params': augment.sample_photometric_params(rng, photometric),
          **_targets(example, sample)}


def _eval_transform(example, rng, *, out_size_px):
  del rng  # deterministic
  sample = augment.center_resize_sample(example['image'], example['mask'], example['boxes'],
                                        example['box_labels'], int(example['num_boxes']),
                                        out_size_px)
  return {'image': sample['image'], **_targets(example, sample)}
