"""Helpers shared by the benchmark scripts: environment description, tables, JSON lines, CPU time.

Every benchmark prints a human-readable table and then exactly one line of JSON (the last line of
its stdout, starting with '{'), which is what `benchmarks/RESULTS.md` quotes and what
`benchmarks/compare_moco_peer.py` parses. Nothing here imports JAX at module level, so the torch
peer can use it from a venv without JAX.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from typing import Any, Iterable


def host_cores() -> int:
  """CPU cores this process may run on (affinity mask, else os.cpu_count())."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def today() -> str:
  return datetime.date.today().isoformat()


def base_record(benchmark: str) -> dict[str, Any]:
  """Fields every JSON line carries."""
  return {
      'benchmark': benchmark,
      'date': today(),
      'python': platform.python_version(),
      'host_cores': host_cores(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      # Other processes compete for the cores on shared machines: keep the load with the figures.
      'load_avg_1m': round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else None,
  }


def jax_environment() -> dict[str, Any]:
  """Device kind and library versions of the JAX stack (imports JAX)."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  kind = dev.device_kind
  if dev.platform == 'cpu':
    kind = f'cpu {host_cores()} cores'
  return {
      'device': kind,
      'platform': dev.platform,
      'num_devices': jax.device_count(),
      'num_processes': jax.process_count(),
      'jax': jax.__version__,
      'jaxlib': jaxlib.__version__,
      'flax': flax.__version__,
      'optax': optax.__version__,
  }


def config_label(argv: list[str]) -> tuple[str, list[str]]:
  """('configs/moco.py:cpu', ['--config.x=y', ...]) from a command line using config_flags."""
  name, overrides = '', []
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      name = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      name = argv[i + 1]
    elif arg.startswith('--config.'):
      overrides.append(arg)
  return name, overrides


def fmt(value: Any) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, float):
    if value == 0 or 1e-3 <= abs(value) < 1e6:
      return f'{value:,.3f}' if abs(value) < 100 else f'{value:,.1f}'
    return f'{value:.3e}'
  return str(value)


def print_table(title: str, rows: Iterable[tuple[str, Any]], file=None) -> None:
  rows = [(k, fmt(v)) for k, v in rows]
  width = max(len(k) for k, _ in rows)
  out = file or sys.stdout
  print(f'\n{title}', file=out)
  print('-' * (width + 3 + max(len(v) for _, v in rows)), file=out)
  for k, v in rows:
    print(f'{k:<{width}} : {v}', file=out)
  out.flush()


def emit_json(record: dict[str, Any], json_out: str = '') -> None:
  """Prints the record as one JSON line (last line of stdout); appends it to json_out if given."""
  line = json.dumps(record, sort_keys=True)
  print(line, flush=True)
  if json_out:
    with open(json_out, 'a') as f:
      f.write(line + '\n')


def last_json_line(text: str) -> dict[str, Any]:
  """The last line of `text` that parses as a JSON object."""
  for line in reversed(text.strip().splitlines()):
    line = line.strip()
    if line.startswith('{'):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue
  raise ValueError('no JSON line in the output')


def _proc_cpu_seconds(pid: int) -> float:
  """user + system CPU seconds of one live process, from /proc (Linux)."""
  with open(f'/proc/{pid}/stat') as f:
    fields = f.read().rsplit(')', 1)[1].split()
  ticks = os.sysconf('SC_CLK_TCK')
  # fields[0] is state (field 3 of stat); utime, stime are fields 14, 15.
  return (int(fields[11]) + int(fields[12])) / ticks


def _children(pid: int) -> list[int]:
  """Child processes of every thread of `pid` (a child belongs to the thread that forked it)."""
  out = []
  try:
    tids = os.listdir(f'/proc/{pid}/task')
  except OSError:
    return out
  for tid in tids:
    try:
      with open(f'/proc/{pid}/task/{tid}/children') as f:
        out.extend(int(p) for p in f.read().split())
    except OSError:
      continue
  return out


def process_tree_cpu_seconds(pid: int | None = None) -> float:
  """CPU seconds used so far by this process and all its live descendants (e.g. grain workers).

  A descendant that exits between two readings drops out of the sum, so measure windows in which
  the worker processes stay alive (grain's workers live as long as their iterator).
  """
  pid = os.getpid() if pid is None else pid
  total, stack = 0.0, [pid]
  while stack:
    p = stack.pop()
    try:
      total += _proc_cpu_seconds(p)
    except (OSError, IndexError, ValueError):
      continue
    stack.extend(_children(p))
  return total
