r"""cxr_jax MoCo v2 training step vs the PyTorch peer, same device, same model and batch.

Run from the repository root with the JAX venv; the peer runs under `--torch_python` (its own
venv, see benchmarks/peers/requirements.txt):

  # CPU check (tiny: ResNet-18 at width 16, 64 px, batch 32, few steps)
  python -m benchmarks.compare_moco_peer --config=configs/moco.py:cpu \
      --config.global_batch_size=32 --config.moco.queue_size=256 \
      --torch_python=/work/venv-torch/bin/python --steps=10

  # GPU, paper scale (ResNet-50, 224 px, batch 256, bfloat16)
  python -m benchmarks.compare_moco_peer --config=configs/moco.py \
      --torch_python=/opt/venv-torch/bin/python --steps=50 --window=10

Each side runs in its own process, one after the other (never together, so they do not share the
device): first `python -m benchmarks.train_step` with the same --config and --config.* flags, then
`TORCH_PYTHON -m benchmarks.peers.moco_torch` with the model, batch, image size, queue, temperature,
momentum, BN group size, optimizer and dtype read from the resolved config. `--torch_args` adds
peer flags (e.g. '--bn=torch --compile=off'). Prints both tables, then a summary with the
throughput ratio (JAX / torch), and one JSON line holding both records.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from benchmarks import common

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'MoCo config and variant, e.g. configs/moco.py:cpu', lock_config=True)
_TORCH_PYTHON = flags.DEFINE_string('torch_python', None, "Python of the torch venv.")
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps on each side.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps on each side (after compilation).')
_WINDOW = flags.DEFINE_integer('window', 1, 'Steps per timed window on each side.')
_TORCH_ARGS = flags.DEFINE_string('torch_args', '', 'Extra flags for the torch peer.')
_JAX_ARGS = flags.DEFINE_string('jax_args', '', 'Extra flags for benchmarks.train_step.')
_TIMEOUT = flags.DEFINE_integer('timeout_s', 1800, 'Per-side time limit.')
_JSON_OUT = flags.DEFINE_string('json_out', '', 'Also append the JSON line to this file.')


def torch_flags(config) -> list[str]:
  """Peer flags that reproduce the JAX config's step."""
  if config.method != 'moco':
    raise ValueError(f'config.method={config.method!r}: the torch peer implements MoCo only')
  dtype = str(config.get('compute_dtype', 'float32'))
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f'compute_dtype={dtype} has no torch peer setting (float32 or bfloat16)')
  lr = config.optim.base_lr * config.global_batch_size / config.optim.lr_reference_batch
  return [
      f'--depth={config.model.depth}', f'--width={config.model.width}',
      f'--image_size={config.aug.image_size_px}', f'--batch={config.global_batch_size}',
      f'--dim={config.moco.dim}', f'--hidden_dim={config.moco.hidden_dim}',
      f'--queue_size={config.moco.queue_size}', f'--temperature={config.moco.temperature}',
      f'--momentum={config.moco.momentum}',
      f'--bn_group_size={config.model.get("bn_group_size") or 0}',
      f'--input_norm={config.model.get("input_norm", "fixed")}',
      f'--lr={lr}', f'--sgd_momentum={config.optim.momentum}',
      f'--weight_decay={config.optim.weight_decay}',
      f'--max_blur_sigma={float(config.aug.blur_sigma[1])}', f'--dtype={dtype}',
  ]


def run_side(name: str, cmd: list[str]) -> dict:
  print(f'\n$ {shlex.join(cmd)}', flush=True)
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT.value, check=False)
  # The table (stdout) of each side, without the log lines of its libraries.
  print('\n'.join(line for line in proc.stdout.splitlines() if not line.startswith('{')),
        flush=True)
  if proc.returncode != 0:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f'error: the {name} side failed with exit code {proc.returncode}')
  return common.last_json_line(proc.stdout)


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None or not _TORCH_PYTHON.value:
    sys.exit('error: --config and --torch_python are required')
  if config.method != 'moco':
    sys.exit(f'error: config.method={config.method!r}; the peer implements MoCo only')
  name, overrides = common.config_label(sys.argv[1:])
  timing = [f'--steps={_STEPS.value}', f'--warmup={_WARMUP.value}', f'--window={_WINDOW.value}']
  jax_cmd = [sys.executable, '-m', 'benchmarks.train_step', f'--config={name}', *overrides,
             *timing, *shlex.split(_JAX_ARGS.value)]
  torch_cmd = [_TORCH_PYTHON.value, '-m', 'benchmarks.peers.moco_torch', *torch_flags(config),
               *timing, *shlex.split(_TORCH_ARGS.value)]
  jax_rec = run_side('JAX', jax_cmd)
  torch_rec = run_side('torch', torch_cmd)
  ratio = jax_rec['images_per_s'] / torch_rec['images_per_s']
  common.print_table(f'MoCo v2 step, {jax_rec["model"]}, {jax_rec["image_size_px"]} px, '
                     f'batch {jax_rec["global_batch"]}, {jax_rec["dtype"]}', [
                         ('device (JAX / torch)', f'{jax_rec["device"]} / {torch_rec["device"]}'),
                         ('cxr_jax images/s', jax_rec['images_per_s']),
                         ('torch peer images/s', torch_rec['images_per_s']),
                         ('ratio JAX / torch', ratio),
                         ('JAX compile cold / warm s',
                          f'{jax_rec["compile_cold_s"]:.1f} / {jax_rec["compile_warm_s"]:.1f}'),
                         ('torch first step s', torch_rec['first_step_s']),
                         ('torch settings', f'compile={torch_rec["compile"]}, '
                                            f'channels_last={torch_rec["channels_last"]}, '
                                            f'bn={torch_rec["bn"]}')])
  common.emit_json({**common.base_record('compare_moco_peer'), 'config': name,
                    'overrides': overrides, 'ratio_jax_over_torch': ratio, 'jax': jax_rec,
                    'torch': torch_rec}, _JSON_OUT.value)


if __name__ == '__main__':
  app.run(main)
