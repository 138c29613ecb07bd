"""Tests for the procedural chest X-ray renderer and its TFDS builder."""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from cxr_jax.data import synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Renders shared by the statistics tests (64 px: the size the SSL encoder sees).
_STATS_SIZE = 64
_STATS_N = 600
_STATS_TRAIN = 400


def _render(index, size=64, seed=0):
  return synthetic.render_example(seed, index, size)


@pytest.fixture(scope='module')
def stats_set():
  examples = [_render(i, _STATS_SIZE, seed=11) for i in range(_STATS_N)]
  labels = np.array([e['label'] for e in examples])
  return examples, labels


# ----------------------------------------------------------------------------- renderer basics


def test_shapes_and_dtypes():
  for size in (64, 96, 256):
    ex = _render(3, size)
    assert set(ex) == {'image', 'lung_mask', 'label', 'bboxes'}
    assert ex['image'].shape == (size, size, 1) and ex['image'].dtype == np.uint8
    assert ex['lung_mask'].shape == (size, size, 1) and ex['lung_mask'].dtype == np.uint8
    assert isinstance(ex['label'], int) and 0 <= ex['label'] < 4
    assert ex['bboxes'].dtype == np.float32 and ex['bboxes'].ndim == 2
    assert ex['bboxes'].shape[1] == 4


def test_deterministic():
  a, b = _render(17, 128), _render(17, 128)
  for key in ('image', 'lung_mask', 'bboxes'):
    np.testing.assert_array_equal(a[key], b[key])
  assert a['label'] == b['label']
  c = _render(18, 128)
  assert not np.array_equal(a['image'], c['image'])
  d = _render(17, 128, seed=1)
  assert not np.array_equal(a['image'], d['image'])


def test_scene_does_not_depend_on_resolution():
  # Same patient at two sizes: same label, same mask up to resampling.
  small, large = _render(5, 64), _render(5, 256)
  assert small['label'] == large['label']
  shrunk = large['lung_mask'][..., 0].reshape(64, 4, 64, 4).mean(axis=(1, 3)) >= 0.5
  agree = np.mean(shrunk == (small['lung_mask'][..., 0] > 0))
  assert agree > 0.97


def test_labels_balanced():
  labels = [synthetic.label_for_index(0, i) for i in range(400)]
  assert np.bincount(labels, minlength=4).tolist() == [100, 100, 100, 100]
  assert len(synthetic.CLASS_NAMES) == 4
  assert synthetic.CLASS_NAMES[0] == 'normal'


def test_masks_and_boxes():
  size = 64
  for i in range(120):
    ex = _render(i, size, seed=3)
    mask = ex['lung_mask'][..., 0]
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert 0.15 <= mask.mean() <= 0.45, (i, mask.mean())
    boxes, label = ex['bboxes'], ex['label']
    assert np.all(boxes >= 0.0) and np.all(boxes <= 1.0)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    if label == 0:
      assert boxes.shape[0] == 0
      continue
    assert boxes.shape[0] >= 1
    centres_x = (boxes[:, 1] + boxes[:, 3]) / 2
    if label == 1:  # several patches, in both lungs
      assert 4 <= boxes.shape[0] <= 6
      assert (centres_x < 0.5).any() and (centres_x > 0.5).any()
    elif label == 2:  # a single consolidation
      assert boxes.shape[0] == 1
    else:  # one box per lung
      assert boxes.shape[0] == 2
      assert (centres_x < 0.5).sum() == 1
    for box in boxes:
      y0, x0, y1, x1 = np.round(box * size).astype(int)
      # Lesions lie in the lungs (boxes of peripheral patches also cover the
      # chest wall next to them) and are large enough to survive 64 px.
      assert mask[y0:y1, x0:x1].mean() > 0.3
      assert max(box[2] - box[0], box[3] - box[1]) >= 0.08


def test_lesions_are_brighter_than_surrounding_lung():
  for i in range(40):
    ex = _render(i, 128, seed=4)
    if ex['label'] in (0, 3):
      continue
    img = ex['image'][..., 0].astype(np.float32)
    mask = ex['lung_mask'][..., 0] > 0
    inside = np.zeros_like(mask)
    for box in ex['bboxes']:
      y0, x0, y1, x1 = np.round(box * 128).astype(int)
      inside[y0:y1, x0:x1] = True
    lesion, rest = img[mask & inside], img[mask & ~inside]
    assert lesion.mean() - rest.mean() > 0.3 * rest.std(), i


# ----------------------------------------------------------------------------- class statistics


def _global_features(examples):
  feats = []
  for e in examples:
    img = e['image'].astype(np.float32)
    feats.append([img.mean(), img.std(), *np.percentile(img, [5, 25, 50, 75, 95])])
  return np.asarray(feats)


def _lung_grid_features(examples, grid=8):
  """Mean intensity per grid cell inside the lungs, in units of the lung's own mean/std."""
  feats = []
  for e in examples:
    img = e['image'][..., 0].astype(np.float32)
    mask = e['lung_mask'][..., 0] > 0
    z = (img - img[mask].mean()) / (img[mask].std() + 1e-6)
    cell = img.shape[0] // grid
    sums = (z * mask).reshape(grid, cell, grid, cell).sum(axis=(1, 3))
    counts = mask.reshape(grid, cell, grid, cell).sum(axis=(1, 3))
    feats.append(np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).ravel())
  return np.asarray(feats)


def _fit_and_score(x, y, model):
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  clf = make_pipeline(StandardScaler(), model)
  clf.fit(x[:_STATS_TRAIN], y[:_STATS_TRAIN])
  return clf.score(x[_STATS_TRAIN:], y[_STATS_TRAIN:])


def test_global_statistics_do_not_reveal_class(stats_set):
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.neighbors import KNeighborsClassifier  # pylint: disable=g-import-not-at-top
  examples, labels = stats_set
  x = _global_features(examples)
  lr = _fit_and_score(x, labels, LogisticRegression(max_iter=2000))
  knn = _fit_and_score(x, labels, KNeighborsClassifier(n_neighbors=15))
  assert lr <= 0.40, lr
  assert knn <= 0.40, knn


def test_lesion_structure_is_learnable(stats_set):
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  examples, labels = stats_set
  x = _lung_grid_features(examples)
  acc = _fit_and_score(x, labels, LogisticRegression(max_iter=2000, C=0.5))
  assert acc >= 0.60, acc


# ----------------------------------------------------------------------------- TFDS builder


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  importlib.import_module('cxr_jax.data.builders.synthetic_cxr')  # registers the builder
  data_dir = tmp_path_factory.mktemp('tfds')
  builder = tfds.builder('synthetic_cxr/tiny', data_dir=str(data_dir))
  builder.download_and_prepare(file_format='array_record')
  return data_dir


def test_builder_configs():
  from cxr_jax.data.builders import synthetic_cxr  # pylint: disable=g-import-not-at-top
  configs = {c.name: c for c in synthetic_cxr.SyntheticCxr.BUILDER_CONFIGS}
  assert synthetic_cxr.SyntheticCxr.BUILDER_CONFIGS[0].name == 'default'
  assert (configs['default'].image_size_px, configs['default'].num_train,
          configs['default'].num_validation, configs['default'].seed) == (256, 2000, 500, 0)
  assert (configs['tiny'].image_size_px, configs['tiny'].num_train,
          configs['tiny'].num_validation) == (64, 256, 128)


def test_builder_tiny_data_source(tiny_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('synthetic_cxr/tiny', data_dir=str(tiny_dir))
  info = builder.info
  assert info.splits['train'].num_examples == 256
  assert info.splits['validation'].num_examples == 128
  assert info.features['label'].names == list(synthetic.CLASS_NAMES)
  assert info.features['objects']['label'].names == ['opacity']

  hashes = {}
  for split, n in (('train', 256), ('validation', 128)):
    source = builder.as_data_source(split)
    assert len(source) == n
    labels, ids, digests = [], set(), set()
    for i in range(n):
      ex = source[i]
      assert ex['image'].shape == (64, 64, 1) and ex['image'].dtype == np.uint8
      assert ex['lung_mask'].shape == (64, 64, 1) and ex['lung_mask'].dtype == np.uint8
      assert set(np.unique(ex['lung_mask']).tolist()) <= {0, 1}
      label = int(ex['label'])
      assert 0 <= label < 4
      boxes = np.asarray(ex['objects']['bbox'], np.float32).reshape(-1, 4)
      assert (boxes.shape[0] == 0) == (label == 0)
      assert np.all((boxes >= 0) & (boxes <= 1))
      assert len(ex['objects']['label']) == boxes.shape[0]
      pid = ex['patient_id'].decode() if isinstance(ex['patient_id'], bytes) else ex['patient_id']
      src = ex['source'].decode() if isinstance(ex['source'], bytes) else ex['source']
      assert pid.startswith(f'synthetic-{split}-') and src == 'synthetic_cxr'
      ids.add(pid)
      labels.append(label)
      digests.add(ex['image'].tobytes())
    assert len(ids) == n and len(digests) == n
    assert np.bincount(labels, minlength=4).min() >= n // 4 - 2
    hashes[split] = digests
  assert not hashes['train'] & hashes['validation']

  # Stored examples are exactly the renderer's output.
  source = builder.as_data_source('train')
  ex = source[0]
  index = int((ex['patient_id'].decode() if isinstance(ex['patient_id'], bytes)
               else ex['patient_id']).rsplit('-', 1)[1])
  ref = synthetic.render_example(0, index, 64)
  np.testing.assert_array_equal(ex['image'], ref['image'])
  np.testing.assert_array_equal(ex['lung_mask'], ref['lung_mask'])


_NO_TF_READ = r'''
import json, sys
from tests import notf
notf.install()
import numpy as np
import tensorflow_datasets as tfds
from cxr_jax.data.builders import synthetic_cxr  # noqa: F401
builder = tfds.builder('synthetic_cxr/tiny', data_dir=sys.argv[1])
source = builder.as_data_source('train')
ex = source[7]
print(json.dumps({
    'n': len(source),
    'image': [list(ex['image'].shape), str(ex['image'].dtype)],
    'mask_sum': int(ex['lung_mask'].sum()),
    'label': int(ex['label']),
    'tf_loaded': any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules),
}))
'''


def test_read_without_tensorflow(tiny_dir):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  out = subprocess.run([sys.executable, '-c', _NO_TF_READ, str(tiny_dir)], cwd=REPO_ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['n'] == 256
  assert result['image'] == [[64, 64, 1], 'uint8']
  assert result['mask_sum'] > 0 and 0 <= result['label'] < 4
  assert not result['tf_loaded']
