"""Mixtures: one example structure across sources, has_* flags, weights, balancing, resume."""

import numpy as np
import pytest

from cxr_jax.data import mixture
from tests import util


def _config(data_dir, sources=(), **data):
  config = util.load_config('configs/moco.py', 'cpu')
  config.data.data_dir = data_dir
  config.data.name = 'synthetic_cxr/tiny'
  config.data.sources = tuple(sources)
  for key, value in data.items():
    config.data[key] = value
  return config


def test_single_source_is_standardised_with_every_target(tiny_data_dir):
  mix = mixture.Mixture(_config(tiny_data_dir))
  ex = mix.split_dataset(0, 'validation')[3]
  assert mix.targets.class_names == ('normal', 'bilateral_peripheral', 'focal_lobar', 'diffuse')
  assert mix.targets.box_class_names == ('opacity',)
  assert ex['image'].shape == ex['mask'].shape == (64, 64, 1)
  assert ex['boxes'].shape == (16, 4) and ex['box_labels'].shape == (16,)
  assert ex['has_label'] and ex['has_mask'] and ex['has_boxes']
  assert ex['labels'].sum() == 1 and ex['labels'][ex['label']] == 1
  # Same values as the stored example.
  raw = mix._load(0, 'validation')[0][3]
  np.testing.assert_array_equal(ex['mask'], raw['lung_mask'])
  n = len(raw['objects']['bbox'])
  assert ex['num_boxes'] == n
  np.testing.assert_allclose(ex['boxes'][:n], raw['objects']['bbox'])
  assert not ex['boxes'][n:].any()


def test_disjoint_sources_interleave_by_weight_with_flags(tiny_data_dir):
  sources = (dict(name='synthetic_cxr/tiny', provides=('label',), weight=2.0),
             dict(name='synthetic_cxr/tiny', provides=('mask',), weight=1.0),
             dict(name='synthetic_cxr/tiny', provides=('boxes',), weight=1.0,
                  preprocess=('equalize',)))
  mix = mixture.Mixture(_config(tiny_data_dir, sources))
  ds = mix.train_dataset(seed=0)
  draws = [ds[i] for i in range(400)]
  ids = np.array([d['source_id'] for d in draws])
  np.testing.assert_allclose(np.bincount(ids, minlength=3) / 400, [0.5, 0.25, 0.25], atol=0.01)
  for d in draws:
    sid = d['source_id']
    assert d['has_label'] == (sid == 0) and d['has_mask'] == (sid == 1)
    assert d['has_boxes'] == (sid == 2)
    if sid != 1:
      assert not d['mask'].any()         # absent targets are zeros
    if sid != 2:
      assert d['num_boxes'] == 0
  # The equalize hook ran on source 2 only: its images span the whole range.
  spans = [int(d['image'].max()) - int(d['image'].min()) for d in draws if d['source_id'] == 2]
  assert min(spans) >= 250


def test_balance_positive_draws_the_configured_fraction(tiny_data_dir):
  sources = (dict(name='synthetic_cxr/tiny', provides=('boxes',), balance='positive',
                  positive_fraction=0.4),)
  mix = mixture.Mixture(_config(tiny_data_dir, sources))
  stored = [mix.split_dataset(0)[i] for i in range(len(mix.split_dataset(0)))]
  base_rate = np.mean([mixture.is_positive(e) for e in stored])
  ds = mix.train_dataset(seed=1)
  rate = np.mean([mixture.is_positive(ds[i]) for i in range(500)])
  assert abs(base_rate - 0.4) > 0.2     # the data alone would not give 0.4
  assert rate == pytest.approx(0.4, abs=0.01)


def test_balance_label_draws_classes_equally(tiny_data_dir):
  sources = (dict(name='synthetic_cxr/tiny', balance='label'),)
  mix = mixture.Mixture(_config(tiny_data_dir, sources))
  ds = mix.train_dataset(seed=2)
  counts = np.bincount([int(ds[i]['label']) for i in range(400)], minlength=4)
  np.testing.assert_array_equal(counts, [100, 100, 100, 100])


def test_label_map_renames_and_unknown_class_is_an_error(tiny_data_dir):
  sources = (dict(name='synthetic_cxr/tiny', provides=('label',),
                  label_map={'bilateral_peripheral': 'pneumonia', 'diffuse': 'pneumonia',
                             'focal_lobar': ''}),)
  config = _config(tiny_data_dir, sources, class_names=('normal', 'pneumonia'))
  mix = mixture.Mixture(config)
  examples = [mix.split_dataset(0, 'validation')[i] for i in range(64)]
  raw = [mix._load(0, 'validation')[0][i]['label'] for i in range(64)]
  for ex, label in zip(examples, raw):
    if label == 2:                        # focal_lobar -> '' : label absent
      assert not ex['has_label']
    else:
      assert ex['has_label'] and ex['label'] == (0 if label == 0 else 1)
  bad = _config(tiny_data_dir, (dict(name='synthetic_cxr/tiny'),), class_names=('normal',))
  with pytest.raises(ValueError, match="synthetic_cxr/tiny.*'bilateral_peripheral'"):
    mixture.Mixture(bad)


@pytest.mark.parametrize('entry, message', [
    (dict(name='synthetic_cxr/tiny', provides=('masks',)), 'provides'),
    (dict(name='synthetic_cxr/tiny', preprocess=('sharpen',)), 'preprocess'),
    (dict(name='synthetic_cxr/tiny', wieght=2.0), 'unknown keys'),
    (dict(name='synthetic_cxr/tiny', balance='classes'), 'balance'),
])
def test_bad_source_entries_name_the_problem(entry, message):
  config = _config('', (entry,))
  with pytest.raises(ValueError, match=message):
    mixture.source_specs(config)


def test_mixed_iterator_resumes_exactly(tiny_data_dir):
  from cxr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  sources = (dict(name='synthetic_cxr/tiny', provides=('label',)),
             dict(name='synthetic_cxr/tiny', provides=('mask',), balance='label'))
  config = _config(tiny_data_dir, sources)
  config.global_batch_size = 8
  mix = mixture.Mixture(config)

  def transform(example, rng):
    return {'image': example['image'], 'source_id': example['source_id'],
            'noise': rng.integers(0, 1 << 30)}

  it = pipeline.make_train_iterator(config, mix, transform)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = pipeline.make_train_iterator(config, mixture.Mixture(config), transform)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_fraction_trains_on_a_fixed_subset(tiny_data_dir):
  sources = (dict(name='synthetic_cxr/tiny', fraction=0.1),)
  mix = mixture.Mixture(_config(tiny_data_dir, sources))
  subset = mix.train_indices(0)
  assert len(subset) == round(0.1 * 256) == mix.num_train_examples()
  np.testing.assert_array_equal(subset, mixture.Mixture(_config(tiny_data_dir, sources))
                                .train_indices(0))
  stored = mix._load(0, 'train')[0]
  allowed = {stored[int(i)]['image'].tobytes() for i in subset}
  ds = mix.train_dataset(seed=5)
  assert all(ds[i]['image'].tobytes() in allowed for i in range(60))
