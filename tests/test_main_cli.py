"""Bad command-line input: one clear line on stderr, non-zero exit, workdir untouched."""

import os

import pytest

from tests import util


def _snapshot(workdir):
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, workdir)] = f.read()
  return files


@pytest.fixture
def existing_workdir(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text('{"sentinel": true}\n')
  (workdir / 'notes.txt').write_text('keep me')
  return str(workdir)


@pytest.mark.parametrize('args,expected', [
    (['--config.no_such_key=1'], 'no_such_key'),
    (['--config.model.no_such_field=3'], 'no_such_field'),
    (['--config.data.name=no_such_dataset'], "config.data.name='no_such_dataset' is not a known"),
    (['--config.method=no_such_method'], "config.method='no_such_method' is not a known"),
])
def test_bad_config_fails_with_one_line_and_leaves_workdir(existing_workdir, args, expected):
  before = _snapshot(existing_workdir)
  proc = util.run_main('--config=configs/moco.py:cpu', f'--workdir={existing_workdir}', *args,
                       check=False, timeout=120)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith('error: ') and expected in lines[0], lines[0]
  assert _snapshot(existing_workdir) == before


def test_missing_workdir():
  proc = util.run_main('--config=configs/moco.py:cpu', check=False, timeout=120)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines() == ['error: --workdir is required']


def test_unknown_variant():
  proc = util.run_main('--config=configs/moco.py:gpu_huge', '--workdir=/tmp/x', check=False,
                       timeout=120)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "'gpu_huge' is not one of cpu" in lines[0], proc.stderr


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  workdir = blocker / 'run'   # a directory cannot be made under a regular file (even as root)
  proc = util.run_main('--config=configs/moco.py:cpu', f'--workdir={workdir}', check=False,
                       timeout=120)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and f'workdir {workdir} is not writable' in lines[0], proc.stderr
  assert blocker.read_text() == 'x'


def test_missing_config_file():
  proc = util.run_main('--config=configs/no_such_config.py', '--workdir=/tmp/x', check=False,
                       timeout=120)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'configs/no_such_config.py' in lines[0], proc.stderr


def test_unknown_top_level_key_names_the_key():
  proc = util.run_main('--config=configs/moco.py:cpu', '--workdir=/tmp/x', '--config.no_such=1',
                       check=False, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1 and "'no_such'" in lines[0], proc.stderr
