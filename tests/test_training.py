"""End-to-end training behaviour: device-count invariance, exact resume, TF-free runs."""

import os
import signal
import subprocess
import time

import jax
import numpy as np

from cxr_jax import checkpoint as ckpt_lib
from cxr_jax import trainer
from tests import util


def _tiny_config(data_dir, *extra):
  config = util.load_config('configs/moco.py', 'cpu')
  return util.apply_flags(config, util.tiny_moco_overrides(data_dir) + [
      '--config.compilation_cache_dir=', *extra])


def test_losses_do_not_depend_on_the_device_count(tiny_data_dir, tmp_path):
  losses = {}
  for n in (1, 8):
    config = _tiny_config(tiny_data_dir, '--config.num_train_steps=5', f'--config.num_devices={n}',
                          '--config.checkpoint.every_steps=100')
    trainer.train_and_evaluate(config, str(tmp_path / f'devices{n}'))
    losses[n] = util.train_losses(str(tmp_path / f'devices{n}'))
  assert sorted(losses[1]) == [1, 2, 3, 4, 5]
  one = np.array([losses[1][s] for s in range(1, 6)])
  eight = np.array([losses[8][s] for s in range(1, 6)])
  assert np.ptp(one) > 1e-2  # the losses move, so agreement is not trivial
  np.testing.assert_allclose(one, eight, atol=1e-4, rtol=0)


def _finalized_steps(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def test_sigkill_then_rerun_resumes_bitwise_exactly(tiny_data_dir, tmp_path):
  total = 40
  args = ['--config=configs/moco.py:cpu', *util.tiny_moco_overrides(tiny_data_dir),
          f'--config.num_train_steps={total}', '--config.checkpoint.every_steps=4',
          f'--config.compilation_cache_dir={tmp_path / "xla_cache"}']
  reference, interrupted = str(tmp_path / 'reference'), str(tmp_path / 'interrupted')
  util.run_main(*args, f'--workdir={reference}')

  proc = subprocess.Popen(util.main_command(*args, f'--workdir={interrupted}'), cwd=util.REPO,
                          env=util.subprocess_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while proc.poll() is None and time.monotonic() < deadline:
    if any(s >= 8 for s in _finalized_steps(interrupted)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'the run ended before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_finalized_steps(interrupted))
  assert 8 <= killed_at < total

  rerun = util.run_main(*args, f'--workdir={interrupted}')
  assert 'Resuming from step' in rerun.stderr

  ref_state, ref_step = ckpt_lib.load_state_arrays(reference)
  new_state, new_step = ckpt_lib.load_state_arrays(interrupted)
  assert ref_step == new_step == total
  assert ref_state.keys() == new_state.keys()
  different = [k for k in ref_state if not np.array_equal(ref_state[k], new_state[k])]
  assert not different, f'{len(different)} arrays differ, e.g. {different[:3]}'


def test_training_without_tensorflow(tiny_data_dir, tmp_path):
  """TPU VMs and GPU images often lack TensorFlow: training, eval and checkpoints still work."""
  workdir = str(tmp_path / 'notf')
  proc = util.run_main('--config=configs/moco.py:cpu', f'--workdir={workdir}',
                       *util.tiny_moco_overrides(tiny_data_dir), '--config.num_train_steps=6',
                       '--config.eval_every_steps=6', '--config.checkpoint.every_steps=3',
                       preamble='from tests import notf; notf.install()')
  assert 'Metric writer: TensorFlow-free backend' in proc.stderr
  rows = util.read_metrics(workdir)
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2, 3, 4, 5, 6]
  assert any('eval/knn_accuracy' in r for r in rows)
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  assert _finalized_steps(workdir)[-1] == 6


def test_init_from_config_restores_the_encoder_of_another_run(tiny_data_dir, tmp_path):
  """Stage chaining as configured: init_from.step=-1 takes the latest checkpoint there."""
  from cxr_jax import methods, sharding  # pylint: disable=g-import-not-at-top
  pretrain = str(tmp_path / 'pretrain')
  trainer.train_and_evaluate(_tiny_config(tiny_data_dir, '--config.num_train_steps=3'), pretrain)
  source, step = ckpt_lib.load_state_arrays(pretrain)
  assert step == 3

  config = _tiny_config(tiny_data_dir, f'--config.init_from.workdir={pretrain}',
                        '--config.seed=7')  # another seed: a different fresh initialisation
  mesh = sharding.make_mesh(config.mesh, 1)
  method = methods.get('moco')(config, 10)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / 'finetune'))
  state, _ = trainer.initial_state(config, method, mesh, checkpointer, None)
  flat = {sharding.path_str(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}
  encoder = [k for k in flat if k.startswith('params/encoder/')]
  assert encoder and all(np.array_equal(flat[k], source[k]) for k in encoder)
  head = [k for k in flat if k.startswith('params/projector/')]
  assert head and not any(np.array_equal(flat[k], source[k]) for k in head)
  assert int(state.step) == 0
