"""Tests for cxr_jax.metric_writers (with TensorFlow and with TF hidden)."""

import glob
import io
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cxr_jax import metric_writers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_events(logdir):
  """Returns {tag: [(step, value)]} and {tag: plugin_name} from event files.

  Both backends write "tensor" summaries, so everything is under Tensors().
  """
  from tensorboard.backend.event_processing import event_accumulator as ea
  from tensorboard.util import tensor_util

  acc = ea.EventAccumulator(logdir, size_guidance={ea.TENSORS: 0})
  acc.Reload()
  values, plugins = {}, {}
  for tag in acc.Tags()['tensors']:
    plugins[tag] = acc.SummaryMetadata(tag).plugin_data.plugin_name
    values[tag] = [(e.step, tensor_util.make_ndarray(e.tensor_proto))
                   for e in acc.Tensors(tag)]
  return values, plugins


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _event_files(workdir):
  return glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))


def _decode_png(data):
  from PIL import Image
  return np.asarray(Image.open(io.BytesIO(data)))


# ---------------------------------------------------------------------------
# TF present: clu backend.
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not metric_writers.tensorflow_available(),
                    reason='TensorFlow not installed')
@pytest.mark.parametrize('asynchronous', [True, False])
def test_create_writer_with_tensorflow(tmp_path, asynchronous):
  workdir = str(tmp_path)
  writer = metric_writers.create_writer(workdir, asynchronous=asynchronous)
  writer.write_hparams({'lr': 0.1, 'model': {'depth': 50}})
  writer.write_scalars(1, {'loss': np.float32(2.5), 'acc': 0.25})
  writer.write_scalars(2, {'loss': 1.5, 'acc': np.float64(0.5)})
  writer.write_images(2, {'img': np.zeros((1, 4, 4, 1), np.uint8)})
  writer.flush()
  writer.close()

  assert _event_files(workdir)
  values, plugins = _read_events(workdir)
  assert [(s, float(v)) for s, v in values['loss']] == [(1, 2.5), (2, 1.5)]
  assert [(s, float(v)) for s, v in values['acc']] == [(1, 0.25), (2, 0.5)]
  assert plugins['loss'] == 'scalars'
  assert plugins['img'] == 'images'

  rows = _read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert rows == [{'step': 1, 'loss': 2.5, 'acc': 0.25},
                  {'step': 2, 'loss': 1.5, 'acc': 0.5}]


@pytest.mark.skipif(not metric_writers.tensorflow_available(),
                    reason='TensorFlow not installed')
def test_non_main_process_writes_no_files(tmp_path):
  writer = metric_writers.create_writer(str(tmp_path), is_main_process=False)
  writer.write_scalars(1, {'loss': 1.0})
  writer.close()
  assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# TF hidden: our own backend, exercised in a fresh interpreter.
# ---------------------------------------------------------------------------

_NO_TF_SCRIPT = textwrap.dedent('''
    import sys
    from tests import notf
    notf.install()

    import numpy as np
    from cxr_jax import metric_writers

    workdir = sys.argv[1]
    assert not metric_writers.tensorflow_available()
    writer = metric_writers.create_writer(workdir)
    assert isinstance(writer, metric_writers.AsyncWriter), type(writer)
    writer.write_hparams({'lr': 0.1, 'model': {'depth': 50, 'name': 'r50'}})
    writer.write_scalars(1, {'loss': np.float32(2.5), 'acc': 0.25})
    writer.write_scalars(2, {'loss': 1.5, 'acc': np.float64(0.5)})
    gradient = np.linspace(0, 1, 4 * 6, dtype=np.float32).reshape(1, 4, 6, 1)
    rgb = np.arange(2 * 3 * 5 * 3, dtype=np.uint8).reshape(2, 3, 5, 3)
    writer.write_images(2, {'gray': gradient, 'rgb': rgb})
    writer.flush()
    writer.close()

    # The non-main process path must not create files either.
    other = metric_writers.create_writer(workdir + '/other',
                                         is_main_process=False)
    other.write_scalars(1, {'loss': 1.0})
    other.close()

    leaked = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')
    assert not leaked, leaked
    assert 'clu.metric_writers' not in sys.modules
    print('NO_TF_OK')
''')


def test_create_writer_without_tensorflow(tmp_path):
  workdir = str(tmp_path / 'run')
  env = dict(os.environ)
  env['PYTHONPATH'] = REPO_ROOT + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run(
      [sys.executable, '-c', _NO_TF_SCRIPT, workdir],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'NO_TF_OK' in proc.stdout
  assert not os.path.exists(os.path.join(workdir, 'other'))

  assert len(_event_files(workdir)) == 1
  values, plugins = _read_events(workdir)
  assert [(s, float(v)) for s, v in values['loss']] == [(1, 2.5), (2, 1.5)]
  assert [(s, float(v)) for s, v in values['acc']] == [(1, 0.25), (2, 0.5)]
  assert plugins['loss'] == plugins['acc'] == 'scalars'
  assert plugins['gray'] == plugins['rgb'] == 'images'
  assert '_hparams_/session_start_info' in plugins

  # Image tensors: [width, height, png_0, ...], as written by tf.summary.image.
  (step, gray), = values['gray']
  assert step == 2
  assert list(gray[:2]) == [b'6', b'4']
  decoded = _decode_png(gray[2])
  assert decoded.shape == (4, 6)
  assert decoded[0, 0] == 0 and decoded[-1, -1] == 255
  (_, rgb), = values['rgb']
  assert len(rgb) == 4
  expected = np.arange(2 * 3 * 5 * 3, dtype=np.uint8).reshape(2, 3, 5, 3)
  np.testing.assert_array_equal(_decode_png(rgb[3]), expected[1])

  rows = _read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert rows == [{'step': 1, 'loss': 2.5, 'acc': 0.25},
                  {'step': 2, 'loss': 1.5, 'acc': 0.5}]


def test_tf_free_writer_without_tensorboard(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(metric_writers, '_tensorboard_available', lambda: False)
  writer = metric_writers._create_tf_free_writer(
      str(tmp_path), is_main_process=True, asynchronous=False)
  writer.write_scalars(3, {'loss': 1.0})
  writer.write_images(3, {'img': np.zeros((1, 2, 2, 3), np.uint8)})
  writer.close()
  assert not _event_files(str(tmp_path))
  assert _read_jsonl(tmp_path / 'metrics.jsonl') == [{'step': 3, 'loss': 1.0}]


def test_tensorboard_event_writer_direct(tmp_path):
  writer = metric_writers.TensorBoardEventWriter(str(tmp_path))
  writer.write_scalars(7, {'a': 1, 'b': np.int32(2)})
  writer.write_images(7, {'single': np.ones((3, 3, 1), np.float32)})
  writer.close()
  writer.close()  # Idempotent.
  values, _ = _read_events(str(tmp_path))
  assert [(s, float(v)) for s, v in values['a']] == [(7, 1.0)]
  assert [(s, float(v)) for s, v in values['b']] == [(7, 2.0)]
  assert (_decode_png(values['single'][0][1][2]) == 255).all()


# ---------------------------------------------------------------------------
# JSONL.
# ---------------------------------------------------------------------------


def test_jsonl_nonfinite_values_stay_valid_json(tmp_path):
  path = tmp_path / 'sub' / 'metrics.jsonl'
  writer = metric_writers.JsonlWriter(str(path))
  writer.write_scalars(np.int64(5), {
      'nan': float('nan'), 'inf': np.float32(np.inf), 'ninf': -math.inf,
      'ok': np.float16(0.5), 'int': 3,
  })
  writer.flush()
  # Must parse with a strict parser (no bare NaN / Infinity tokens).
  with open(path) as f:
    line = f.readline()
  row = json.loads(line, parse_constant=lambda c: pytest.fail(c))
  assert row == {'step': 5, 'nan': 'nan', 'inf': 'inf', 'ninf': '-inf',
                 'ok': 0.5, 'int': 3.0}
  assert isinstance(row['int'], float)
  writer.close()


def test_jsonl_appends_across_writers(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  for step in (1, 2):
    writer = metric_writers.JsonlWriter(path)
    writer.write_scalars(step, {'x': step / 2})
    writer.close()
  assert _read_jsonl(path) == [{'step': 1, 'x': 0.5}, {'step': 2, 'x': 1.0}]


def test_jsonl_rejects_reserved_step_key(tmp_path):
  writer = metric_writers.JsonlWriter(str(tmp_path / 'm.jsonl'))
  with pytest.raises(ValueError, match='reserved'):
    writer.write_scalars(1, {'step': 1.0})
  writer.close()


def test_jsonl_remote_path_via_fsspec():
  import uuid

  import fsspec
  path = f'memory://cxr_jax_test_{uuid.uuid4().hex}/metrics.jsonl'
  writer = metric_writers.JsonlWriter(path)
  writer.write_scalars(1, {'x': 1.0})
  writer.close()
  writer = metric_writers.JsonlWriter(path)  # Resumes with existing rows.
  writer.write_scalars(2, {'x': 2.0})
  writer.close()
  with fsspec.open(path, 'r') as f:
    rows = [json.loads(line) for line in f.read().splitlines()]
  assert rows == [{'step': 1, 'x': 1.0}, {'step': 2, 'x': 2.0}]


# ---------------------------------------------------------------------------
# AsyncWriter.
# ---------------------------------------------------------------------------


class _FailingWriter(metric_writers.ConsoleWriter):

  def write_scalars(self, step, scalars):
    raise RuntimeError('boom')


def test_async_writer_surfaces_errors():
  writer = metric_writers.AsyncWriter(_FailingWriter())
  writer.write_scalars(1, {'x': 1.0})
  with pytest.raises(RuntimeError, match='boom'):
    writer.flush()
  writer.close()


# ---------------------------------------------------------------------------
# ProgressReporter.
# ---------------------------------------------------------------------------


class _FakeClock:

  def __init__(self, t=1000.0):
    self.t = t

  def __call__(self):
    return self.t


class _RecordingWriter(metric_writers.ConsoleWriter):

  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, dict(scalars)))


def test_progress_reporter_rates_and_eta(monkeypatch):
  logged = []
  monkeypatch.setattr(metric_writers.logging, 'info',
                      lambda msg, *args: logged.append(msg % args))
  clock = _FakeClock()
  writer = _RecordingWriter()
  reporter = metric_writers.ProgressReporter(
      1000, writer, every_steps=100, every_secs=None, examples_per_step=128,
      clock=clock)

  clock.t += 30.0  # First step, including compilation: not counted.
  assert not reporter(1)
  for step in range(2, 101):
    clock.t += 0.25
    fired = reporter(step)
    assert fired == (step == 100)
  # 99 steps in 24.75 s -> 4 steps/s, 512 img/s; 900 steps left -> 225 s.
  step, scalars = writer.rows[-1]
  assert step == 100
  assert scalars['steps_per_sec'] == pytest.approx(4.0)
  assert scalars['examples_per_sec'] == pytest.approx(512.0)
  assert scalars['uptime_s'] == pytest.approx(30.0 + 24.75)
  assert logged[-1] == 'step 100/1000 (10.0%): 4.0 steps/s, 512 img/s, ETA 3m45s'

  # The next interval is measured from the previous report.
  for step in range(101, 201):
    clock.t += 0.5
    reporter(step)
  step, scalars = writer.rows[-1]
  assert step == 200
  assert scalars['steps_per_sec'] == pytest.approx(2.0)
  assert logged[-1].endswith('2.0 steps/s, 256 img/s, ETA 6m40s')
  assert len(writer.rows) == 2


def test_progress_reporter_time_trigger_and_final_step():
  clock = _FakeClock()
  writer = _RecordingWriter()
  reporter = metric_writers.ProgressReporter(10, writer, every_secs=60.0,
                                             clock=clock)
  assert not reporter(0)
  clock.t += 59.0
  assert not reporter(1)
  clock.t += 1.0
  assert reporter(2)  # 60 s since the baseline.
  assert writer.rows[-1][1]['steps_per_sec'] == pytest.approx(2 / 60)
  assert 'examples_per_sec' not in writer.rows[-1][1]
  clock.t += 5.0
  assert reporter(10)  # Always report the last step.
  assert writer.rows[-1][1]['steps_per_sec'] == pytest.approx(8 / 5)
  assert not reporter(10)  # No progress, nothing to report.


def test_progress_reporter_without_writer_logs_only(monkeypatch):
  logged = []
  monkeypatch.setattr(metric_writers.logging, 'info',
                      lambda msg, *args: logged.append(msg % args))
  clock = _FakeClock()
  reporter = metric_writers.ProgressReporter(
      5000, None, every_steps=10, every_secs=None, clock=clock)
  reporter(4000)  # E.g. resumed from a checkpoint.
  clock.t += 20.0
  assert reporter(4010)
  assert logged[-1] == 'step 4010/5000 (80.2%): 0.5 steps/s, ETA 33m00s'


def test_format_duration():
  assert metric_writers.format_duration(35.2) == '35s'
  assert metric_writers.format_duration(275) == '4m35s'
  assert metric_writers.format_duration(7387) == '2h03m07s'
  assert metric_writers.format_duration(float('inf')) == '?'
