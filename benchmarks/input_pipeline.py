r"""Input-pipeline benchmark: images/s and images/s per CPU core of the MoCo host pipeline.

Run from the repository root (prepares synthetic_cxr, 256 px, in --data_dir on first use):

  python -m benchmarks.input_pipeline --data_dir=/tmp/tfds
  python -m benchmarks.input_pipeline --data_dir=/tmp/tfds --profile      # + where the time goes
  python -m benchmarks.input_pipeline --data_dir=/tmp/tfds --variants=current --modes=workers2

What runs is the trainer's host pipeline, `cxr_jax.data.pipeline.make_train_iterator`, given what
the trainer gives it (a `mixture.Mixture` of the configured sources; for the older signature, the
decoded train split): the stored (pre-decoded, zlib-compressed 256 px uint8) train split of
`--config.data.name`, shuffle, repeat, the method's `train_transform()` as grain random_map (for
configs/moco.py: two random resized crops to `aug.image_size_px` = 224 px plus the photometric
parameter vectors), batch. Only the batch size, read threads, prefetch and worker count are set
by this script. Nothing goes to a device.

Modes (`--modes`): `threads` (config.data.num_workers = 0: grain read threads in this process),
`workersN` (config.data.num_workers = N: grain worker processes via mp_prefetch, each with its
own read threads; default workers1 and workers2).

Variants (`--variants`), all with the same sampling:
  * `current`: exactly what the trainer does: the sources are read through the flat cache
    (`cxr_jax.data.flat_cache`, a decoded copy of each split written on first use).
  * `tfds`: the same with `config.data.flat_cache=False`: every example parsed from its
    tf.train.Example and decoded by TFDS (what the cache saves).

Per core: during the timed window (after `--warmup_batches`, which also drain the prefetch
buffers), the CPU time (user + system) of this process and all its live descendant processes
(the grain workers) is read from /proc. `img/s per core` = images / CPU-seconds, i.e. images per
second of one fully used core; `cores used` = CPU-seconds / wall seconds. On a shared machine the
wall-clock img/s depends on the other load, the per-core figure much less.

`--profile` first runs the same work inline on one thread (read + decode, per-example rng,
transform, batching, timed per phase with process CPU time) and prints a cProfile top list.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

from benchmarks import common

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/moco.py', 'Config whose method supplies train_transform().',
    lock_config=True)
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: config.data.data_dir).')
_BATCH = flags.DEFINE_integer('batch', 64, 'Host batch size.')
_BATCHES = flags.DEFINE_integer('batches', 32, 'Timed batches per run.')
_WARMUP = flags.DEFINE_integer('warmup_batches', -1, 'Untimed batches first (-1: prefetch + 4).')
_THREADS = flags.DEFINE_integer('num_threads', 0,
                                'grain read threads (0: config.data.num_threads).')
_PREFETCH = flags.DEFINE_integer('prefetch', 0, 'grain prefetch buffer (0: config.data.prefetch).')
_MODES = flags.DEFINE_list('modes', ['threads', 'workers1', 'workers2'],
                           'Modes to run: threads, workersN (N grain worker processes).')
_VARIANTS = flags.DEFINE_list('variants', ['current', 'tfds'],
                              'Variants to run.')
_PROFILE = flags.DEFINE_bool('profile', False, 'Also profile the work inline on one thread.')
_PROFILE_N = flags.DEFINE_integer('profile_examples', 512, 'Examples for --profile.')
_JSON_OUT = flags.DEFINE_string('json_out', '', 'Also append the JSON line to this file.')



def mode_workers(mode: str) -> int:
  """'threads' -> 0 grain worker processes, 'workersN' -> N."""
  if mode == 'threads':
    return 0
  if mode.startswith('workers') and mode[len('workers'):].isdigit() and int(mode[7:]) > 0:
    return int(mode[len('workers'):])
  raise ValueError(f'mode {mode!r} is not threads or workersN (N >= 1)')


VARIANTS = ('current', 'tfds')


def trainer_input(config):
  """What the trainer hands `pipeline.make_train_iterator`: the configured sources."""
  from cxr_jax.data import mixture  # pylint: disable=g-import-not-at-top
  return mixture.Mixture(config)


def variant_config(config, variant: str):
  config = config.copy_and_resolve_references()
  config.data.flat_cache = variant == 'current'
  return config


def measure(config, train_input, transform, *, batch: int, batches: int, warmup: int,
            threads: int, prefetch: int, workers: int) -> dict[str, Any]:
  """Runs `pipeline.make_train_iterator` with the given batch / threads / workers; times it."""
  from cxr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.global_batch_size = batch * _process_count()
  config.data.num_threads = threads
  config.data.prefetch = prefetch
  config.data.num_workers = workers
  t_start = time.perf_counter()
  it = pipeline.make_train_iterator(config, train_input, transform)
  for _ in range(warmup):
    out = next(it)
  startup = time.perf_counter() - t_start
  cpu0, t0 = common.process_tree_cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    out = next(it)
  wall = time.perf_counter() - t0
  cpu = common.process_tree_cpu_seconds() - cpu0
  shapes = {k: list(v.shape) for k, v in out.items()}
  del it
  images = batches * batch
  return {'images': images, 'wall_s': wall, 'cpu_s': cpu, 'images_per_s': images / wall,
          'cores_used': cpu / wall, 'images_per_s_per_core': images / cpu if cpu > 0 else None,
          'startup_s': startup, 'batch_shapes': shapes}


def _process_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


def profile_inline(config, train_input, transform, n: int, batch: int) -> dict[str, Any]:
  """Per-phase CPU time of the pipeline's per-example work done inline on one thread (no grain),
  and a cProfile top list of read + decode + transform."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cxr_jax.data import datasets  # pylint: disable=g-import-not-at-top
  n = max(batch, n - n % batch)
  source, _ = datasets.load_source(config.data.name, config.data.train_split, config.data.data_dir,
                                   flat_cache=bool(config.data.flat_cache))
  standardizers = getattr(train_input, 'standardizers', None)
  standardize = standardizers[0] if standardizers else (lambda ex: ex)
  # TFDS sources: time the record read and the decoding apart; the flat cache does both in [].
  raw = getattr(source, 'data_source', None)
  phases = {'read_record': 0.0, 'decode_example': 0.0, 'standardize': 0.0, 'rng': 0.0,
            'transform': 0.0, 'batch_stack': 0.0}
  clock = time.process_time
  for i in range(8):  # open files, warm caches
    source[i]
  rows = []
  for i in range(n):
    j = i % len(source)
    t0 = clock()
    record = raw[j] if raw is not None else None
    t1 = clock()
    # pylint: disable-next=protected-access
    example = source._deserialize(record) if raw is not None else source[j]
    t2 = clock()
    example = standardize(example)
    t3 = clock()
    rng = np.random.Generator(np.random.Philox(i))
    t4 = clock()
    rows.append(transform(example, rng))
    t5 = clock()
    for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
      phases[k] += dt
    if len(rows) == batch:
      t6 = clock()
      _ = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
      phases['batch_stack'] += clock() - t6
      rows = []
  per_image_us = {k: v / n * 1e6 for k, v in phases.items()}
  total = sum(per_image_us.values())

  prof = cProfile.Profile()
  prof.enable()
  for i in range(n):
    transform(standardize(source[i % len(source)]), np.random.Generator(np.random.Philox(i)))
  prof.disable()
  text = io.StringIO()
  pstats.Stats(prof, stream=text).sort_stats('tottime').print_stats(14)
  by_name: dict[str, float] = {}
  for (filename, _, func), (_, _, tottime, _, _) in pstats.Stats(prof).stats.items():
    key = func if filename == '~' else f'{filename.rsplit("/", 1)[-1]}:{func}'
    by_name[key] = by_name.get(key, 0.0) + tottime
  top = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
  return {'per_image_us': per_image_us, 'total_us': total,
          'inline_images_per_core_s': 1e6 / total,
          'cprofile_top_us_per_image': {k: v / n * 1e6 for k, v in top},
          'cprofile_text': text.getvalue()}


def main(argv):
  del argv
  from cxr_jax import methods  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  if _DATA_DIR.value is not None:
    config.data.data_dir = _DATA_DIR.value
  threads = _THREADS.value or int(config.data.num_threads)
  prefetch = _PREFETCH.value or int(config.data.prefetch)
  warmup = _WARMUP.value if _WARMUP.value >= 0 else prefetch + 4
  for mode in _MODES.value:
    try:
      mode_workers(mode)
    except ValueError as e:
      sys.exit(f'error: --modes: {e}')
  method = methods.get(config.method)(config, 1000)
  record = {**common.base_record('input_pipeline'), 'device': f'cpu {common.host_cores()} cores',
            'config': common.config_label(sys.argv[1:])[0] or 'configs/moco.py',
            'overrides': common.config_label(sys.argv[1:])[1], 'dataset':
            config.data.name, 'image_size_px': int(config.aug.image_size_px), 'batch': _BATCH.value,
            'num_threads': threads, 'prefetch': prefetch, 'runs': [], 'profile': {}}
  for variant in _VARIANTS.value:
    if variant not in VARIANTS:
      sys.exit(f'error: --variants: {variant!r} is not one of {", ".join(VARIANTS)}')
    vconfig = variant_config(config, variant)
    transform = method.train_transform()
    train_input = trainer_input(vconfig)
    if _PROFILE.value:
      prof = profile_inline(vconfig, train_input, transform, _PROFILE_N.value, _BATCH.value)
      print(f'\n[{variant}] cProfile of the inline loop (read + decode + transform):')
      print(prof.pop('cprofile_text'))
      record['profile'][variant] = prof
      common.print_table(f'[{variant}] inline, one thread: CPU us per image', [
            *[(k, v) for k, v in prof['per_image_us'].items()],
            ('total', prof['total_us']),
            ('=> images/s per core (inline, no grain)', prof['inline_images_per_core_s']),
            *[(f'cProfile: {k}', v) for k, v in prof['cprofile_top_us_per_image'].items()]])
      for mode in _MODES.value:
        result = measure(vconfig, train_input, transform, batch=_BATCH.value,
                         batches=_BATCHES.value, warmup=warmup, threads=threads,
                         prefetch=prefetch, workers=mode_workers(mode))
        record['runs'].append({'variant': variant, 'mode': mode, **result})
        print(f'{variant:>12} {mode:>9}: {result["images_per_s"]:8.1f} img/s  '
              f'{result["cores_used"]:4.2f} cores  '
              f'{result["images_per_s_per_core"]:8.1f} img/s per core  '
              f'(startup {result["startup_s"]:.1f} s)', flush=True)
  common.print_table(
      f"input pipeline: {record['config']}, {config.data.name}, {record['image_size_px']} px "
      f"views, batch {_BATCH.value}, {threads} read threads",
      [(f"{r['variant']} / {r['mode']}",
        f"{r['images_per_s']:.0f} img/s, {r['cores_used']:.2f} cores, "
        f"{r['images_per_s_per_core']:.0f} img/s per core") for r in record['runs']])
  print('target: >= 1,000 img/s per core')
  common.emit_json(record, _JSON_OUT.value)


if __name__ == '__main__':
  app.run(main)
