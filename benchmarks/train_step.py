r"""Training-step benchmark: compile time (cold / warm), step time, images/s, MFU, peak memory.

Run from the repository root:

  python -m benchmarks.train_step --config=configs/moco.py:cpu --steps=20
  python -m benchmarks.train_step --config=configs/moco.py --steps=50 --window=10   # paper scale
  python -m benchmarks.train_step --config=configs/moco.py:cpu --config.global_batch_size=32 \
      --json_out=/tmp/bench.jsonl

What it builds is what `cxr_jax.trainer.train_and_evaluate` builds: the mesh from `config.mesh`,
the method with its schedule length, the state from `trainer.initial_state` (jit of `method.init`
with the state shardings; `init_from` applies), and the step jitted with the trainer's in/out
shardings and donation of the state. Only the input differs: one global batch made by the method's
own `train_transform()` on rendered `synthetic_cxr` images (`--source_size_px`, 256 like the
stored dataset) is put on the devices once and fed to every step, so the input pipeline is
excluded (see `benchmarks/input_pipeline.py` for that side).

What it measures, in this order:
  * compile, cold: trace + lower and XLA compile of the step, with JAX's persistent compilation
    cache pointed at a fresh temporary directory (thresholds at 0, so the step is written there).
  * compile, warm: `jax.clear_caches()` (drops the in-memory jit and tracing caches), then trace +
    lower + compile again; the executable now comes from the persistent cache (a listener on JAX's
    '/jax/compilation_cache/cache_hits' event says whether it really did). This is what a second
    run of the same command on the same machine pays.
  * step time: `--warmup` steps, then `--steps` steps in windows of `--window` steps, each window
    closed by `block_until_ready` on the state; the median over windows of (window time / window)
    is the step time, images/s = global batch / step time (an image = one example, i.e. both MoCo
    views of it).
  * MFU: XLA's cost-analysis flops of the compiled step (one device's program) / step time /
    peak dense FLOPS of the device for the compute dtype (table below; 'n/a' for devices not in
    it, e.g. CPUs). The flops of the lowered, not yet optimised, program (the model's own
    arithmetic) are printed beside them; where the compiled figure is missing, they are used.
  * peak memory: `device.memory_stats()['peak_bytes_in_use']` where the backend reports it (GPU,
    TPU), else XLA's static estimate from `compiled.memory_analysis()` (arguments + outputs -
    aliased (donated) + temporaries).

Output: a table, then one JSON line (the last line of stdout; `--json_out` appends it to a file).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

from benchmarks import common

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and variant, e.g. configs/moco.py:cpu', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (after warmup).')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
_WINDOW = flags.DEFINE_integer('window', 1, 'Steps per timed window (block_until_ready at the '
                               'end of each); >1 keeps the dispatch pipelined as in training.')
_SOURCE_SIZE = flags.DEFINE_integer('source_size_px', 256, 'Side of the stored images the host '
                                    'transform crops from (synthetic_cxr stores 256).')
_NUM_EXAMPLES = flags.DEFINE_integer('num_train_examples', 2000, 'Train split size assumed for '
                                     'the schedule length when config.num_train_steps <= 0.')
_JSON_OUT = flags.DEFINE_string('json_out', '', 'Also append the JSON line to this file.')
_KEEP_CACHE = flags.DEFINE_string('cache_dir', '', 'Persistent compilation cache directory; '
                                  'must be empty or absent for a cold measurement. Default: a '
                                  'fresh temporary directory, deleted at exit.')

# Peak dense (no structured sparsity) FLOP/s per device, by compute dtype. 'float32' on NVIDIA
# Ampere/Hopper is the TF32 tensor-core peak: XLA runs float32 convolutions and dots at JAX's
# DEFAULT precision, which allows TF32 there. On TPUs DEFAULT precision runs float32 dots as one
# bfloat16 pass, so the bfloat16 peak applies to both.
# Matched against `device.device_kind` (lower case), first match wins.
PEAK_FLOPS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): BF16 1,979 TFLOPS with sparsity
    # -> 989.5 dense; TF32 989 with sparsity -> 494.5 dense. Same SMs and clocks as H100 SXM.
    (('h200',), {'bfloat16': 989.5e12, 'float16': 989.5e12, 'float32': 494.5e12}),
    # NVIDIA H100 Tensor Core GPU datasheet, PCIe column: BF16 1,513 sparse -> 756.5 dense,
    # TF32 756 sparse -> 378 dense.
    (('h100', 'pcie'), {'bfloat16': 756.5e12, 'float16': 756.5e12, 'float32': 378e12}),
    # Same datasheet, SXM5 column ('NVIDIA H100 80GB HBM3'): BF16 1,979 sparse -> 989.5 dense,
    # TF32 989 sparse -> 494.5 dense.
    (('h100', 'hbm3'), {'bfloat16': 989.5e12, 'float16': 989.5e12, 'float32': 494.5e12}),
    (('h100', 'sxm'), {'bfloat16': 989.5e12, 'float16': 989.5e12, 'float32': 494.5e12}),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 and PCIe): BF16 312 dense, TF32 156 dense.
    (('a100',), {'bfloat16': 312e12, 'float16': 312e12, 'float32': 156e12}),
    # Cloud TPU system architecture docs (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e):
    # peak bf16 per chip 275 (v4), 197 (v5e, device_kind 'TPU v5 lite'), 459 (v5p, 'TPU v5' /
    # 'TPU v5p'), 918 (v6e, 'TPU v6 lite') TFLOPS.
    (('tpu v4',), {'bfloat16': 275e12, 'float32': 275e12}),
    (('tpu v5 lite',), {'bfloat16': 197e12, 'float32': 197e12}),
    (('tpu v5e',), {'bfloat16': 197e12, 'float32': 197e12}),
    (('tpu v5',), {'bfloat16': 459e12, 'float32': 459e12}),
    (('tpu v6 lite',), {'bfloat16': 918e12, 'float32': 918e12}),
    (('tpu v6e',), {'bfloat16': 918e12, 'float32': 918e12}),
]


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Peak dense FLOP/s of one device of `device_kind` for `dtype`; None if not in the table."""
  kind = device_kind.lower()
  for needles, peaks in PEAK_FLOPS:
    if all(n in kind for n in needles):
      return peaks.get(dtype)
  return None


def cost_flops(compiled) -> float | None:
  """Total flops of a compiled executable from XLA's cost analysis (dict or list-of-dict forms)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if cost is None:
    return None
  if isinstance(cost, (list, tuple)):
    values = [c.get('flops') for c in cost if isinstance(c, dict) and c.get('flops') is not None]
    return float(sum(values)) if values else None
  if isinstance(cost, dict) and cost.get('flops') is not None:
    return float(cost['flops'])
  return None


def static_memory_bytes(compiled) -> int | None:
  """XLA's static estimate of the step's device memory: args + outputs - aliased + temporaries."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  if isinstance(m, (list, tuple)):
    m = m[0]
  get = lambda name: int(getattr(m, name, 0) or 0)
  return (get('argument_size_in_bytes') + get('output_size_in_bytes')
          - get('alias_size_in_bytes') + get('temp_size_in_bytes'))


def device_peak_bytes() -> int | None:
  """Largest `peak_bytes_in_use` over the local devices, where the backend reports it."""
  import jax  # pylint: disable=g-import-not-at-top
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


class _NoCheckpoint:
  """Stands in for the trainer's Checkpointer: there is never a checkpoint to resume."""

  def latest_step(self):
    return None


def synthetic_host_batch(method, local_batch: int, source_size_px: int, seed: int = 0,
                         num_sources: int = 4) -> dict:
  """A host batch of the method's training structure: its own train_transform() applied to
  `num_sources` rendered synthetic_cxr images (cycled), one numpy rng per example."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cxr_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  targets = synthetic_targets()
  sources = []
  for i in range(num_sources):
    ex = synthetic.render_example(seed, i, source_size_px)
    boxes = np.zeros((targets.max_boxes, 4), np.float32)
    n = min(len(ex['bboxes']), targets.max_boxes)
    boxes[:n] = ex['bboxes'][:n]
    # The structure cxr_jax.data.mixture.Standardizer gives every example.
    sources.append({'image': ex['image'], 'mask': ex['lung_mask'], 'label': np.int32(ex['label']),
                    'labels': np.eye(len(targets.class_names), dtype=np.float32)[ex['label']],
                    'boxes': boxes, 'box_labels': np.zeros((targets.max_boxes,), np.int32),
                    'num_boxes': np.int32(n), 'has_label': np.bool_(True),
                    'has_mask': np.bool_(True), 'has_boxes': np.bool_(True),
                    'source_id': np.int32(0), 'body_part': np.int32(0)})
  transform = method.train_transform()
  rows = [transform(dict(sources[i % num_sources]), np.random.default_rng([seed, i]))
          for i in range(local_batch)]
  return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *rows)


def synthetic_targets():
  """The label spaces of synthetic_cxr (what the trainer reads from the dataset's info)."""
  from cxr_jax.data import mixture  # pylint: disable=g-import-not-at-top
  from cxr_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  return mixture.Targets(class_names=tuple(synthetic.CLASS_NAMES), multi_label=False,
                         box_class_names=tuple(synthetic.OBJECT_CLASS_NAMES), max_boxes=16)


def run_benchmark(config, *, steps: int, warmup: int, window: int, source_size_px: int,
                  num_train_examples: int, cache_dir: str) -> dict[str, Any]:
  """Builds the trainer's state and step for `config`, measures; returns the figures."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax import monitoring  # pylint: disable=g-import-not-at-top

  from cxr_jax import methods  # pylint: disable=g-import-not-at-top
  from cxr_jax import sharding  # pylint: disable=g-import-not-at-top
  from cxr_jax import trainer  # pylint: disable=g-import-not-at-top
  from cxr_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  # Persistent cache in a directory of our own, every executable written (thresholds 0).
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  events: list[str] = []
  monitoring.register_event_listener(lambda event, **kw: events.append(event))

  mesh = sharding.make_mesh(config.mesh, config.num_devices)
  shards = sharding.num_batch_shards(mesh)
  if config.global_batch_size % shards:
    raise ValueError(f'global_batch_size={config.global_batch_size} does not split over {shards} '
                     'batch shards')
  method = methods.get(config.method)(config, trainer.num_train_steps(config, num_train_examples),
                                      synthetic_targets())
  state, state_shardings = trainer.initial_state(config, method, mesh, _NoCheckpoint(), None)
  host_batch = synthetic_host_batch(method, pipeline.local_batch_size(config.global_batch_size),
                                    source_size_px, seed=config.seed)
  batch = sharding.host_to_global(host_batch, mesh)
  jax.block_until_ready((state, batch))

  def compile_once():
    step = trainer.make_train_step(method, mesh, state_shardings)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return lowered, compiled, t1 - t0, t2 - t1

  hits_before = events.count('/jax/compilation_cache/cache_hits')
  _, compiled_cold, lower_cold, compile_cold = compile_once()
  cold_hit = events.count('/jax/compilation_cache/cache_hits') > hits_before
  jax.clear_caches()
  hits_before = events.count('/jax/compilation_cache/cache_hits')
  lowered, compiled, lower_warm, compile_warm = compile_once()
  warm_hit = events.count('/jax/compilation_cache/cache_hits') > hits_before
  del compiled_cold

  with jax.transfer_guard('disallow'):
    for _ in range(warmup):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    window = max(1, window)
    num_windows = max(1, steps // window)
    per_step = []
    for _ in range(num_windows):
      t0 = time.perf_counter()
      for _ in range(window):
        state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      per_step.append((time.perf_counter() - t0) / window)
  loss = float(jax.device_get(metrics['loss'])) if 'loss' in metrics else None

  step_time = statistics.median(per_step)
  # Flops of one device's program (for a multi-device mesh XLA analyses the partitioned module).
  compiled_flops = cost_flops(compiled)
  hlo_flops = cost_flops(lowered)  # before XLA's optimisations: the model's own arithmetic
  if hlo_flops and mesh.size > 1:
    hlo_flops /= mesh.size  # the lowered module is the global (unpartitioned) computation
  flops = compiled_flops or hlo_flops
  dev = jax.devices()[0]
  dtype = str(config.get('compute_dtype', 'float32'))
  peak = peak_flops(dev.device_kind, dtype)
  num_devices = mesh.size
  mfu = (flops / step_time / peak) if (flops and peak) else None
  peak_bytes = device_peak_bytes()
  static_bytes = static_memory_bytes(compiled)
  return {
      'global_batch': int(config.global_batch_size),
      'per_device_batch': int(config.global_batch_size) // num_devices,
      'mesh': {k: int(v) for k, v in mesh.shape.items()},
      'dtype': dtype,
      'compile_cold_s': lower_cold + compile_cold,
      'compile_cold_lower_s': lower_cold,
      'compile_cold_xla_s': compile_cold,
      'compile_cold_cache_hit': cold_hit,
      'compile_warm_s': lower_warm + compile_warm,
      'compile_warm_lower_s': lower_warm,
      'compile_warm_xla_s': compile_warm,
      'compile_warm_cache_hit': warm_hit,
      'steps_timed': num_windows * window,
      'window': window,
      'step_time_ms': step_time * 1e3,
      'step_time_min_ms': min(per_step) * 1e3,
      'step_time_mean_ms': statistics.fmean(per_step) * 1e3,
      'images_per_s': config.global_batch_size / step_time,
      'images_per_s_per_device': config.global_batch_size / step_time / num_devices,
      'flops_per_step': flops,
      'flops_source': 'compiled' if compiled_flops else 'lowered' if hlo_flops else None,
      'flops_per_step_lowered': hlo_flops,
      'tflops_per_s': (flops / step_time / 1e12) if flops else None,
      'peak_flops_per_device': peak,
      'mfu': mfu,
      'peak_memory_bytes': peak_bytes if peak_bytes is not None else static_bytes,
      'peak_memory_source': ('memory_stats' if peak_bytes is not None
                             else 'memory_analysis' if static_bytes is not None else None),
      'static_memory_bytes': static_bytes,
      'final_loss': loss,
  }


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    sys.exit('error: --config is required (e.g. --config=configs/moco.py:cpu)')
  name, overrides = common.config_label(sys.argv[1:])
  own_cache = not _KEEP_CACHE.value
  cache_dir = _KEEP_CACHE.value or tempfile.mkdtemp(prefix='cxr_bench_xla_')
  if os.path.isdir(cache_dir) and os.listdir(cache_dir):
    sys.exit(f'error: --cache_dir={cache_dir} is not empty; the cold compile would not be cold')
  try:
    figures = run_benchmark(config, steps=_STEPS.value, warmup=_WARMUP.value,
                            window=_WINDOW.value, source_size_px=_SOURCE_SIZE.value,
                            num_train_examples=_NUM_EXAMPLES.value, cache_dir=cache_dir)
  finally:
    if own_cache:
      shutil.rmtree(cache_dir, ignore_errors=True)
  record = {**common.base_record('train_step'), **common.jax_environment(),
            'method': config.method, 'config': name, 'overrides': overrides,
            'model': f"{config.model.name}{config.model.depth}/w{config.model.width}",
            'image_size_px': int(config.aug.image_size_px), **figures}
  gib = lambda b: None if b is None else b / 2**30
  common.print_table(f"train_step: {name} {' '.join(overrides)}".rstrip(), [
      ('device', f"{record['device']} x {record['num_devices']}"),
      ('jax / jaxlib / flax', f"{record['jax']} / {record['jaxlib']} / {record['flax']}"),
      ('model, image size', f"{record['model']}, {record['image_size_px']} px"),
      ('global batch (per device)', f"{record['global_batch']} ({record['per_device_batch']})"),
      ('compute dtype', record['dtype']),
      ('compile cold s (trace+lower / xla)',
       f"{record['compile_cold_s']:.2f} ({record['compile_cold_lower_s']:.2f} / "
       f"{record['compile_cold_xla_s']:.2f})"),
      ('compile warm s (trace+lower / xla)',
       f"{record['compile_warm_s']:.2f} ({record['compile_warm_lower_s']:.2f} / "
       f"{record['compile_warm_xla_s']:.2f}), persistent cache hit: "
       f"{record['compile_warm_cache_hit']}"),
      ('step time ms (median, min)',
       f"{record['step_time_ms']:.2f}, {record['step_time_min_ms']:.2f} "
       f"over {record['steps_timed']} steps"),
      ('images/s', record['images_per_s']),
      ('flops/step/device (XLA cost analysis)',
       f"{common.fmt(record['flops_per_step'])} ({record['flops_source']}; before "
       f"optimisation: {common.fmt(record['flops_per_step_lowered'])})"),
      ('achieved TFLOP/s', record['tflops_per_s']),
      ('MFU', None if record['mfu'] is None else f"{100 * record['mfu']:.1f} %"),
      (f"peak memory GiB ({record['peak_memory_source']})", gib(record['peak_memory_bytes'])),
      ('loss after the timed steps', record['final_loss']),
  ])
  common.emit_json(record, _JSON_OUT.value)


if __name__ == '__main__':
  app.run(main)
