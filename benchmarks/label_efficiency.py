r"""The seeds' central claim on synthetic_cxr: with few labels, fine-tuning from a MoCo encoder
beats the same fine-tuning from random initialisation.

    python -m benchmarks.label_efficiency --moco_workdir=/tmp/cxr_moco [--fraction=0.1] \
        [--steps=150] [--workdir=/tmp/label_efficiency] [--extra=--config.x=y ...]

Runs `configs/multitask.py:cpu` twice on `fraction` of the training split (the same fixed subset
both times, see mixture.SourceSpec.fraction): once with `init_from` the MoCo workdir's encoder,
once from scratch; prints the validation metrics of both and their differences. With no
`--moco_workdir`, the README's MoCo :cpu command is run first into WORKDIR/moco.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

_MOCO = flags.DEFINE_string('moco_workdir', '', 'a finished configs/moco.py:cpu workdir')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/cxr_label_efficiency', 'where runs are written')
_FRACTION = flags.DEFINE_float('fraction', 0.1, 'fraction of the training labels used')
_STEPS = flags.DEFINE_integer('steps', 150, 'fine-tuning steps')
_EXTRA = flags.DEFINE_multi_string('extra', [], 'more --config.* flags for both fine-tunes')

METRICS = ('macro_f1', 'accuracy', 'macro_auroc', 'dice', 'map50')


def _main_module(*args: str) -> None:
  subprocess.run([sys.executable, '-m', 'cxr_jax.main', *args], check=True)


def fine_tune(workdir: str, moco_workdir: str | None, fraction: float, steps: int,
              extra: list[str]) -> dict[str, float]:
  sources = f"({{'name': 'synthetic_cxr', 'fraction': {fraction}}},)"
  args = ['--config=configs/multitask.py:cpu', f'--workdir={workdir}',
          f'--config.data.sources={sources}', f'--config.num_train_steps={steps}',
          f'--config.eval_every_steps={steps}', *extra]
  if moco_workdir:
    args.append(f'--config.init_from.workdir={moco_workdir}')
  _main_module(*args)
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    return json.load(f)['eval']


def main(argv):
  del argv
  moco = _MOCO.value
  if not moco:
    moco = os.path.join(_WORKDIR.value, 'moco')
    _main_module('--config=configs/moco.py:cpu', f'--workdir={moco}')
  results = {}
  for name, init in (('moco', moco), ('random', None)):
    results[name] = fine_tune(os.path.join(_WORKDIR.value, f'finetune_{name}'), init,
                              _FRACTION.value, _STEPS.value, list(_EXTRA.value))
  print(f'multitask :cpu, {_FRACTION.value:.0%} of the labels, {_STEPS.value} steps')
  print(f'{"metric":<14}{"from MoCo":>12}{"random init":>14}{"difference":>12}')
  for key in METRICS:
    a, b = results['moco'].get(key), results['random'].get(key)
    if a is not None and b is not None:
      print(f'{key:<14}{a:>12.4f}{b:>14.4f}{a - b:>+12.4f}')
  print(json.dumps({'fraction': _FRACTION.value, 'steps': _STEPS.value, 'extra': _EXTRA.value,
                    **{f'{n}/{k}': results[n].get(k) for n in results for k in METRICS}}))


if __name__ == '__main__':
  app.run(main)
