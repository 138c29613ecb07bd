"""Prepares a dataset from its manual download (training would otherwise do it on first use).

    python -m cxr_jax.data.prepare --dataset=montgomery/512 --manual_dir=~/downloads/montgomery \\
        --data_dir=~/tensorflow_datasets [--skip_bad]

Prints the split sizes and, with --skip_bad, how many bad source files were skipped. Bad input
without --skip_bad stops with one `error:` line naming the file. Needs no TensorFlow.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging

from cxr_jax.data import datasets

_DATASET = flags.DEFINE_string('dataset', None, 'builder[/config], e.g. montgomery/512; known: '
                               + ', '.join(datasets.known_datasets()), required=True)
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'the manual download (see the builder)')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: TFDS_DATA_DIR or '
                                '~/tensorflow_datasets)')
_SKIP_BAD = flags.DEFINE_bool('skip_bad', False, 'skip and count bad source files')


def main(argv):
  del argv
  manual_dir = os.path.expanduser(_MANUAL_DIR.value) if _MANUAL_DIR.value else None
  data_dir = os.path.expanduser(_DATA_DIR.value) if _DATA_DIR.value else None
  try:
    datasets.check_name(_DATASET.value)
    builder = datasets.prepare(_DATASET.value, data_dir, manual_dir=manual_dir,
                               skip_bad=_SKIP_BAD.value)
  except (ValueError, OSError, AssertionError) as e:
    logging.debug('prepare failed', exc_info=True)
    message = str(e).strip().splitlines()
    print(f'error: {message[0] if message else type(e).__name__}', file=sys.stderr)
    return 1
  info = builder.info
  print(f'{info.full_name} in {builder.data_dir}')
  for name, split in sorted(info.splits.items()):
    print(f'  {name}: {split.num_examples} examples')
  skipped = (info.metadata or {}).get('skipped')
  if skipped:
    print(f'  skipped bad inputs: {skipped}')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
