"""A decoded copy of a prepared split, for the training loop's reads.

TFDS stores each example as a tf.train.Example; reading one back means parsing that protobuf and
running TFDS's per-feature decoders, which costs about 2/3 of the host time per image in the MoCo
pipeline (benchmarks/RESULTS.md). The first time a split is read for training, this module writes
its examples once more in a flat layout: per record, a small JSON header (key, dtype, shape,
offset of every leaf) followed by the leaves' raw bytes, read back with `np.frombuffer` (no copy,
no decoding); binary masks are bit-packed (8x smaller records, unpacked in ~15 us). Examples come back as the same nested dicts of numpy arrays (bytes for text) that
`builder.as_data_source(split)` returns.

The cache lives next to the prepared dataset (`<dataset dir>/flat_cache/<split>.array_record`),
is written to a temporary name and renamed when complete (safe with several hosts on a shared
filesystem), and is rebuilt when the dataset is (it is inside the versioned dataset directory).
`config.data.flat_cache=False` reads through TFDS instead.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from absl import logging
import numpy as np

_LENGTH = struct.Struct('<I')
# uint8 arrays of at least this size holding only 0/1 (masks) are stored one bit per value.
_PACK_MIN_SIZE = 1024


def _flatten(example: dict, prefix: str = '') -> list[tuple[str, Any]]:
  items = []
  for key, value in example.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      items.extend(_flatten(value, name + '/'))
    else:
      items.append((name, value))
  return items


def encode(example: dict) -> bytes:
  """One example (nested dict of arrays / scalars / bytes) -> header + raw bytes."""
  header, chunks, offset = [], [], 0
  for name, value in _flatten(example):
    if isinstance(value, (bytes, str)):
      raw, kind, dtype, shape = (value.encode() if isinstance(value, str) else value), 'b', '', []
    else:
      array = np.asarray(value)  # (ascontiguousarray would make 0-d arrays 1-d)
      raw, kind, dtype, shape = array.tobytes(), 'a', array.dtype.str, list(array.shape)
      if array.dtype == np.uint8 and array.size >= _PACK_MIN_SIZE and array.max() <= 1:
        raw, kind = np.packbits(array.reshape(-1)).tobytes(), 'p'  # binary masks: 8x smaller
    header.append([name, kind, dtype, shape, offset, len(raw)])
    chunks.append(raw)
    offset += len(raw)
  head = json.dumps(header, separators=(',', ':')).encode()
  return _LENGTH.pack(len(head)) + head + b''.join(chunks)


def decode(record: bytes) -> dict:
  """Inverse of `encode`: arrays are read-only views of the record."""
  (size,) = _LENGTH.unpack_from(record)
  header = json.loads(record[_LENGTH.size:_LENGTH.size + size])
  base = _LENGTH.size + size
  out: dict = {}
  for name, kind, dtype, shape, offset, length in header:
    start = base + offset
    if kind == 'b':
      value = bytes(record[start:start + length])
    elif kind == 'p':
      size = int(np.prod(shape, dtype=np.int64))
      bits = np.frombuffer(record, np.uint8, count=length, offset=start)
      value = np.unpackbits(bits, count=size).reshape(shape)
    else:
      value = np.frombuffer(record, np.dtype(dtype), count=int(np.prod(shape, dtype=np.int64)),
                            offset=start).reshape(shape)
      if not shape:
        value = value[()]
    node = out
    *parents, leaf = name.split('/')
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return out


class FlatSource:
  """Random-access source over a flat cache file; picklable (grain worker processes)."""

  def __init__(self, path: str):
    self.path = path
    self._records = None

  def _source(self):
    if self._records is None:
      import grain  # pylint: disable=g-import-not-at-top
      self._records = grain.sources.ArrayRecordDataSource([self.path])
    return self._records

  def __getstate__(self):
    return {'path': self.path, '_records': None}

  def __len__(self) -> int:
    return len(self._source())

  def __getitem__(self, index: int) -> dict:
    return decode(self._source()[int(index)])


def build(source, path: str) -> None:
  """Writes every example of `source` to `path` (atomically; no-op if it exists)."""
  if os.path.exists(path):
    return
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
  try:
    for i in range(len(source)):
      writer.write(encode(source[i]))
  finally:
    writer.close()
  os.replace(tmp, path)
  logging.info('Wrote the flat cache %s (%d examples)', path, len(source))


def cached_source(builder, split: str, tfds_source):
  """The split as a FlatSource, building the cache from `tfds_source` on first use (local
  filesystems only: for remote data dirs such as gs:// the TFDS source is returned)."""
  if '://' in str(builder.data_dir):
    return tfds_source
  path = os.path.join(str(builder.data_dir), 'flat_cache', f'{split}.array_record')
  build(tfds_source, path)
  return FlatSource(path)
