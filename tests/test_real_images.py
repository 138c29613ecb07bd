"""Real radiographs end to end: 16 pediatric CXR JPEGs (Kermany et al.) from a PyPI wheel are
prepared with `image_folder` and trained on for a few steps (MoCo and multi-task)."""

import json
import os

import cv2
import numpy as np
import pytest

from cxr_jax.data import datasets
from cxr_jax.data.builders import base
from tests import fake_layouts
from tests import util


@pytest.fixture(scope='module')
def real_folder(tmp_path_factory):
  """ROOT/{train,val}/{NORMAL,PNEUMONIA}/*.jpeg (6 + 2 per class) and lung-ish masks for two."""
  jpegs = fake_layouts.real_pneumonia_jpegs()
  root = tmp_path_factory.mktemp('real_folder')
  for cls, prefix in (('NORMAL', 'NORMAL'), ('PNEUMONIA', 'person')):
    names = sorted(n for n in jpegs if n.startswith(prefix))
    for i, name in enumerate(names):
      split = 'train' if i < 6 else 'val'
      path = root / split / cls / name
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(jpegs[name])
      if i < 2 and cls == 'NORMAL':
        image = cv2.imdecode(np.frombuffer(jpegs[name], np.uint8), cv2.IMREAD_GRAYSCALE)
        mask = np.zeros_like(image)
        h, w = image.shape
        mask[h // 4:3 * h // 4, w // 8:w // 2] = 255
        (root / 'masks' / split / cls).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / 'masks' / split / cls / (path.stem + '.png')), mask)
  return root


def test_image_folder_stores_real_images_letterboxed_with_masks(real_folder, tmp_path):
  builder = datasets.prepare('image_folder/real', str(tmp_path), manual_dir=str(real_folder))
  assert builder.info.features['label'].names == ['NORMAL', 'PNEUMONIA']
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 12, 'validation': 4}
  train = builder.as_data_source('train')
  examples = [train[i] for i in range(len(train))]
  assert sum(bool(e['has_mask']) for e in examples) == 2
  for e in examples:
    image = e['image'][..., 0]
    assert image.shape == (256, 256) and image.std() > 20      # real content, not a constant
    # Kermany images are wider than tall: rows above and below the letterbox are black.
    assert image[0].max() == 0 or image[:, 0].max() == 0
    if e['has_mask']:
      inside = e['lung_mask'][..., 0] > 0
      assert 0.1 < inside.mean() < 0.4
  # Read back without the folder (class names come from the prepared copy).
  again = datasets.get_builder('image_folder/real', str(tmp_path))
  assert again.info.features['label'].names == ['NORMAL', 'PNEUMONIA']


def test_image_folder_bad_inputs_stop_or_are_counted(real_folder, tmp_path, caplog):
  import shutil  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'root'
  shutil.copytree(real_folder, root)
  victim = sorted((root / 'train' / 'PNEUMONIA').iterdir())[0]
  victim.write_bytes(victim.read_bytes()[:4000])                       # truncated JPEG
  mask = sorted((root / 'masks' / 'train' / 'NORMAL').iterdir())[0]
  cv2.imwrite(str(mask), np.zeros((40, 50), np.uint8))                 # wrong mask size
  # Preparation stops at the first bad file it meets, naming it.
  with pytest.raises(base.BadInputError, match=f'{victim.name}|{mask.name}: mask is 40x50'):
    datasets.prepare('image_folder/bad', str(tmp_path / 'tfds'), manual_dir=str(root))
  builder = datasets.prepare('image_folder/bad', str(tmp_path / 'tfds2'), manual_dir=str(root),
                             skip_bad=True)
  assert builder.info.metadata['skipped'] == {'train': 2}
  assert builder.info.splits['train'].num_examples == 10
  assert victim.name in caplog.text and mask.name in caplog.text
  # The count survives on disk.
  with open(os.path.join(builder.data_dir, 'metadata.json')) as f:
    assert json.load(f)['skipped'] == {'train': 2}


@pytest.mark.parametrize('config, extra', [
    ('configs/moco.py:cpu', ['--config.moco.queue_size=16', '--config.moco.hidden_dim=32']),
    ('configs/multitask.py:cpu', ['--config.heads.detection.enabled=False',
                                  '--config.heads.segmentation.widths=(16, 8, 8, 8)',
                                  '--config.eval.bootstrap_samples=10']),
])
def test_training_steps_on_real_images(real_folder, tmp_path, config, extra):
  data_dir = tmp_path / 'tfds'
  workdir = tmp_path / 'run'
  util.run_main(f'--config={config}', f'--workdir={workdir}',
                '--config.data.name=image_folder/real', f'--config.data.data_dir={data_dir}',
                f'--config.data.manual_dir={real_folder}', '--config.num_train_steps=4',
                '--config.global_batch_size=8', '--config.model.width=8',
                '--config.model.bn_group_size=8', '--config.aug.image_size_px=32',
                '--config.log_every_steps=1', '--config.eval_every_steps=4',
                '--config.eval.global_batch_size=8', '--config.optim.warmup_steps=1', *extra)
  losses = util.train_losses(str(workdir))
  assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))
  with open(workdir / 'final_metrics.json') as f:
    final = json.load(f)
  if 'multitask' in config:
    assert 0 <= final['eval']['accuracy'] <= 1 and 'macro_f1' in final['eval']
  else:
    assert 0 <= final['eval']['knn_accuracy'] <= 1
