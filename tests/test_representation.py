"""Acceptance runs of the :cpu pre-training configs on the default synthetic_cxr dataset."""

import os

import jax
import numpy as np
import pytest

from cxr_jax import checkpoint as ckpt_lib
from cxr_jax import methods
from cxr_jax import sharding
from cxr_jax import trainer
from cxr_jax.evaluate import probes
from tests import util


def test_moco_cpu_run_beats_random_encoder_by_20_points_knn(synthetic_default_dir, tmp_path):
  data_dir, workdir = synthetic_default_dir, str(tmp_path / 'moco')
  # The README command (the dataset is generated once per test session by the fixture).
  util.run_main('--config=configs/moco.py:cpu', f'--workdir={workdir}',
                f'--config.data.data_dir={data_dir}', timeout=900)

  # The run leaves TensorBoard events, metrics, a checkpoint and its config.
  files = os.listdir(workdir)
  assert any(f.startswith('events.out.tfevents') for f in files)
  assert {'config.json', 'metrics.jsonl', 'final_metrics.json', 'checkpoints'} <= set(files)

  config = util.apply_flags(util.load_config('configs/moco.py', 'cpu'),
                            [f'--config.data.data_dir={data_dir}'])
  losses = util.train_losses(workdir)
  total = max(losses)
  # The first steps use a random initial queue (easy negatives); once it holds real keys
  # (after queue_size / batch steps) the loss must fall.
  # Rows are means over log_every_steps steps; compare the first three after that with the last.
  queue_filled = config.moco.queue_size // config.global_batch_size
  steps = sorted(s for s in losses if s > queue_filled + config.log_every_steps)
  early = np.mean([losses[s] for s in steps[:3]])
  late = np.mean([losses[s] for s in steps[-3:]])
  assert late < early - 0.05, (early, late)

  trained, untrained = knn_trained_and_random(config, workdir, total)
  assert trained >= untrained + 0.20, (trained, untrained)


def knn_trained_and_random(config, workdir: str, total_steps: int) -> tuple[float, float]:
  """The same kNN probe on the run's final encoder and on its untrained initialisation."""
  mesh = sharding.make_mesh(config.mesh, 1)
  method = methods.get(config.method)(config, total_steps)
  evaluator = trainer.Evaluator(config, mesh)
  random_state = jax.jit(method.init)(jax.random.PRNGKey(config.seed))
  arrays, step = ckpt_lib.load_state_arrays(workdir)
  assert step == total_steps
  trained_state, copied = ckpt_lib.init_from(random_state, arrays, include='^(params|model_state)/')
  assert copied

  def knn(state):
    return probes.knn_probe(method.jit_features, state, evaluator, transform=method.eval_transform(),
                            bank_split='train', query_split='validation',
                            num_classes=evaluator.num_classes, k=config.eval.knn.k,
                            temperature=config.eval.knn.temperature)

  trained, untrained = knn(trained_state), knn(random_state)
  print(f'{config.method} kNN accuracy: trained {trained:.4f}, random init {untrained:.4f}')
  return trained, untrained


def test_inpainting_cpu_run_beats_mean_fill_by_30_percent_and_random_knn_by_5_points(
    synthetic_default_dir, tmp_path):
  workdir = str(tmp_path / 'inpaint')
  util.run_main('--config=configs/inpainting.py:cpu', f'--workdir={workdir}',
                f'--config.data.data_dir={synthetic_default_dir}', timeout=900)
  final = [r for r in util.read_metrics(workdir) if 'eval/masked_l1' in r][-1]
  print(f'masked L1 {final["eval/masked_l1"]:.4f}, mean fill {final["eval/mean_fill_masked_l1"]:.4f}'
        f', kNN {final["eval/knn_accuracy"]:.4f}')
  # Hole pixels of the 500 validation images, the same holes for the model and the baseline.
  assert final['eval/masked_l1'] <= 0.7 * final['eval/mean_fill_masked_l1']

  # Reconstructions (image | masked | composite) reach TensorBoard.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  assert 'eval/reconstructions' in acc.Tags()['tensors']

  config = util.apply_flags(util.load_config('configs/inpainting.py', 'cpu'),
                            [f'--config.data.data_dir={synthetic_default_dir}'])
  total = max(util.train_losses(workdir))
  trained, untrained = knn_trained_and_random(config, workdir, total)
  assert trained == pytest.approx(final['eval/knn_accuracy'], abs=1e-6)
  assert trained >= untrained + 0.05, (trained, untrained)
