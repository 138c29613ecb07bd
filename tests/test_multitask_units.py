"""Multi-task method: losses vs numpy, disjoint-label masking, positive-only, transforms."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import config_lib
from cxr_jax import methods
from cxr_jax.data import augment
from cxr_jax.methods import multitask
from tests import util

SIZE = 32


def tiny_multitask_overrides(data_dir: str) -> list[str]:
  return [f'--config.data.data_dir={data_dir}', '--config.data.name=synthetic_cxr/tiny',
          '--config.model.width=8', f'--config.aug.image_size_px={SIZE}',
          '--config.global_batch_size=16', '--config.model.bn_group_size=8',
          '--config.eval.global_batch_size=64', '--config.log_every_steps=1',
          '--config.optim.warmup_steps=2', '--config.heads.segmentation.widths=(16, 8, 8, 8)',
          '--config.heads.detection.width=16', '--config.eval.bootstrap_samples=20']


def _method(data_dir, *flags):
  config = util.apply_flags(util.load_config('configs/multitask.py', 'cpu'),
                            tiny_multitask_overrides(data_dir) + list(flags))
  from cxr_jax.data import mixture  # pylint: disable=g-import-not-at-top
  targets = mixture.Mixture(config).targets
  method = methods.get('multitask')(config, 10, targets)
  state = jax.jit(method.init)(jax.random.PRNGKey(0))
  return config, method, state


def _batch(seed=0, n=8):
  rng = np.random.default_rng(seed)
  mask = np.zeros((n, SIZE, SIZE, 1), np.uint8)
  for i in range(n):
    y, x = rng.integers(0, SIZE // 2, 2)
    mask[i, y:y + 10, x:x + 12] = 1
  boxes = np.zeros((n, 16, 4), np.float32)
  boxes[:, 0] = [0.2, 0.25, 0.6, 0.7]
  boxes[:, 1] = [0.5, 0.1, 0.9, 0.4]
  return {
      'image': rng.integers(0, 256, (n, SIZE, SIZE, 1), dtype=np.uint8),
      'label': rng.integers(0, 4, n).astype(np.int32),
      'labels': np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)],
      'mask': mask, 'boxes': boxes, 'box_labels': np.zeros((n, 16), np.int32),
      'num_boxes': np.array([2, 1, 0, 2, 1, 2, 0, 1], np.int32)[:n],
      'has_label': np.array([1, 0, 1, 1, 0, 1, 1, 0], bool)[:n],
      'has_mask': np.array([0, 1, 1, 0, 1, 1, 0, 1], bool)[:n],
      'has_boxes': np.array([1, 1, 0, 1, 0, 1, 1, 0], bool)[:n],
  }


def _losses_fn(method):
  def fn(state, batch):
    x = method.model_input(batch['image'].astype(jnp.float32) / 255.0)
    outputs, _ = method.apply(state.params, state.model_state, x, train=False)
    return method.losses(outputs, batch)[0]
  return jax.jit(fn)


def test_a_head_ignores_examples_without_its_target(tiny_data_dir):
  _, method, state = _method(tiny_data_dir)
  losses = _losses_fn(method)
  batch = _batch()
  base = losses(state, batch)
  assert set(base) == {'classification', 'segmentation', 'detection'}

  # Edit every target of the examples that lack it: no head's loss moves.
  after = losses(state, _edit_targets(batch, carried=False))
  for head in base:
    assert float(after[head]) == pytest.approx(float(base[head]), rel=1e-6, abs=1e-7), head

  # The same edits on examples that do carry the target change every head's loss.
  after = losses(state, _edit_targets(batch, carried=True))
  for head in base:
    assert abs(float(after[head]) - float(base[head])) > 1e-4, head


def _edit_targets(batch, carried: bool):
  """A copy of `batch` whose label, mask and boxes differ on the rows where the head's target
  is present (`carried`) or absent (not `carried`)."""
  changed = {k: v.copy() for k, v in batch.items()}
  rows = {k: batch[f'has_{k}'] == carried for k in ('label', 'mask', 'boxes')}
  changed['label'][rows['label']] = (changed['label'][rows['label']] + 1) % 4
  changed['mask'][rows['mask']] = 1 - changed['mask'][rows['mask']]
  changed['boxes'][rows['boxes'], :2] = [[0.0, 0.0, 0.3, 0.3], [0.6, 0.6, 1.0, 1.0]]
  changed['num_boxes'][rows['boxes']] = 2
  return changed


def test_positive_only_counts_examples_with_findings(tiny_data_dir):
  _, method, state = _method(tiny_data_dir, '--config.loss.positive_only=True')
  batch = _batch()
  batch['mask'][[1, 4]] = 0               # two mask-carrying examples without a finding
  x = method.model_input(batch['image'].astype(jnp.float32) / 255.0)
  outputs, _ = method.apply(state.params, state.model_state, x, train=False)
  losses, stats = method.losses(outputs, batch)
  keep = batch['has_mask'] & batch['mask'].reshape(8, -1).any(1)
  per_example = multitask.segmentation_loss(outputs['seg_logits'], batch['mask'][..., 0])
  assert float(stats['examples/segmentation']) == keep.sum() == 3
  assert float(losses['segmentation']) == pytest.approx(float(per_example[keep].mean()), rel=1e-5)
  boxes_keep = batch['has_boxes'] & (batch['num_boxes'] > 0)
  assert float(stats['examples/detection']) == boxes_keep.sum()


def test_classification_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 6)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ce = -log_p[np.arange(6), labels]
  got = multitask.classification_loss(jnp.asarray(logits), jnp.asarray(labels), None,
                                      multi_label=False)
  np.testing.assert_allclose(got, ce, rtol=1e-5)
  weights = np.array([1.0, 2.0, 0.5, 3.0])
  pt = np.exp(-ce)
  got = multitask.classification_loss(jnp.asarray(logits), jnp.asarray(labels), None,
                                      multi_label=False, class_weights=tuple(weights),
                                      focal_gamma=2.0)
  np.testing.assert_allclose(got, ce * (1 - pt) ** 2 * weights[labels], rtol=1e-5)
  multi_hot = (rng.random((6, 4)) < 0.4).astype(np.float32)
  p = 1 / (1 + np.exp(-logits))
  bce = -(multi_hot * np.log(p) + (1 - multi_hot) * np.log(1 - p)).mean(1)
  got = multitask.classification_loss(jnp.asarray(logits), None, jnp.asarray(multi_hot),
                                      multi_label=True)
  np.testing.assert_allclose(got, bce, rtol=1e-5)


def test_segmentation_loss_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 8, 8)).astype(np.float32)
  target = (rng.random((3, 8, 8)) < 0.3).astype(np.float32)
  p = 1 / (1 + np.exp(-logits))
  bce = -(target * np.log(p) + (1 - target) * np.log(1 - p)).mean((1, 2))
  dice = 1 - (2 * (p * target).sum((1, 2)) + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
  got = multitask.segmentation_loss(jnp.asarray(logits), jnp.asarray(target), dice_weight=0.5,
                                    bce_weight=2.0)
  np.testing.assert_allclose(got, 2.0 * bce + 0.5 * dice, rtol=1e-5)


def test_uncertainty_weighting_formula_and_gradient():
  losses = {'classification': jnp.float32(2.0), 'detection': jnp.float32(0.5)}
  s = jnp.array([0.3, 0.0, -0.2])
  total, grad = jax.value_and_grad(
      lambda s: multitask.combine(losses, {}, 'uncertainty', s))(s)
  assert float(total) == pytest.approx(np.exp(-0.3) * 2 + 0.3 + np.exp(0.2) * 0.5 - 0.2, rel=1e-6)
  np.testing.assert_allclose(grad, [1 - 2 * np.exp(-0.3), 0.0, 1 - 0.5 * np.exp(0.2)], rtol=1e-6)
  fixed = multitask.combine(losses, {'classification': 1.0, 'detection': 3.0}, 'fixed', None)
  assert float(fixed) == pytest.approx(3.5)


def test_joint_crop_keeps_boxes_on_their_mask_region():
  rng = np.random.default_rng(3)
  image = np.zeros((128, 128, 1), np.uint8)
  mask = np.zeros((128, 128, 1), np.uint8)
  mask[40:80, 50:100] = 1
  image[40:80, 50:100] = 200
  boxes = np.zeros((4, 4), np.float32)
  boxes[0] = [40 / 128, 50 / 128, 80 / 128, 100 / 128]
  labels = np.array([3, 0, 0, 0])
  kept = 0
  for _ in range(20):
    out = augment.random_resized_crop_sample(image, mask, boxes, labels, 1, rng, 64, (0.3, 1.0))
    assert not out['boxes'][out['num_boxes']:].any()
    if out['num_boxes'] == 0:
      continue
    kept += 1
    ys, xs = np.nonzero(out['mask'][..., 0])
    want = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]) / 64
    np.testing.assert_allclose(out['boxes'][0], want, atol=2.5 / 64)
    assert out['box_labels'][0] == 3
    # Same crop for image and mask: they differ only on the region's edge (interpolation).
    inside = out['mask'][..., 0] > 0
    kernel = np.ones((3, 3), np.uint8)
    edge = (cv2.dilate(inside.astype(np.uint8), kernel) > 0) & ~(
        cv2.erode(inside.astype(np.uint8), kernel) > 0)
    differ = (out['image'][..., 0] > 100) != inside
    assert not (differ & ~edge).any()
  assert kept >= 10


def _flat(state):
  from cxr_jax.sharding import path_str  # pylint: disable=g-import-not-at-top
  return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}


def test_init_from_moco_copies_exactly_the_encoder_and_checks_shapes(tiny_data_dir):
  from cxr_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  _, method, fresh = _method(tiny_data_dir)
  moco_config = util.apply_flags(util.load_config('configs/moco.py', 'cpu'),
                                 util.tiny_moco_overrides(tiny_data_dir))
  moco = methods.get('moco')(moco_config, 10)
  moco_arrays = _flat(jax.jit(moco.init)(jax.random.PRNGKey(7)))
  # Fresh BN statistics are the same in both models: shift MoCo's so a copy is visible.
  moco_arrays = {k: v + 0.25 if k.startswith('model_state/') else v for k, v in moco_arrays.items()}
  include = config_lib.base_config().init_from.include     # the default: weights + BN statistics
  state, copied = ckpt_lib.init_from(fresh, moco_arrays, include)
  after, before = _flat(state), _flat(fresh)
  encoder = [k for k in after if k.startswith(('params/encoder/', 'model_state/encoder/'))]
  assert copied == sorted(encoder)
  assert sum(k.startswith('params/') for k in encoder) > 20
  assert sum(k.startswith('model_state/') for k in encoder) > 10
  for key, value in after.items():
    if key in encoder:
      np.testing.assert_array_equal(value, moco_arrays[key])
      assert not np.array_equal(value, before[key]) or value.std() == 0
    else:
      np.testing.assert_array_equal(value, before[key])   # heads, optimizer untouched
  # A wider MoCo encoder does not fit: one line naming the first offending array.
  wide = methods.get('moco')(util.apply_flags(moco_config, ['--config.model.width=16']), 10)
  wide_arrays = _flat(jax.jit(wide.init)(jax.random.PRNGKey(7)))
  with pytest.raises(ValueError, match=r'params/encoder/.*shape'):
    ckpt_lib.init_from(fresh, wide_arrays, r'^params/encoder/')
