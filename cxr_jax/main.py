r"""Entry point: python -m cxr_jax.main --config=configs/moco.py[:variant] --workdir=DIR [--config.a.b=v]

Validates the whole command (config keys, method, dataset name, workdir) before anything is
written, so bad input ends with one line on stderr and a non-zero exit, and an existing workdir is
left as it was. Rerunning the same command on the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
import logging as pylogging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with a variant: configs/moco.py:cpu', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and config.json.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Call jax.distributed.initialize() (multi-host GPU/TPU jobs; the launch/ '
    'scripts set this).')


class UsageError(Exception):
  """Bad command-line input; reported as one line."""


def _fail(message: str, code: int = 2):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def _one_line(message: str) -> str:
  """First line of an error, plus the exception line when a traceback is embedded in it."""
  lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
  if not lines:
    return 'unknown error'
  if len(lines) > 1 and any(line.startswith('Traceback') for line in lines):
    return f'{lines[0].rstrip(":")}: {lines[-1]}'
  return lines[0]


def _last_line(message: str) -> str:
  lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
  return lines[-1] if lines else 'unknown error'


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_one_line(str(e)))
  except (KeyError, AttributeError) as e:
    # ml_collections raises these for an unknown top-level --config.<key> override.
    key = str(e).strip('\'"')
    _fail(f'unknown config field {key!r} (from a --config.* flag; the config is locked)')
  except (ValueError, TypeError, OSError) as e:
    _fail(f'{type(e).__name__}: {_one_line(str(e))}')


def validate(config) -> None:
  """Cheap checks that need no dataset and write nothing."""
  from cxr_jax import methods  # pylint: disable=g-import-not-at-top
  from cxr_jax.data import datasets  # pylint: disable=g-import-not-at-top
  if not config.get('method'):
    raise UsageError('the config sets no method (config.method)')
  from cxr_jax.data import mixture  # pylint: disable=g-import-not-at-top
  try:
    methods.get(config.method)
    for spec in mixture.source_specs(config):
      datasets.check_name(spec.name)
  except (ValueError, TypeError) as e:
    raise UsageError(str(e)) from None


def prepare_workdir(workdir: str) -> str:
  """Creates workdir if needed and proves it is writable; returns its absolute path."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_probe.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UsageError(f'workdir {workdir} is not writable: {e.strerror or e}') from None
  return workdir


def write_config(config, workdir: str) -> None:
  """Writes workdir/config.json; a different config.json already there is kept as config.N.json."""
  path = os.path.join(workdir, 'config.json')
  text = config.to_json_best_effort(indent=2, sort_keys=True) + '\n'
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if old == text:
      return
    n = 1
    while os.path.exists(os.path.join(workdir, f'config.{n}.json')):
      n += 1
    os.replace(path, os.path.join(workdir, f'config.{n}.json'))
    logging.warning('config differs from the one in %s; the old one is now config.%d.json',
                    workdir, n)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


class _QuietLibraries(pylogging.Filter):
  """Drops INFO records from Orbax and TFDS internals (dozens per checkpoint); keeps warnings."""

  NOISY = ('/orbax/', '/tensorflow_datasets/', '/grain/')

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or not any(
        part in record.pathname for part in self.NOISY)


def setup_logging() -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())


def setup_jax(config) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if config.compilation_cache_dir:
    cache = os.path.expanduser(config.compilation_cache_dir)
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def main(argv):
  del argv
  if _WORKDIR.value is None:
    _fail('--workdir is required')
  if _CONFIG.value is None:
    _fail('--config is required (e.g. --config=configs/moco.py:cpu)')
  config = _CONFIG.value
  try:
    config.get('method')
  except OSError as e:  # config_flags defers a missing/broken config file to first access
    _fail(f'cannot load the config: {_last_line(str(e))}')
  try:
    validate(config)
    workdir = prepare_workdir(_WORKDIR.value)
  except UsageError as e:
    _fail(str(e))

  setup_logging()
  import jax  # pylint: disable=g-import-not-at-top
  if _MULTIHOST.value:
    jax.distributed.initialize()
  setup_jax(config)
  if jax.process_index() == 0:
    write_config(config, workdir)
  logging.info('JAX %s, %d processes, %d devices (%s)', jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)

  from cxr_jax import trainer  # pylint: disable=g-import-not-at-top
  try:
    result = trainer.train_and_evaluate(config, workdir)
  # AssertionError: TFDS reports a missing/empty manual download directory with one.
  except (trainer.NonFiniteLossError, ValueError, FileNotFoundError, AssertionError) as e:
    logging.exception('Training stopped')
    _fail(_one_line(str(e)), code=1)
  if jax.process_index() == 0:
    summary = {'train': result['train'], 'eval': result['eval']}
    with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
      json.dump(summary, f, indent=2, sort_keys=True)
    logging.info('Done: %s', summary)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
