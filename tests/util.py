"""Helpers shared by the integration tests."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str, arg: str | None = None):
  """The ConfigDict of configs/<path> for `arg` (what --config=path:arg gives)."""
  spec = importlib.util.spec_from_file_location('cfg', os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_moco_overrides(data_dir: str) -> list[str]:
  """Flags shrinking configs/moco.py:cpu to seconds per run on synthetic_cxr/tiny."""
  return [f'--config.data.data_dir={data_dir}', '--config.data.name=synthetic_cxr/tiny',
          '--config.model.width=8', '--config.aug.image_size_px=32',
          '--config.global_batch_size=16', '--config.model.bn_group_size=8',
          '--config.moco.queue_size=64', '--config.moco.hidden_dim=64',
          '--config.eval.global_batch_size=64', '--config.eval_every_steps=0',
          '--config.log_every_steps=1', '--config.optim.warmup_steps=2']


def apply_flags(config, flags: list[str]):
  """Applies '--config.a.b=v' strings to a ConfigDict (as config_flags would)."""
  import ast  # pylint: disable=g-import-not-at-top
  for flag in flags:
    key, value = flag[len('--config.'):].split('=', 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def main_command(*args: str, preamble: str = '') -> list[str]:
  """`python -m cxr_jax.main ARGS` as a subprocess command; `preamble` runs first (e.g. notf)."""
  code = f'{preamble}\nfrom cxr_jax import main\nmain.run()'
  return [sys.executable, '-c', code, *args]


def subprocess_env(num_devices: int = 1, cache_dir: str | None = None) -> dict:
  env = dict(os.environ)
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  return env


def run_main(*args: str, preamble: str = '', timeout: int = 600, check: bool = True,
             num_devices: int = 1) -> subprocess.CompletedProcess:
  proc = subprocess.run(main_command(*args, preamble=preamble), cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=subprocess_env(num_devices))
  if check and proc.returncode != 0:
    raise AssertionError(f'main failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
  return proc


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def train_losses(workdir: str) -> dict[int, float]:
  return {row['step']: row['train/loss'] for row in read_metrics(workdir) if 'train/loss' in row}
