"""Metric writers that work with and without TensorFlow.

clu's metric writers import TensorFlow as soon as they are imported, and many
TPU VM / GPU images do not ship TensorFlow. This module picks a backend at
runtime:

* TensorFlow and clu importable: clu's default writer (console + TF summaries)
  plus a `JsonlWriter`.
* Otherwise: our own TF-free stack of `ConsoleWriter` + `TensorBoardEventWriter`
  (event files written with the pure-python `tensorboard` package) +
  `JsonlWriter`. If `tensorboard` is missing too, console + JSONL only.

Every writer exposes the same small, clu-compatible surface:
`write_scalars(step, scalars)`, `write_images(step, images)`,
`write_hparams(hparams)`, `flush()` and `close()`.

`ProgressReporter` is a single implementation (used in both cases) that logs
throughput / ETA and writes `steps_per_sec`, `examples_per_sec`, `uptime_s`.

Both backends write TensorBoard data in the same on-disk format: scalars and
images are "tensor" summaries tagged with the `scalars` / `images` plugin, i.e.
exactly what `tf.summary.scalar` / `tf.summary.image` produce. Readers (e.g.
`EventAccumulator.Tensors`) therefore do not need to know which backend ran.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import importlib.util
import json
import math
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
from absl import logging

JSONL_FILENAME = "metrics.jsonl"


# ---------------------------------------------------------------------------
# Backend detection.
# ---------------------------------------------------------------------------


def _module_importable(name: str) -> bool:
  """True when `name` can be found *and* imported without error."""
  try:
    if importlib.util.find_spec(name) is None:
      return False
  except (ImportError, ValueError):
    # A meta-path hook (or a broken parent package) may raise here instead of
    # returning None; treat that as "not available".
    return False
  try:
    importlib.import_module(name)
  except Exception:  # pylint: disable=broad-except
    # A half-installed TF can fail with all kinds of errors, not just
    # ImportError.
    return False
  return True


@functools.cache
def tensorflow_available() -> bool:
  """Whether TensorFlow can be imported in this process (result is cached)."""
  return _module_importable("tensorflow")


@functools.cache
def _clu_writers_available() -> bool:
  return tensorflow_available() and _module_importable("clu.metric_writers")


@functools.cache
def _tensorboard_available() -> bool:
  return _module_importable("tensorboard.summary.writer.event_file_writer")


# ---------------------------------------------------------------------------
# Writer interface and small helpers.
# ---------------------------------------------------------------------------


@runtime_checkable
class Writer(Protocol):
  """The subset of clu's `MetricWriter` interface this project relies on."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    ...

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    ...

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    ...

  def flush(self) -> None:
    ...

  def close(self) -> None:
    ...


def _flatten_hparams(hparams: Any, prefix: str = "") -> dict[str, Any]:
  """Flattens nested mappings (incl. ConfigDicts) to dotted keys.

  Leaves are mapped to types TensorBoard's hparams plugin accepts (bool, int,
  float, str); None becomes "" and anything else is stringified.
  """
  flat: dict[str, Any] = {}
  for key, value in hparams.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) or hasattr(value, "items"):
      flat.update(_flatten_hparams(value, prefix=f"{name}."))
    elif isinstance(value, (list, tuple)):
      flat.update(
          _flatten_hparams(
              {str(i): v for i, v in enumerate(value)}, prefix=f"{name}."))
    else:
      if isinstance(value, np.generic):
        value = value.item()
      if value is None:
        value = ""
      elif not isinstance(value, (bool, int, float, str)):
        value = str(value)
      flat[name] = value
  return flat


def _json_number(value: float) -> float | str:
  """Floats go to JSON as-is; NaN / +-inf become strings to keep JSON valid."""
  if math.isnan(value):
    return "nan"
  if math.isinf(value):
    return "inf" if value > 0 else "-inf"
  return value


def _as_uint8_images(images: Any) -> np.ndarray:
  """Returns images as a uint8 array of shape [N, H, W, C] with C in 1..4.

  Accepts [N, H, W, C] or a single [H, W, C] image. Floating point input is
  expected in [0, 1] (clipped); integer input is clipped to [0, 255].
  """
  arr = np.asarray(images)
  if arr.ndim == 3:
    arr = arr[None]
  if arr.ndim != 4 or arr.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(
        "Expected images of shape [N, H, W, C] (or [H, W, C]) with C in "
        f"1..4, got shape {arr.shape}.")
  if arr.dtype == np.uint8:
    return arr
  if arr.dtype == np.bool_:
    return arr.astype(np.uint8) * 255
  if np.issubdtype(arr.dtype, np.floating):
    # Same mapping as tf.image.convert_image_dtype(..., saturate=True), which
    # tf.summary.image uses, so both backends produce identical pixels.
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
    return (np.clip(arr, 0.0, 1.0) * 255.5).astype(np.uint8)
  if np.issubdtype(arr.dtype, np.integer):
    return np.clip(arr, 0, 255).astype(np.uint8)
  raise ValueError(f"Unsupported image dtype {arr.dtype}.")


# PNG colour types by number of channels: grey, grey+alpha, RGB, RGBA.
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


def encode_png(image: np.ndarray) -> bytes:
  """Encodes one uint8 [H, W, C] image (C in 1..4) as PNG, stdlib only."""
  image = np.ascontiguousarray(image, dtype=np.uint8)
  height, width, channels = image.shape

  def chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

  header = struct.pack(">IIBBBBB", width, height, 8,
                       _PNG_COLOR_TYPE[channels], 0, 0, 0)
  # Every scanline starts with a filter-type byte; 0 means "no filter".
  rows = image.reshape(height, width * channels)
  raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
          chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) +
          chunk(b"IEND", b""))


# ---------------------------------------------------------------------------
# Concrete writers.
# ---------------------------------------------------------------------------


class JsonlWriter:
  """Appends one JSON object per `write_scalars` call to a JSONL file.

  Each line looks like `{"step": 10, "loss": 0.25, "acc": "nan"}`. Values are
  converted with `float()` (works for Python, numpy and jax scalars); NaN and
  infinities are written as the strings "nan", "inf" and "-inf" so that every
  line is strict JSON. Images and hparams are ignored.

  Local paths are opened in append mode. Paths with a URL scheme (e.g.
  `gs://...`) go through fsspec; object stores cannot append, so there the
  whole file is rewritten on every `flush()`.
  """

  def __init__(self, path: str):
    self._path = os.fspath(path)
    self._lock = threading.Lock()
    self._closed = False
    self._remote = "://" in self._path
    if self._remote:
      import fsspec  # pylint: disable=g-import-not-at-top
      self._fs, self._fs_path = fsspec.core.url_to_fs(self._path)
      self._lines: list[str] = []
      if self._fs.exists(self._fs_path):
        with self._fs.open(self._fs_path, "r") as f:
          self._lines = [line for line in f.read().splitlines() if line]
      self._dirty = False
    else:
      parent = os.path.dirname(self._path)
      if parent:
        os.makedirs(parent, exist_ok=True)
      self._file = open(self._path, "a", encoding="utf-8")

  @property
  def path(self) -> str:
    return self._path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if "step" in scalars:
      raise ValueError("'step' is reserved in the JSONL rows; rename the "
                       "scalar.")
    row: dict[str, Any] = {"step": int(step)}
    for name, value in scalars.items():
      row[str(name)] = _json_number(float(value))
    line = json.dumps(row, allow_nan=False)
    with self._lock:
      if self._remote:
        self._lines.append(line)
        self._dirty = True
      else:
        self._file.write(line + "\n")

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    del step, images

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams

  def flush(self) -> None:
    with self._lock:
      if self._closed:
        return
      if self._remote:
        if self._dirty:
          with self._fs.open(self._fs_path, "w") as f:
            f.write("".join(line + "\n" for line in self._lines))
          self._dirty = False
      else:
        self._file.flush()

  def close(self) -> None:
    self.flush()
    with self._lock:
      if self._closed:
        return
      self._closed = True
      if not self._remote:
        self._file.close()


class ConsoleWriter:
  """Writes metrics to the absl log (INFO), one line per call."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    parts = []
    for name, value in sorted(scalars.items()):
      parts.append(f"{name}={float(value):.6g}")
    logging.info("[%d] %s", int(step), ", ".join(parts))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    shapes = {name: tuple(np.shape(value)) for name, value in images.items()}
    logging.info("[%d] images: %s", int(step), shapes)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info("[hparams] %s", _flatten_hparams(hparams))

  def flush(self) -> None:
    logging.flush()

  def close(self) -> None:
    self.flush()


class TensorBoardEventWriter:
  """Writes TensorBoard event files without TensorFlow.

  Uses the pure-python `tensorboard` package (`EventFileWriter` and the protos
  under `tensorboard.compat.proto`). Summaries use the same representation as
  `tf.summary.scalar` / `tf.summary.image`:

  * scalar: float32 rank-0 tensor, `scalars` plugin metadata;
  * image: string tensor `[width, height, png_0, ..., png_{N-1}]`, `images`
    plugin metadata;
  * hparams: the hparams plugin's session-start summary (at step 0).
  """

  def __init__(self, logdir: str, *, flush_secs: float = 30.0,
               max_queue_size: int = 100):
    # Imported lazily so that this module imports without tensorboard.
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.compat.proto import tensor_pb2
    from tensorboard.compat.proto import tensor_shape_pb2
    from tensorboard.compat.proto import types_pb2
    from tensorboard.plugins.image import metadata as image_metadata
    from tensorboard.plugins.scalar import metadata as scalar_metadata
    from tensorboard.summary.writer import event_file_writer
    # pylint: enable=g-import-not-at-top
    self._event_pb2 = event_pb2
    self._summary_pb2 = summary_pb2
    self._tensor_pb2 = tensor_pb2
    self._shape_pb2 = tensor_shape_pb2
    self._types_pb2 = types_pb2

    self._scalar_metadata = scalar_metadata.create_summary_metadata(
        display_name="", description="")
    self._scalar_metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
    self._image_metadata = image_metadata.create_summary_metadata(
        display_name="", description="")
    self._image_metadata.data_class = summary_pb2.DATA_CLASS_BLOB_SEQUENCE

    self._writer = event_file_writer.EventFileWriter(
        os.fspath(logdir), max_queue_size=max_queue_size,
        flush_secs=flush_secs)
    self._closed = False

  @property
  def logdir(self) -> str:
    return self._writer.get_logdir()

  def _add(self, step: int, values: list[Any]) -> None:
    summary = self._summary_pb2.Summary(value=values)
    event = self._event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary)
    self._writer.add_event(event)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = []
    for name, value in scalars.items():
      tensor = self._tensor_pb2.TensorProto(
          dtype=self._types_pb2.DT_FLOAT,
          tensor_shape=self._shape_pb2.TensorShapeProto(),
          float_val=[float(value)])
      values.append(self._summary_pb2.Summary.Value(
          tag=str(name), tensor=tensor, metadata=self._scalar_metadata))
    if values:
      self._add(step, values)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    values = []
    for name, batch in images.items():
      batch = _as_uint8_images(batch)
      _, height, width, _ = batch.shape
      blobs = [str(width).encode(), str(height).encode()]
      blobs += [encode_png(image) for image in batch]
      tensor = self._tensor_pb2.TensorProto(
          dtype=self._types_pb2.DT_STRING,
          tensor_shape=self._shape_pb2.TensorShapeProto(
              dim=[self._shape_pb2.TensorShapeProto.Dim(size=len(blobs))]),
          string_val=blobs)
      values.append(self._summary_pb2.Summary.Value(
          tag=str(name), tensor=tensor, metadata=self._image_metadata))
    if values:
      self._add(step, values)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    # summary_v2 only touches TF inside functions we do not call.
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top
    summary = summary_v2.hparams_pb(_flatten_hparams(hparams))
    self._writer.add_event(
        self._event_pb2.Event(wall_time=time.time(), step=0, summary=summary))

  def flush(self) -> None:
    if not self._closed:
      self._writer.flush()

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      self._writer.close()


class MultiWriter:
  """Forwards every call to each of `writers`, in order."""

  def __init__(self, writers: list[Any]):
    self._writers = list(writers)

  @property
  def writers(self) -> list[Any]:
    return list(self._writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    for w in self._writers:
      w.write_images(step, images)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self) -> None:
    for w in self._writers:
      w.flush()

  def close(self) -> None:
    for w in self._writers:
      w.close()


class AsyncWriter:
  """Runs another writer's calls on one background thread, in call order.

  This keeps device->host transfers (`float(jax_array)`) and file I/O off the
  training loop. An exception raised in the background is re-raised on the
  next call from the caller's thread (or by `flush()` / `close()`).
  """

  def __init__(self, writer: Any):
    self._writer = writer
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="metric_writer")
    self._pending: list[concurrent.futures.Future[Any]] = []
    self._closed = False

  def _check_errors(self, wait: bool) -> None:
    if wait:
      concurrent.futures.wait(self._pending)
    still_pending = []
    error = None
    for future in self._pending:
      if not future.done():
        still_pending.append(future)
      elif error is None and future.exception() is not None:
        error = future.exception()
    self._pending = still_pending
    if error is not None:
      raise error

  def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
    if self._closed:
      raise RuntimeError("Writer is closed.")
    self._check_errors(wait=False)
    self._pending.append(self._pool.submit(fn, *args))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._submit(self._writer.write_scalars, step, dict(scalars))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    self._submit(self._writer.write_images, step, dict(images))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._submit(self._writer.write_hparams, hparams)

  def flush(self) -> None:
    if self._closed:
      return
    self._pending.append(self._pool.submit(self._writer.flush))
    self._check_errors(wait=True)

  def close(self) -> None:
    if self._closed:
      return
    try:
      self.flush()
    finally:
      self._closed = True
      self._pool.shutdown(wait=True)
      self._writer.close()


# ---------------------------------------------------------------------------
# Factory.
# ---------------------------------------------------------------------------


def _create_clu_writer(workdir: str, is_main_process: bool,
                       asynchronous: bool) -> Any:
  from clu import metric_writers as clu_writers  # pylint: disable=g-import-not-at-top
  default = clu_writers.create_default_writer(
      workdir, just_logging=not is_main_process, asynchronous=asynchronous)
  if not is_main_process:
    return default
  jsonl: Any = JsonlWriter(os.path.join(workdir, JSONL_FILENAME))
  if asynchronous:
    jsonl = clu_writers.AsyncWriter(jsonl)
  # clu's MultiWriter only forwards calls, so a duck-typed writer is fine.
  return clu_writers.MultiWriter([default, jsonl])


def _create_tf_free_writer(workdir: str, is_main_process: bool,
                           asynchronous: bool) -> Any:
  writers: list[Any] = [ConsoleWriter()]
  if is_main_process:
    if _tensorboard_available():
      writers.append(TensorBoardEventWriter(workdir))
    else:
      logging.warning(
          "Neither TensorFlow nor tensorboard is importable: metrics go to the "
          "console and %s only (no TensorBoard event files).", JSONL_FILENAME)
    writers.append(JsonlWriter(os.path.join(workdir, JSONL_FILENAME)))
  writer: Any = MultiWriter(writers)
  if asynchronous:
    writer = AsyncWriter(writer)
  return writer


def create_writer(workdir: str, *, is_main_process: bool = True,
                  asynchronous: bool = True) -> Writer:
  """Creates the metric writer for training / evaluation.

  Args:
    workdir: Directory for TensorBoard event files and `metrics.jsonl`.
    is_main_process: Only the main process writes files; other processes only
      log to the console.
    asynchronous: Perform writes on a background thread.

  Returns:
    A writer with `write_scalars`, `write_images`, `write_hparams`, `flush`
    and `close`. With TensorFlow + clu available it is built from clu's default
    writer; otherwise from the TF-free writers in this module.
  """
  workdir = os.fspath(workdir)
  if _clu_writers_available():
    logging.info("Metric writer: clu (TensorFlow summaries) + %s.",
                 JSONL_FILENAME)
    return _create_clu_writer(workdir, is_main_process, asynchronous)
  logging.info("Metric writer: TensorFlow-free backend.")
  return _create_tf_free_writer(workdir, is_main_process, asynchronous)


# ---------------------------------------------------------------------------
# Progress reporting.
# ---------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
  """Formats seconds as e.g. '35s', '4m35s' or '2h03m07s'."""
  if not math.isfinite(seconds):
    return "?"
  total = max(0, int(round(seconds)))
  hours, rest = divmod(total, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m{secs:02d}s"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


def _format_rate(rate: float) -> str:
  if rate >= 100:
    return f"{rate:.0f}"
  if rate >= 1:
    return f"{rate:.1f}"
  return f"{rate:.3g}"


class ProgressReporter:
  """Reports training throughput and ETA; call once per step.

  The trainer calls `reporter(step)` after finishing `step`. The first call
  only records the starting point, so the first step (which includes XLA
  compilation) never counts towards throughput. Afterwards the reporter fires
  when `step` is a multiple of `every_steps`, when `every_secs` seconds have
  passed since the last report, or at `num_train_steps`. On firing it:

  * writes scalars `steps_per_sec`, `examples_per_sec` (only if
    `examples_per_step` was given) and `uptime_s` (seconds since the reporter
    was constructed) to `writer` (if any);
  * logs e.g. "step 120/1000 (12.0%): 3.2 steps/s, 410 img/s, ETA 4m35s".

  Rates are measured over the interval since the previous report (or since the
  first call); the ETA extrapolates that rate to `num_train_steps`.
  """

  def __init__(self, num_train_steps: int, writer: Writer | None = None,
               every_steps: int | None = None,
               every_secs: float | None = 60.0,
               examples_per_step: int | None = None,
               clock: Callable[[], float] = time.monotonic):
    self.num_train_steps = int(num_train_steps)
    self._writer = writer
    self._every_steps = every_steps
    self._every_secs = every_secs
    self._examples_per_step = examples_per_step
    self._clock = clock
    self._created = clock()
    self._last_step: int | None = None
    self._last_time: float | None = None

  def __call__(self, step: int) -> bool:
    """Records that `step` finished; returns True if a report was made."""
    step = int(step)
    now = self._clock()
    if self._last_step is None:
      self._last_step, self._last_time = step, now
      return False
    if step <= self._last_step:
      return False
    elapsed = now - self._last_time
    fire = (
        step >= self.num_train_steps
        or (self._every_steps and step % self._every_steps == 0)
        or (self._every_secs is not None and elapsed >= self._every_secs))
    if not fire or elapsed <= 0:
      return False
    self._report(step, now, (step - self._last_step) / elapsed)
    self._last_step, self._last_time = step, now
    return True

  def _report(self, step: int, now: float, steps_per_sec: float) -> None:
    scalars = {"steps_per_sec": steps_per_sec}
    parts = [f"{_format_rate(steps_per_sec)} steps/s"]
    if self._examples_per_step is not None:
      examples_per_sec = steps_per_sec * self._examples_per_step
      scalars["examples_per_sec"] = examples_per_sec
      parts.append(f"{_format_rate(examples_per_sec)} img/s")
    scalars["uptime_s"] = now - self._created
    remaining = max(0, self.num_train_steps - step)
    parts.append(f"ETA {format_duration(remaining / steps_per_sec)}")
    percent = 100.0 * step / max(1, self.num_train_steps)
    logging.info("step %d/%d (%.1f%%): %s", step, self.num_train_steps,
                 percent, ", ".join(parts))
    if self._writer is not None:
      self._writer.write_scalars(step, scalars)
