"""Every config file loads (paper scale and :cpu), names known datasets, and builds its model."""

import glob
import os

import jax
import pytest

from cxr_jax import main
from cxr_jax import methods
from cxr_jax.data import mixture
from tests import util

CONFIGS = sorted(os.path.relpath(p, util.REPO)
                 for p in glob.glob(os.path.join(util.REPO, 'configs', '*.py')))


@pytest.mark.parametrize('path', CONFIGS)
@pytest.mark.parametrize('variant', [None, 'cpu'])
def test_config_loads_and_validates(path, variant):
  config = util.load_config(path, variant)
  main.validate(config)                      # method and every source's dataset are known
  if variant == 'cpu':
    assert config.model.width <= 16 and config.aug.image_size_px <= 64


def test_multichexnet_wires_disjoint_sources_to_a_densenet():
  config = util.load_config('configs/multichexnet.py')
  specs = mixture.source_specs(config)
  assert [s.provides for s in specs] == [('label', 'boxes'), ('mask',)]
  assert config.loss.positive_only and config.model.name == 'densenet'
  targets = mixture.Targets(class_names=tuple(config.data.class_names), multi_label=False,
                            box_class_names=('opacity',), max_boxes=16)
  method = methods.get('multitask')(config, 100, targets)
  abstract = jax.eval_shape(method.init, jax.random.PRNGKey(0))
  params = abstract.params
  assert set(params) >= {'encoder', 'classifier', 'segmenter', 'detector'}
  # DenseNet-121 trunk at full width: the 6.95 M parameters of the paper model.
  count = sum(x.size for x in jax.tree_util.tree_leaves(params['encoder']))
  assert 6.9e6 < count < 7.0e6


def test_covid_finegrained_cpu_trains_with_balanced_classes(tiny_data_dir, tmp_path):
  workdir = tmp_path / 'covid'
  sources = ("({'name': 'synthetic_cxr/tiny', 'provides': ('label', 'boxes'), 'weight': 3.0, "
             "'balance': 'label'}, {'name': 'synthetic_cxr/tiny', 'provides': ('mask',)})")
  util.run_main('--config=configs/covid_finegrained.py:cpu', f'--workdir={workdir}',
                f'--config.data.data_dir={tiny_data_dir}', f'--config.data.sources={sources}',
                '--config.num_train_steps=3', '--config.global_batch_size=16',
                '--config.model.width=8', '--config.model.bn_group_size=8',
                '--config.aug.image_size_px=32', '--config.eval_every_steps=3',
                '--config.eval.global_batch_size=64', '--config.eval.bootstrap_samples=10',
                '--config.heads.segmentation.widths=(16, 8, 8, 8)',
                '--config.heads.detection.width=16', '--config.log_every_steps=1')
  rows = util.read_metrics(str(workdir))
  train = [r for r in rows if 'train/loss' in r]
  assert len(train) == 3
  # 3 of 4 draws come from the labelled source (grain rounds proportions to integers, so
  # about 36 of the 48 examples); every example carries either a label or a mask.
  labelled = sum(r['train/examples/classification'] for r in train)
  masked = sum(r['train/examples/segmentation'] for r in train)
  assert 34 <= labelled <= 38 and labelled + masked == 48
  final = [r for r in rows if 'eval/macro_f1' in r][-1]
  assert {'eval/dice', 'eval/map50', 'eval/macro_auroc'} <= set(final)
