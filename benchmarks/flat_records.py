"""A minimal record format for the `flat` variant of benchmarks/input_pipeline.py.

Each ArrayRecord record is a 12-byte header (int32 label, height, width, little endian) followed by
the raw uint8 pixels: no zlib, no tf.train.Example, no TFDS feature decoding, parsed with
`np.frombuffer`. It shows what the stored format costs per example, not a proposal to replace
TFDS; see benchmarks/RESULTS.md for the change it motivates (storing images uncompressed).
"""

from __future__ import annotations

import os
import struct

import numpy as np

HEADER_FORMAT = '<iii'
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)


class FlatSource:
  """Random access to a minimal record format: int32 label, int32 height, int32 width, then the
  raw uint8 pixels (no compression, no tf.train.Example). Picklable for grain workers."""

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

  def __len__(self):
    return len(self._source())

  def __getitem__(self, index):
    record = self._source()[int(index)]
    label, h, w = struct.unpack_from(HEADER_FORMAT, record)
    image = np.frombuffer(record, np.uint8, count=h * w, offset=HEADER_SIZE)
    return {'image': image.reshape(h, w, 1), 'label': label}


def write_flat(source, path: str) -> None:
  """Writes `source` (decoded examples) as FlatSource records, once."""
  if os.path.exists(path):
    return
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp'
  writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
  for i in range(len(source)):
    ex = source[i]
    image = np.ascontiguousarray(ex['image'], np.uint8)
    writer.write(struct.pack(HEADER_FORMAT, int(ex['label']), image.shape[0], image.shape[1])
                 + image.tobytes())
  writer.close()
  os.replace(tmp, path)
