"""Orbax checkpoints: the train state plus the data iterator, and partial restores across stages.

Layout: `workdir/checkpoints/<step>/{state, data}`. `state` is the whole TrainState (params, BN
statistics, optimizer state, method extras such as the momentum encoder and queue, the step and the
base RNG key); `data` is each host's grain iterator position. Saves are asynchronous and atomic
(Orbax writes to a temporary directory and renames it when complete), so a job killed mid-save
resumes from the previous complete checkpoint.

`init_from` copies a regex-selected subtree of another workdir's checkpoint into a fresh state:
  config.init_from = dict(workdir='/runs/moco', step=-1, include=r'^(params|model_state)/encoder/')
Paths are the '/'-joined keys of the TrainState, e.g. 'params/encoder/stem_conv/kernel'.
"""

from __future__ import annotations

import os
import re
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cxr_jax.sharding import path_str


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class Checkpointer:
  """Saves and restores (state, data iterator) under workdir/checkpoints."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, save_every_steps: int = 1000,
               async_save: bool = True):
    self._manager = ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_every_steps,
            enable_async_checkpointing=async_save, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def save(self, step: int, state: Any, data_iterator: Any = None, *, force: bool = False) -> bool:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores onto `abstract_state` (ShapeDtypeStructs with the target shardings)."""
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored['state']

  def reached_preemption(self, step: int) -> bool:
    """True once the cluster has announced a preemption (multi-host barrier inside Orbax)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def load_state_arrays(workdir: str, step: int | None = None) -> tuple[dict[str, np.ndarray], int]:
  """All arrays of another run's saved state as {path: numpy array}, and the step loaded."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'init_from.workdir={workdir!r} has no checkpoints/ directory')
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step() if step is None else int(step)
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(f'init_from: no checkpoint for step {step} in {directory} '
                              f'(steps: {sorted(manager.all_steps())})')
    metadata = manager.item_metadata(step)['state']
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend='cpu')[0])
    abstract = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), metadata.tree
        if hasattr(metadata, 'tree') else metadata)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))['state']
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]:
    flat[path_str(path)] = np.asarray(leaf)
  return flat, step


def init_from(state: Any, source: dict[str, np.ndarray], include: str,
              exclude: str | None = None) -> tuple[Any, list[str]]:
  """Replaces the leaves of `state` whose path matches `include` (and not `exclude`) by `source`'s.

  Every selected path must exist in `source` with the same shape; otherwise a ValueError names the
  first offending path. Returns the new state and the sorted list of copied paths.
  """
  include_re = re.compile(include)
  exclude_re = re.compile(exclude) if exclude else None
  copied, problems = [], []

  def replace(path, leaf):
    name = path_str(path)
    if not include_re.search(name) or (exclude_re and exclude_re.search(name)):
      return leaf
    if name not in source:
      problems.append(f'{name}: not in the source checkpoint')
      return leaf
    value = source[name]
    if tuple(value.shape) != tuple(leaf.shape):
      problems.append(f'{name}: shape {tuple(value.shape)} in the checkpoint, '
                      f'{tuple(leaf.shape)} in the model')
      return leaf
    copied.append(name)
    return jax.device_put(value.astype(leaf.dtype), leaf.sharding)

  new_state = jax.tree_util.tree_map_with_path(replace, state)
  if problems:
    raise ValueError(f'init_from: {len(problems)} selected arrays do not fit; first: {problems[0]}')
  if not copied:
    raise ValueError(f'init_from.include={include!r} selects no array of the state')
  logging.info('init_from: copied %d arrays matching %r', len(copied), include)
  return new_state, sorted(copied)
