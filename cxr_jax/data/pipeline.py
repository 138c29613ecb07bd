"""grain input pipelines: per-host, deterministic, checkpointable; global batches on the mesh.

Training order (each stage is a grain MapDataset, so any position is addressable):
  sources -> standardise -> shuffle(seed) -> repeat -> mix by weight (`mixture.Mixture`)
  -> random_map(per-example augmentation) -> [p::P] -> batch
Shuffling and augmentation happen *before* the per-process slice, so example i of the global stream
and its augmentation are the same for any number of hosts; process p reads positions p, p+P, ...
The augmentation RNG is grain's per-index generator derived from the seed, so a resumed iterator
reproduces the same views.

Evaluation reads a split once, in order, padded to whole global batches; padded rows carry
`valid = 0` so metrics over the full split are exact on any number of hosts.
"""

from __future__ import annotations

import collections
import json
import math
from typing import Callable, Iterator, Sequence

import grain
import jax
import numpy as np

from cxr_jax import sharding


def local_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f'global_batch_size={global_batch_size} is not divisible by the '
                     f'{jax.process_count()} processes')
  return global_batch_size // jax.process_count()


def train_dataset(examples: grain.MapDataset, *, seed: int, local_batch: int,
                  transform: Callable[[dict, np.random.Generator], dict]) -> grain.MapDataset:
  """Augments and batches `examples` (shuffled and repeated already) for this process."""
  ds = examples.random_map(transform, seed=seed + 1)
  ds = ds[jax.process_index()::jax.process_count()]
  return ds.batch(local_batch, drop_remainder=True)


def to_iterator(ds: grain.MapDataset, *, num_threads: int, prefetch: int,
                num_workers: int = 0) -> grain.DatasetIterator:
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=prefetch))
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)


def make_train_iterator(config, mixture, transform) -> grain.DatasetIterator:
  """This host's training iterator over the configured sources (a `mixture.Mixture`)."""
  ds = train_dataset(mixture.train_dataset(config.seed), seed=config.seed,
                     local_batch=local_batch_size(
      config.global_batch_size), transform=transform)
  return to_iterator(ds, num_threads=config.data.num_threads, prefetch=config.data.prefetch,
                     num_workers=config.data.num_workers)


def eval_batches(source: grain.MapDataset | Sequence, *, global_batch_size: int,
                 transform: Callable[[dict, np.random.Generator], dict], num_threads: int = 8,
                 seed: int = 0) -> Iterator[dict]:
  """This host's share of every global eval batch, padded; rows get `valid` (1 real, 0 pad).

  The transform's rng depends only on (seed, example index): every evaluation sees the same inputs.
  """
  process, count = jax.process_index(), jax.process_count()
  local_batch = local_batch_size(global_batch_size)
  num_batches = math.ceil(len(source) / global_batch_size)
  ds = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
  ds = ds.random_map(transform, seed=seed)
  ds = ds[process::count]
  it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=32)))
  template = None
  for _ in range(num_batches):
    rows = []
    for _ in range(local_batch):
      row = next(it, None)
      if row is None:
        break
      row = dict(row, valid=np.int32(1))
      template = template or row
      rows.append(row)
    if not rows and template is None:
      return
    while len(rows) < local_batch:
      rows.append(jax.tree_util.tree_map(np.zeros_like, template))
    yield jax.tree_util.tree_map(lambda *xs: np.stack(xs), *rows)


class DeviceIterator:
  """Global batches on the mesh, `prefetch` steps ahead of the consumer.

  Host batches are turned into sharded jax.Arrays ahead of time (the copies overlap with compute).
  Each prefetched batch remembers the grain state *after* it was read, so `get_state` returns the
  position of the last batch handed out, not of the last batch read: a checkpoint then resumes
  exactly at the next unconsumed batch. get_state/set_state use bytes so grain's Orbax handler
  (grain.checkpoint.CheckpointSave/Restore) can save and restore this object directly.
  """

  def __init__(self, host_iterator: grain.DatasetIterator, mesh, prefetch: int = 2):
    self._it = host_iterator
    self._mesh = mesh
    self._prefetch = max(int(prefetch), 1)
    self._queue: collections.deque = collections.deque()
    self._consumed_state = host_iterator.get_state()

  def __iter__(self):
    return self

  def _fill(self):
    while len(self._queue) < self._prefetch:
      host_batch = next(self._it)
      state = self._it.get_state()
      self._queue.append((sharding.host_to_global(host_batch, self._mesh), state))

  def __next__(self):
    self._fill()
    batch, self._consumed_state = self._queue.popleft()
    return batch

  def get_state(self) -> bytes:
    return json.dumps(self._consumed_state).encode()

  def set_state(self, state: bytes) -> None:
    self._queue.clear()
    self._consumed_state = json.loads(state.decode() if isinstance(state, bytes) else state)
    self._it.set_state(self._consumed_state)

  def start_prefetch(self) -> None:
    """Called by grain's checkpoint handler after a restore; batches are fetched lazily."""
