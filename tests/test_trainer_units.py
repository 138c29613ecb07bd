"""Trainer pieces: optimizers, non-finite stop, init_from, paper-scale config tracing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cxr_jax import checkpoint as ckpt_lib
from cxr_jax import methods
from cxr_jax import optim
from cxr_jax import trainer
from tests import util


def _optim_config(name, **fields):
  config = util.load_config('configs/moco.py', 'cpu')
  config.optim.name = name
  config.global_batch_size = 256
  config.optim.base_lr = 0.1
  config.optim.warmup_steps = 10
  for k, v in fields.items():
    config.optim[k] = v
  return config


def test_warmup_cosine_schedule_scales_with_batch():
  config = _optim_config('sgd')
  config.global_batch_size = 512
  schedule = optim.learning_rate_schedule(config, 100)
  peak = 0.1 * 512 / 256
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10, 55, 100)],
                             [0.0, peak / 2, peak, peak / 2, 0.0], atol=1e-6)


@pytest.mark.parametrize('name', ['sgd', 'adamw', 'lars'])
def test_optimizers_reduce_a_quadratic(name):
  config = _optim_config(name, schedule='constant', warmup_steps=0,
                         base_lr=0.05 if name != 'lars' else 20.0, weight_decay=0.0)
  params = {'w': jnp.array([3.0, -2.0]), 'b': jnp.array([1.0])}
  tx = optim.make_optimizer(config, params, 100)
  state = tx.init(params)
  loss = lambda p: jnp.sum(p['w'] ** 2) + jnp.sum(p['b'] ** 2)
  start = float(loss(params))
  for _ in range(50):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.5 * start


def test_lr_multiplier_zero_freezes_and_weight_decay_mask():
  config = _optim_config('sgd', schedule='constant', warmup_steps=0, weight_decay=0.1,
                         weight_decay_exclude='bias$', lr_multipliers=(('^encoder/', 0.0),))
  params = {'encoder': {'kernel': jnp.ones(3)}, 'head': {'kernel': jnp.ones(3),
                                                         'bias': jnp.ones(3)}}
  tx = optim.make_optimizer(config, params, 10)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert np.all(np.asarray(updates['encoder']['kernel']) == 0)       # frozen
  assert np.all(np.asarray(updates['head']['bias']) == 0)            # no decay on biases
  assert np.all(np.asarray(updates['head']['kernel']) < 0)           # decayed


def test_non_finite_loss_stops_with_one_line(tiny_data_dir, tmp_path):
  proc = util.run_main('--config=configs/moco.py:cpu', f'--workdir={tmp_path / "nan"}',
                       *util.tiny_moco_overrides(tiny_data_dir), '--config.num_train_steps=20',
                       '--config.optim.base_lr=1e30', '--config.optim.warmup_steps=0',
                       '--config.checkpoint.every_steps=100', check=False)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: non-finite') and 'at step' in last, last


def test_init_from_copies_exactly_the_selected_subtree_and_refuses_bad_shapes():
  state = {'params': {'encoder': {'w': jnp.zeros((2, 3)), 'b': jnp.zeros(3)},
                      'head': {'w': jnp.zeros((3, 4))}}, 'step': jnp.zeros((), jnp.int32)}
  source = {'params/encoder/w': np.full((2, 3), 1.5, np.float32),
            'params/encoder/b': np.arange(3, dtype=np.float32),
            'params/head/w': np.full((3, 4), 7.0, np.float32), 'step': np.int32(99)}
  new, copied = ckpt_lib.init_from(state, source, include='^params/encoder/')
  assert copied == ['params/encoder/b', 'params/encoder/w']
  np.testing.assert_array_equal(new['params']['encoder']['w'], source['params/encoder/w'])
  np.testing.assert_array_equal(new['params']['encoder']['b'], source['params/encoder/b'])
  np.testing.assert_array_equal(new['params']['head']['w'], np.zeros((3, 4)))
  assert int(new['step']) == 0

  bad = dict(source, **{'params/encoder/w': np.zeros((3, 3), np.float32)})
  with pytest.raises(ValueError, match=r'params/encoder/w: shape \(3, 3\) in the checkpoint, '
                                       r'\(2, 3\) in the model'):
    ckpt_lib.init_from(state, bad, include='^params/encoder/')
  with pytest.raises(ValueError, match='selects no array'):
    ckpt_lib.init_from(state, source, include='^params/decoder/')


def test_paper_scale_moco_config_traces():
  """configs/moco.py (ResNet-50, 224 px, batch 256, K=65,536) builds and traces a step."""
  config = util.load_config('configs/moco.py')
  assert (config.model.depth, config.aug.image_size_px, config.global_batch_size,
          config.moco.queue_size, config.moco.temperature) == (50, 224, 256, 65536, 0.2)
  steps = trainer.num_train_steps(config, 100_000)
  assert steps == 200 * 100_000 // 256
  method = methods.get('moco')(config, steps)
  state = jax.eval_shape(method.init, jax.random.PRNGKey(0))
  assert state.extra['queue'].shape == (65536, 128)
  batch = {'views': jax.ShapeDtypeStruct((256, 2, 224, 224, 1), jnp.uint8),
           'view_params': jax.ShapeDtypeStruct((256, 2, 5), jnp.float32),
           'label': jax.ShapeDtypeStruct((256,), jnp.int32)}
  new_state, metrics = jax.eval_shape(method.train_step, state, batch, jax.random.PRNGKey(1))
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
  assert metrics['loss'].shape == ()
  lr = optim.learning_rate_schedule(config, steps)
  assert float(lr(1)) == pytest.approx(0.03, rel=1e-3)  # 0.03 x 256 / 256, cosine from step 0
