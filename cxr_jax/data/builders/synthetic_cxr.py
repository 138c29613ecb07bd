"""TFDS builder for the procedural chest-radiograph dataset.

Wraps :func:`cxr_jax.data.synthetic.render_example`.  Nothing is downloaded;
examples are rendered in a small process pool while TFDS writes them.  The
images are stored pre-decoded (zlib-compressed raw uint8 tensors) so that
random access through ``builder.as_data_source(split)`` is cheap and needs no
TensorFlow.

Usage::

    from cxr_jax.data.builders import synthetic_cxr  # registers the builder
    builder = tfds.builder('synthetic_cxr/tiny', data_dir=...)
    builder.download_and_prepare(file_format='array_record')
    ds = builder.as_data_source('train')
    ds[0]['image']  # np.uint8 [64, 64, 1]
"""

from __future__ import annotations

import collections
from concurrent import futures
import dataclasses
import multiprocessing
import os
from typing import Iterator, Tuple

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data import synthetic

# Validation examples use indices from this offset on, so the two splits never
# share a rendered patient whatever their sizes.
VALIDATION_INDEX_OFFSET = 1 << 30
SOURCE_NAME = 'synthetic_cxr'
# Examples per unit of work sent to a rendering process.
_CHUNK = 16
# Start methods whose pool broke in this process (see `_render_parallel`).
_pool_failed = collections.defaultdict(bool)


@dataclasses.dataclass(eq=False)
class SyntheticCxrConfig(tfds.core.BuilderConfig):
  """Size and seed of a synthetic dataset variant."""

  image_size_px: int = 256
  num_train: int = 2000
  num_validation: int = 500
  seed: int = 0


def _render_parallel(seed, indices, size, num_workers, start_method):
  """Yields (index, rendered example) in order, rendering in worker processes.

  Work is cut into chunks and at most a few chunks per worker are in flight,
  so memory stays bounded however slowly the consumer (the TFDS writer) runs.
  If the pool breaks (typically: the 'spawn' workers re-ran an unguarded main
  script and refused to start), the remaining examples are rendered inline.
  """
  indices = list(indices)
  workers = max(1, min(int(num_workers), os.cpu_count() or 1))
  done = 0
  if workers > 1 and len(indices) >= 4 * _CHUNK and not _pool_failed[start_method]:
    chunks = [indices[k:k + _CHUNK] for k in range(0, len(indices), _CHUNK)]
    try:
      with futures.ProcessPoolExecutor(
          workers,
          mp_context=multiprocessing.get_context(start_method),
          initializer=synthetic.init_render_worker,
      ) as pool:
        pending = collections.deque()
        next_chunk = 0
        while next_chunk < len(chunks) or pending:
          while next_chunk < len(chunks) and len(pending) < 3 * workers:
            pending.append((chunks[next_chunk], pool.submit(
                synthetic.render_range, seed, chunks[next_chunk], size)))
            next_chunk += 1
          chunk, fut = pending.popleft()
          for item in zip(chunk, fut.result()):
            yield item
            done += 1
    except futures.BrokenExecutor:
      _pool_failed[start_method] = True  # don't retry for the next split
      logging.warning(
          'synthetic_cxr: rendering processes failed; rendering the remaining '
          '%d examples in this process. With the "%s" start method, workers '
          're-import the main script: prepare the dataset under '
          '`if __name__ == "__main__":` to get parallel rendering.',
          len(indices) - done, start_method)
  for i in indices[done:]:
    yield i, synthetic.render_example(seed, i, size)


class SyntheticCxr(tfds.core.GeneratorBasedBuilder):
  """Procedurally rendered chest X-rays with lung masks and opacity boxes."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Images stored uncompressed (zlib saved ~13 % but cost as much '
                            'read time as the augmentation); masks stay zlib-compressed.'}
  BUILDER_CONFIGS = [
      SyntheticCxrConfig(
          name='default',
          description='256 px, 2000 train / 500 validation images.',
          image_size_px=256,
          num_train=2000,
          num_validation=500,
          seed=0,
      ),
      SyntheticCxrConfig(
          name='tiny',
          description='64 px, 256 train / 128 validation images (tests).',
          image_size_px=64,
          num_train=256,
          num_validation=128,
          seed=0,
      ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'

  # Rendering processes used by `_generate_examples` (1 = render inline).
  num_workers: int = 2
  # 'spawn' keeps workers clear of any threads (TF, JAX) in the parent; the
  # workers only import numpy, OpenCV and `cxr_jax.data.synthetic`.
  mp_start_method: str = 'spawn'

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 derives this through `importlib_resources`, a backport that
    # is only installed on Python < 3.9; the file path is all it needs.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size_px
    image_spec = dict(shape=(size, size, 1), dtype=np.uint8)
    return self.dataset_info_from_configs(
        description=(
            'Procedural frontal chest radiographs. Classes: '
            + ', '.join(synthetic.CLASS_NAMES)
            + '. Each image has a binary lung mask and one box per opacity.'
        ),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(**image_spec),
            'lung_mask': tfds.features.Tensor(**image_spec,
                                              encoding=tfds.features.Encoding.ZLIB),
            'label': tfds.features.ClassLabel(names=list(synthetic.CLASS_NAMES)),
            'objects': tfds.features.Sequence({
                'bbox': tfds.features.BBoxFeature(),
                'label': tfds.features.ClassLabel(
                    names=list(synthetic.OBJECT_CLASS_NAMES)
                ),
            }),
            'patient_id': tfds.features.Text(),
            'source': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {
        'train': self._generate_examples('train', 0, cfg.num_train),
        'validation': self._generate_examples(
            'validation', VALIDATION_INDEX_OFFSET, cfg.num_validation
        ),
    }

  def _generate_examples(
      self, split: str, index_offset: int, num_examples: int
  ) -> Iterator[Tuple[int, dict]]:
    cfg = self.builder_config
    indices = range(index_offset, index_offset + num_examples)
    for index, rendered in _render_parallel(
        cfg.seed, indices, cfg.image_size_px, self.num_workers,
        self.mp_start_method):
      yield self._to_example(split, index_offset, index, rendered)

  @staticmethod
  def _to_example(split, index_offset, index, rendered):
    local = index - index_offset
    boxes = rendered['bboxes'].astype(np.float32).reshape(-1, 4)
    example = {
        'image': rendered['image'],
        'lung_mask': rendered['lung_mask'],
        'label': int(rendered['label']),
        'objects': {
            'bbox': boxes,
            'label': np.zeros((boxes.shape[0],), np.int64),
        },
        'patient_id': f'synthetic-{split}-{local:06d}',
        'source': SOURCE_NAME,
    }
    return local, example
