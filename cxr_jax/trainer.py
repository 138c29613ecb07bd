"""The training loop shared by every method.

restore-or-init -> [jit step (donated state) -> periodic log / eval / checkpoint] -> final save.

Read top to bottom: `train_and_evaluate` is the whole story. The per-step work on the host is one
`next()` on the prefetching device iterator and one dispatch of the compiled step; metrics stay on
the device and are fetched every `log_every_steps` (that fetch is also where a non-finite loss
stops the run, and every checkpoint is checked before it is written).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from cxr_jax import checkpoint as ckpt_lib
from cxr_jax import metric_writers
from cxr_jax import methods
from cxr_jax import sharding
from cxr_jax.data import mixture as mixture_lib
from cxr_jax.data import pipeline


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss (or gradient norm) stops being finite."""


class Evaluator:
  """Hands methods global eval batches of any split of any configured source (standardised)."""

  def __init__(self, config, mesh, mixture: mixture_lib.Mixture | None = None):
    self.config = config
    self.mesh = mesh
    self.mixture = mixture or mixture_lib.Mixture(config)
    shards = sharding.num_batch_shards(mesh)
    # Eval batches are padded anyway, so round the batch up to what the mesh can split evenly.
    self.global_batch_size = -(-config.eval.global_batch_size // shards) * shards
    self.num_classes = len(self.mixture.targets.class_names)

  def source(self, split: str, source_index: int = 0):
    return self.mixture.split_dataset(source_index, split)

  def batches(self, split: str, transform, source_index: int = 0):
    for host_batch in pipeline.eval_batches(
        self.source(split, source_index), global_batch_size=self.global_batch_size,
        transform=transform, num_threads=self.config.data.num_threads):
      yield sharding.host_to_global(host_batch, self.mesh)


def num_train_steps(config, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(int(config.num_epochs * num_train_examples // config.global_batch_size), 1)


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
  host = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def _check_finite(metrics: dict[str, float], step: int, last_saved: int | None) -> None:
  bad = {k: v for k, v in metrics.items() if k in ('loss', 'grad_norm') and not math.isfinite(v)}
  if bad:
    where = (f'last checkpoint: step {last_saved}' if last_saved is not None
             else 'no checkpoint was written')
    raise NonFiniteLossError(f'non-finite {", ".join(f"{k}={v}" for k, v in bad.items())} at '
                             f'step {step}; stopping ({where})')


def initial_state(config, method, mesh, checkpointer, device_iterator):
  """Restores the latest checkpoint of this workdir, or initialises (and applies init_from)."""
  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(method.init, rng)
  state_shardings = sharding.state_shardings(abstract, mesh, config.partition_rules)
  latest = checkpointer.latest_step()
  if latest is not None:
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_shardings)
    logging.info('Resuming from step %d', latest)
    return checkpointer.restore(latest, target, device_iterator), state_shardings
  state = jax.jit(method.init, out_shardings=state_shardings)(rng)
  if config.get('init_from') and config.init_from.get('workdir'):
    wanted = config.init_from.step if config.init_from.step >= 0 else None  # -1: latest
    source, step = ckpt_lib.load_state_arrays(config.init_from.workdir, wanted)
    state, copied = ckpt_lib.init_from(state, source, config.init_from.include,
                                       config.init_from.get('exclude'))
    logging.info('init_from %s step %d: %d arrays', config.init_from.workdir, step, len(copied))
  return state, state_shardings


def make_train_step(method, mesh, state_shardings):
  """The jitted training step: state sharded by `state_shardings` and donated, batch split
  over the mesh's batch axes, metrics replicated; the step's rng is fold_in(state.rng, step)."""

  def step_fn(state, batch):
    return method.train_step(state, batch, jax.random.fold_in(state.rng, state.step))

  return jax.jit(step_fn, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=(0,))


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains `config.method` in `workdir`; returns the last train and eval metrics."""
  mesh = sharding.make_mesh(config.mesh, config.num_devices)
  logging.info('Mesh %s over %d devices (%d processes)', dict(mesh.shape), mesh.size,
               jax.process_count())
  if config.global_batch_size % sharding.num_batch_shards(mesh):
    raise ValueError(f'config.global_batch_size={config.global_batch_size} is not divisible by '
                     f'the {sharding.num_batch_shards(mesh)} batch shards of the mesh')

  method_cls = methods.get(config.method)
  # The dataset size sets the schedule length, so read it before building the method.
  mixture = mixture_lib.Mixture(config)
  total_steps = num_train_steps(config, mixture.num_train_examples())
  method = method_cls(config, total_steps, mixture.targets)

  host_iterator = pipeline.make_train_iterator(config, mixture, method.train_transform())
  train_iter = pipeline.DeviceIterator(host_iterator, mesh, prefetch=config.data.device_prefetch)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                       save_every_steps=config.checkpoint.every_steps,
                                       async_save=config.checkpoint.async_save)
  state, state_shardings = initial_state(config, method, mesh, checkpointer, train_iter)
  start_step = int(jax.device_get(state.step))

  train_step = make_train_step(method, mesh, state_shardings)
  writer = metric_writers.create_writer(workdir, is_main_process=jax.process_index() == 0)
  if start_step == 0:
    writer.write_hparams(config.to_dict())
  progress = metric_writers.ProgressReporter(
      total_steps, writer, every_steps=config.log_every_steps,
      examples_per_step=config.global_batch_size)
  evaluator = Evaluator(config, mesh, mixture)

  logging.info('Training %s for %d steps (global batch %d) from step %d', config.method,
               total_steps, config.global_batch_size, start_step)
  pending: list[dict] = []
  last_train, last_eval = {}, {}
  last_saved = checkpointer.latest_step()
  compile_start = time.monotonic()
  try:
    for step in range(start_step + 1, total_steps + 1):
      batch = next(train_iter)
      with jax.transfer_guard('disallow'):
        state, metrics = train_step(state, batch)
      pending.append(metrics)
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        logging.info('First step (compile included) took %.1f s',
                     time.monotonic() - compile_start)
        progress(step)  # the reporter's time baseline starts after compilation

      is_last = step == total_steps
      preempted = checkpointer.reached_preemption(step)
      save_now = is_last or preempted or checkpointer.should_save(step)
      if pending and (step % config.log_every_steps == 0 or is_last or save_now):
        last_train = _mean_metrics(pending)
        pending = []
        writer.write_scalars(step, {f'train/{k}': v for k, v in last_train.items()})
        _check_finite(last_train, step, last_saved)  # before any checkpoint of this state
        progress(step)  # after the fetch above, so its rates measure finished steps
      if config.eval_every_steps and (step % config.eval_every_steps == 0 or is_last):
        results = method.evaluate(state, evaluator)
        # Scalars go to write_scalars; [N, H, W, C] arrays (e.g. reconstructions) are images.
        images = {f'eval/{k}': v for k, v in results.items() if np.ndim(v) == 4}
        last_eval = {k: float(v) for k, v in results.items() if v is not None and np.ndim(v) == 0}
        if images:
          writer.write_images(step, images)
        if last_eval:
          writer.write_scalars(step, {f'eval/{k}': v for k, v in last_eval.items()})
          logging.info('step %d eval: %s', step,
                       ', '.join(f'{k}={v:.4f}' for k, v in last_eval.items()))
      if save_now:
        checkpointer.save(step, state, train_iter, force=is_last or preempted)
        last_saved = step
      if preempted:
        logging.warning('Preemption signal at step %d: checkpoint saved, stopping.', step)
        break
  finally:
    # Also on errors: finish in-flight checkpoint writes and flush the logs before leaving.
    checkpointer.wait()
    checkpointer.close()
    writer.flush()
    writer.close()
  return {'train': last_train, 'eval': last_eval, 'state': state, 'method': method,
          'evaluator': evaluator}
