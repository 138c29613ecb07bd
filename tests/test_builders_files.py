"""The file-based dataset builders, prepared from small fakes of their real on-disk layouts.

Each dataset is written once per module (tests/fake_layouts.py: real folder layout, file names and
formats, small images with a bright rectangle where masks and boxes are), prepared with
`datasets.prepare(..., skip_bad=True)` and read back with `datasets.load_source`. Bad inputs planted
in the fakes must make a build without skip_bad fail naming the file. The Kermany builder is also
run on 16 real JPEGs from a PyPI wheel.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import logging
import pathlib
import re
from typing import Any

from etils import epath
import numpy as np
import pytest

from cxr_jax.data import datasets
from cxr_jax.data.builders import base
from tests import fake_layouts as fake

S = base.DEFAULT_SIZE  # 256


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _captured_warnings():
  """Warnings logged through Python logging (absl's logger propagates to the root logger)."""
  messages: list[str] = []

  class Handler(logging.Handler):

    def emit(self, record):
      messages.append(record.getMessage())

  handler = Handler(level=logging.WARNING)
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    yield messages
  finally:
    root.removeHandler(handler)


@dataclasses.dataclass
class Prepared:
  name: str
  layout: fake.Layout
  builder: Any
  info: Any
  records: dict[str, list[dict[str, Any]]]
  warnings: list[str]

  def label(self, record, feature='label') -> str:
    return self.info.features[feature].int2str(int(record[feature]))

  def by_patient(self) -> dict[str, tuple[str, dict]]:
    out = {}
    for split, records in self.records.items():
      for record in records:
        patient = _text(record['patient_id'])
        assert patient not in out, f'{patient} stored twice'
        out[patient] = (split, record)
    return out


def _prepare(name: str, layout: fake.Layout, data_dir: pathlib.Path,
             skip_bad: bool = True) -> Prepared:
  with _captured_warnings() as warnings:
    builder = datasets.prepare(name, str(data_dir), manual_dir=str(layout.manual_dir),
                               skip_bad=skip_bad)
  records = {}
  info = None
  for split in builder.info.splits:
    source, info = datasets.load_source(name, split, str(data_dir))
    records[split] = [source[i] for i in range(len(source))]
  return Prepared(name, layout, builder, info, records, warnings)


def _band(h: int, w: int) -> tuple[int, int, int, int]:
  """Rows and columns [y0, y1) x [x0, x1) that an h x w image fills in the stored square."""
  scale = S / max(h, w)
  sh, sw = min(S, round(h * scale)), min(S, round(w * scale))
  oy, ox = (S - sh) // 2, (S - sw) // 2
  return oy, oy + sh, ox, ox + sw


def _assert_letterboxed(image: np.ndarray, h: int, w: int) -> None:
  assert image.shape == (S, S, 1) and image.dtype == np.uint8
  y0, y1, x0, x1 = _band(h, w)
  content = np.zeros((S, S), bool)
  content[y0:y1, x0:x1] = True
  assert (image[..., 0][~content] == 0).all(), 'padding must be black'
  band = image[y0:y1, x0:x1, 0] > 0
  # Every row and column of the band has content (the darkest 0.5% of a deep image maps to 0).
  assert band.any(axis=0).all() and band.any(axis=1).all(), 'the image must fill its band'
  assert band.mean() > 0.8


def _stored_rect(rect, h: int, w: int) -> np.ndarray:
  """Boolean [S, S]: a source rectangle (y0, y1, x0, x1) mapped into the stored square."""
  scale = S / max(h, w)
  oy, _, ox, _ = _band(h, w)
  y0, y1, x0, x1 = rect
  out = np.zeros((S, S), bool)
  out[round(y0 * scale) + oy:round(y1 * scale) + oy,
      round(x0 * scale) + ox:round(x1 * scale) + ox] = True
  return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  return float((a & b).sum() / max(1, (a | b).sum()))


def _assert_mask_aligned(image: np.ndarray, mask: np.ndarray, rect=fake.RECT, h=fake.H, w=fake.W):
  assert mask.shape == (S, S, 1) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
  expected = _stored_rect(rect, h, w)
  assert _iou(mask[..., 0] == 1, expected) > 0.9
  assert _iou(image[..., 0] > 130, mask[..., 0] == 1) > 0.9


def _assert_patients_disjoint(prepared: Prepared) -> None:
  owners = collections.defaultdict(set)
  for split, records in prepared.records.items():
    for record in records:
      owners[_text(record['patient_id'])].add(split)
  shared = {p: s for p, s in owners.items() if len(s) > 1}
  assert not shared, shared


def _assert_common(prepared: Prepared) -> None:
  """Split sizes, source, patient-disjointness and skip_bad bookkeeping of a skip_bad build."""
  layout = prepared.layout
  sizes = {split: len(records) for split, records in prepared.records.items()}
  assert sizes == layout.split_sizes()
  for records in prepared.records.values():
    for record in records:
      assert _text(record['source']) == prepared.name
      assert _text(record['patient_id'])
  _assert_patients_disjoint(prepared)
  expected_skipped = {split: len(names) for split, names in layout.bad.items()}
  assert dict(prepared.builder.info.metadata.get('skipped', {})) == expected_skipped
  # The count survives the round trip through dataset_info on disk.
  assert dict(prepared.info.metadata.get('skipped', {})) == expected_skipped
  for name in layout.bad_names:
    assert any('skipping bad input' in m and name in m for m in prepared.warnings), (
        name, prepared.warnings)


def _assert_bad_input_raises(prepared: Prepared, data_dir: pathlib.Path) -> None:
  """Without skip_bad the build stops at a bad file, naming it; so does each bad file alone."""
  layout = prepared.layout
  pattern = '|'.join(re.escape(n) for n in layout.bad_names)
  with pytest.raises(base.BadInputError, match=pattern):
    datasets.prepare(prepared.name, str(data_dir), manual_dir=str(layout.manual_dir))
  items = {item.key: item for items in
           prepared.builder._list_examples(epath.Path(layout.manual_dir)).values()
           for item in items}
  for name in layout.bad_names:
    (item,) = [item for key, item in items.items() if key.endswith(name)]
    with pytest.raises(base.BadInputError, match=re.escape(name)):
      prepared.builder._load_example(item, S)


# ---------------------------------------------------------------------------------------------
# Fixtures: one prepared fake per dataset and module


def _fixture(name, writer):

  @pytest.fixture(scope='module')
  def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp(name)
    layout = writer(root / 'manual')
    return _prepare(name, layout, root / 'tfds')

  return prepared


kermany = _fixture('kermany_pneumonia', fake.write_kermany)
montgomery = _fixture('montgomery', fake.write_montgomery)
shenzhen = _fixture('shenzhen', fake.write_shenzhen)
jsrt = _fixture('jsrt_scr', fake.write_jsrt)
tbx11k = _fixture('tbx11k', fake.write_tbx11k)
mura = _fixture('mura', fake.write_mura)
bone_age = _fixture('rsna_bone_age', fake.write_bone_age)

ALL = ['kermany', 'montgomery', 'shenzhen', 'jsrt', 'tbx11k', 'mura', 'bone_age']
WITH_BAD_INPUT = ['kermany', 'montgomery', 'shenzhen', 'jsrt', 'mura', 'bone_age']


@pytest.mark.parametrize('fixture', ALL)
def test_splits_sources_patients_and_skipped(fixture, request):
  _assert_common(request.getfixturevalue(fixture))


@pytest.mark.parametrize('fixture', WITH_BAD_INPUT)
def test_bad_input_raises_without_skip_bad(fixture, request, tmp_path):
  _assert_bad_input_raises(request.getfixturevalue(fixture), tmp_path / 'tfds')


@pytest.mark.parametrize('fixture', ALL)
def test_info_documents_the_source(fixture, request):
  prepared = request.getfixturevalue(fixture)
  builder = prepared.builder
  assert builder.SOURCE == prepared.name == builder.name
  assert '@' in builder.CITATION and 'title' in builder.CITATION
  assert builder.HOMEPAGE.startswith('https://')
  assert '<manual_dir>' in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert 'Terms' in builder.MANUAL_DOWNLOAD_INSTRUCTIONS or 'Licence' in (
      builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
  features = prepared.info.features
  assert features['image'].shape == (S, S, 1)
  assert {'patient_id', 'source'} <= set(features.keys())


# ---------------------------------------------------------------------------------------------
# kermany_pneumonia


def test_kermany_labels_subtypes_and_test_overlap(kermany):
  stored = kermany.by_patient()
  assert set(stored) == set(kermany.layout.examples)
  for patient, expected in kermany.layout.examples.items():
    split, record = stored[patient]
    assert split == expected['split'], patient
    assert kermany.label(record) == expected['label'], patient
    assert kermany.label(record, 'subtype') == expected['subtype'], patient
    _assert_letterboxed(record['image'], fake.H, fake.W)
  # person1946 is in the official test split: its train image was dropped, and counted.
  assert stored['person1946'][0] == 'test'
  assert dict(kermany.info.metadata['dropped_test_patients']) == {'patients': 1, 'images': 1}
  assert any('also occur in the official test split' in m for m in kermany.warnings)
  assert set(kermany.records) == {'train', 'validation', 'test'}


def test_kermany_accepts_the_chest_xray_folder_itself(kermany):
  root = epath.Path(kermany.layout.manual_dir)
  keys = lambda splits: {s: sorted(i.key for i in items) for s, items in splits.items()}
  assert keys(kermany.builder._list_examples(root / 'chest_xray')) == keys(
      kermany.builder._list_examples(root))


def test_kermany_real_jpegs(tmp_path):
  jpegs = fake.real_pneumonia_jpegs()
  assert len(jpegs) == 16
  where = fake.write_kermany_real(tmp_path / 'manual', jpegs)
  builder = datasets.prepare('kermany_pneumonia', str(tmp_path / 'tfds'),
                             manual_dir=str(tmp_path / 'manual'))
  assert dict(builder.info.metadata['dropped_test_patients']) == {'patients': 1, 'images': 1}
  counts = collections.Counter()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  sizes = {}
  for name, data in jpegs.items():
    with Image.open(io.BytesIO(data)) as im:
      sizes[name] = (im.height, im.width)
  total = 0
  for split in builder.info.splits:
    source, info = datasets.load_source('kermany_pneumonia', split, str(tmp_path / 'tfds'))
    for i in range(len(source)):
      record = source[i]
      label = info.features['label'].int2str(int(record['label']))
      counts[split, label] += 1
      subtype = info.features['subtype'].int2str(int(record['subtype']))
      assert subtype == ('normal' if label == 'normal' else 'bacteria')
      image = record['image'][..., 0]
      assert image.shape == (S, S) and image.dtype == np.uint8
      patient = _text(record['patient_id'])
      (name,) = [n for n in jpegs if n.startswith(patient + '-') or n.startswith(patient + '_')
                 if (split == 'test') == (where[n] == 'test')]
      y0, y1, x0, x1 = _band(*sizes[name])
      content = image[y0:y1, x0:x1].astype(np.float32)
      assert content.std() > 20, (name, content.std())  # a real radiograph, not a constant
      assert np.ptp(content) > 100
      total += 1
  assert total == 15  # 16 - person1946's train image
  assert counts['test', 'normal'] == 3 and counts['test', 'pneumonia'] == 3
  assert counts['train', 'normal'] + counts['validation', 'normal'] == 5
  assert counts['train', 'pneumonia'] + counts['validation', 'pneumonia'] == 4


# ---------------------------------------------------------------------------------------------
# montgomery, shenzhen


@pytest.mark.parametrize('fixture', ['montgomery', 'shenzhen'])
def test_tb_labels_and_lung_masks(fixture, request):
  prepared = request.getfixturevalue(fixture)
  stored = prepared.by_patient()
  assert set(stored) == set(prepared.layout.examples)
  for patient, expected in prepared.layout.examples.items():
    split, record = stored[patient]
    assert split == expected['split']
    assert prepared.label(record) == expected['label'], patient
    assert bool(record['has_mask']) == expected['has_mask']
    _assert_letterboxed(record['image'], fake.H, fake.W)
    if expected['has_mask']:
      _assert_mask_aligned(record['image'], record['lung_mask'])
    else:
      assert not record['lung_mask'].any()
      assert _iou(record['image'][..., 0] > 130, _stored_rect(fake.RECT, fake.H, fake.W)) > 0.9


def test_shenzhen_finds_masks_in_kaggle_nested_folder(shenzhen, tmp_path):
  layout = fake.write_shenzhen(tmp_path / 'manual')
  root = epath.Path(layout.manual_dir)
  masks = lambda: {i.patient_id: i.payload[1] and i.payload[1].name
                   for items in shenzhen.builder._list_examples(root).values() for i in items}
  flat = masks()
  (tmp_path / 'manual' / 'mask').rename(tmp_path / 'inner')
  (tmp_path / 'manual' / 'mask').mkdir()
  (tmp_path / 'inner').rename(tmp_path / 'manual' / 'mask' / 'mask')
  assert masks() == flat
  assert sum(v is not None for v in flat.values()) == sum(
      e['has_mask'] for e in layout.examples.values())
def test_montgomery_and_shenzhen_patients_are_image_numbers(montgomery, shenzhen):
  assert all(re.fullmatch(r'MCUCXR_\d{4}', p) for p in montgomery.by_patient())
  assert all(re.fullmatch(r'CHNCXR_\d{4}', p) for p in shenzhen.by_patient())


# ---------------------------------------------------------------------------------------------
# jsrt_scr


def _jsrt_display(raw: int) -> int:
  return int(np.rint((4095 - min(raw, 4095)) * 255 / 4095))


def _downsampled(rects) -> np.ndarray:
  """Independent area-average of full-resolution rectangles down to S, thresholded at 0.5."""
  full = np.zeros((fake.JSRT_SIDE, fake.JSRT_SIDE), np.float32)
  for y0, y1, x0, x1 in rects:
    full[y0:y1, x0:x1] = 1
  f = fake.JSRT_SIDE // S
  return full.reshape(S, f, S, f).mean(axis=(1, 3)) >= 0.5


def test_jsrt_inverts_12_bit_raw_and_aligns_scr_masks(jsrt):
  stored = jsrt.by_patient()
  assert set(stored) == set(jsrt.layout.examples)
  f = fake.JSRT_SIDE // S  # 8
  for stem, expected in jsrt.layout.examples.items():
    split, record = stored[stem]
    assert split == expected['split'] and jsrt.label(record) == expected['label']
    image = record['image'][..., 0]
    assert image.shape == (S, S) and image.dtype == np.uint8
    # Inversion and the fixed linear 12 -> 8 bit rule, numerically.
    for (y, x), raw in fake.JSRT_BLOCKS.items():
      block = image[y // f:(y + 64) // f, x // f:(x + 64) // f]
      assert (block == _jsrt_display(raw)).all(), (raw, np.unique(block))
    assert _jsrt_display(0) == 255 and _jsrt_display(4095) == 0 and _jsrt_display(2048) == 127
    y0, y1, x0, x1 = (v // f for v in fake.JSRT_SQUARE)
    assert (image[y0:y1, x0:x1] == _jsrt_display(fake.JSRT_SQUARE_RAW)).all()  # bright: 224
    background = _jsrt_display(fake.JSRT_BACKGROUND_RAW + expected['seed'])
    assert image[S - 1, S - 1] == background and background < 80
    # 1024 x 1024 SCR masks, enlarged to 2048 and letterboxed like the image.
    assert bool(record['has_mask'])
    lungs = _downsampled([fake.JSRT_SQUARE, (512, 1024, 1300, 1800)])
    np.testing.assert_array_equal(record['lung_mask'][..., 0], lungs)
    np.testing.assert_array_equal(record['heart_mask'][..., 0], _downsampled([fake.JSRT_HEART]))
    np.testing.assert_array_equal(record['clavicle_mask'][..., 0],
                                  _downsampled(fake.JSRT_CLAVICLES))
    # The left-lung mask covers exactly the bright square of the image.
    left = _downsampled([fake.JSRT_SQUARE])
    assert (image[left] == 224).all() and (image[~left & (image == 224)]).size == 0
    assert np.asarray(record['objects']['bbox']).size == 0 and not record['has_boxes']


def test_jsrt_folds_hash_split_and_no_masks(tmp_path):
  from cxr_jax.data.builders import jsrt_scr  # pylint: disable=g-import-not-at-top
  builder = jsrt_scr.JsrtScr(data_dir=str(tmp_path / 'tfds'))
  # SCR fold layout: fold2 is the test split, fold1 is hashed into train / validation.
  layout = fake.write_jsrt(tmp_path / 'folds', raw_bytes=False)
  splits = builder._list_examples(epath.Path(layout.manual_dir))
  got = {item.patient_id: split for split, items in splits.items() for item in items}
  assert got == {**{s: e['split'] for s, e in layout.examples.items()}, 'JPCNN005': 'test'}
  # The SCR archive's own folder name 'scratch' works in place of 'scr'.
  (tmp_path / 'folds' / 'scr').rename(tmp_path / 'folds' / 'scratch')
  again = builder._list_examples(epath.Path(layout.manual_dir))
  assert {s: [i.key for i in v] for s, v in again.items()} == {
      s: [i.key for i in v] for s, v in splits.items()}
  # Masks without folds: everything hashed 80 / 10 / 10.
  layout = fake.write_jsrt(tmp_path / 'flat', folds=False, raw_bytes=False)
  splits = builder._list_examples(epath.Path(layout.manual_dir))
  for split, items in splits.items():
    for item in items:
      assert split == base.hash_split(item.patient_id, jsrt_scr.HASH_FRACTIONS, salt='jsrt_scr')
      assert item.payload[1] is not None
  # No SCR masks at all: has_mask False, hashed.
  layout = fake.write_jsrt(tmp_path / 'bare', masks=False, raw_bytes=False)
  splits = builder._list_examples(epath.Path(layout.manual_dir))
  assert all(item.payload[1] is None for items in splits.values() for item in items)


def test_jsrt_rejects_mask_of_wrong_size(tmp_path):
  from cxr_jax.data.builders import jsrt_scr  # pylint: disable=g-import-not-at-top
  builder = jsrt_scr.JsrtScr(data_dir=str(tmp_path / 'tfds'))
  layout = fake.write_jsrt(tmp_path / 'manual')
  stem = next(s for s, e in layout.examples.items() if e['split'] == 'train')
  fake._scr_mask(tmp_path / 'manual' / 'scr' / 'fold1' / 'masks' / 'heart' / f'{stem}.gif',
                 (0, 10, 0, 10), side=1000)
  (item,) = [i for i in builder._list_examples(epath.Path(layout.manual_dir))['train']
             if i.patient_id == stem]
  with pytest.raises(base.BadInputError, match=rf'heart/{stem}\.gif: mask is 1000x1000'):
    builder._load_example(item, S)


# ---------------------------------------------------------------------------------------------
# tbx11k


def test_tbx11k_labels_and_boxes(tbx11k):
  stored = tbx11k.by_patient()
  assert set(stored) == set(tbx11k.layout.examples)  # imgs/test is not read
  scale = S / fake.H
  _, _, ox, _ = _band(fake.H, fake.W)
  x, y, w, h = fake.TBX_BOX
  expected_box = np.array([y * scale / S, (x * scale + ox) / S, (y + h) * scale / S,
                           ((x + w) * scale + ox) / S])
  for stem, expected in tbx11k.layout.examples.items():
    split, record = stored[stem]
    assert split == expected['split'] and tbx11k.label(record) == expected['label'], stem
    assert bool(record['has_boxes'])
    _assert_letterboxed(record['image'], fake.H, fake.W)
    labels = [tbx11k.info.features['objects']['label'].int2str(int(v))
              for v in record['objects']['label']]
    assert len(labels) == len(expected['boxes'])
    names = {1: 'active_tb', 2: 'latent_tb', 3: 'uncertain_tb'}
    assert labels == [names[c] for c, _ in expected['boxes']]
  for stem in ('tb0001', 'tb0003'):  # tb0003: its annotation record is at twice the size
    _, record = stored[stem]
    np.testing.assert_allclose(record['objects']['bbox'][0], expected_box, atol=2e-3)
    # The box frames the bright rectangle drawn in the image.
    bright = np.argwhere(record['image'][..., 0] > 130)
    (y0, x0), (y1, x1) = bright.min(0), bright.max(0) + 1
    np.testing.assert_allclose([y0 / S, x0 / S, y1 / S, x1 / S], expected_box, atol=2.5 / S)
  assert np.asarray(stored['h0001'][1]['objects']['bbox']).size == 0


# ---------------------------------------------------------------------------------------------
# mura


def test_mura_labels_body_parts_studies_and_splits(mura):
  from cxr_jax.data.builders import mura as mura_module  # pylint: disable=g-import-not-at-top
  expected_by_study = collections.defaultdict(list)
  for key, ex in mura.layout.examples.items():
    expected_by_study[key.rsplit('/', 1)[0]].append(ex)
  stored_by_study = collections.defaultdict(list)
  for split, records in mura.records.items():
    for record in records:
      stored_by_study[_text(record['study_id'])].append((split, record))
  assert set(stored_by_study) == set(expected_by_study)
  for study, expected in expected_by_study.items():
    stored = stored_by_study[study]
    assert len(stored) == len(expected)
    for (split, record), ex in zip(stored, expected):
      assert split == ex['split'], study
      assert mura.label(record) == ex['label'], study
      assert mura.label(record, 'body_part') == ex['body_part']
      assert _text(record['patient_id']) == ex['patient']
    assert sorted(record['image'].shape for _, record in stored) == [(S, S, 1)] * len(stored)
    sizes = sorted(ex['size'] for ex in expected)
    for (_, record) in stored:  # each stored image matches the band of one of its study's sizes
      assert any(_letterbox_ok(record['image'], h, w) for h, w in sizes), study
  assert mura.info.features['body_part'].names == list(mura_module.BODY_PARTS)
  assert {s for s, _ in stored_by_study['patient11185/humerus/study1']} == {'test'}


def _letterbox_ok(image, h, w) -> bool:
  try:
    _assert_letterboxed(image, h, w)
    return True
  except AssertionError:
    return False


def test_mura_accepts_the_mura_folder_itself(mura):
  root = epath.Path(mura.layout.manual_dir)
  keys = lambda splits: {s: sorted(i.key for i in items) for s, items in splits.items()}
  assert keys(mura.builder._list_examples(root / 'MURA-v1.1')) == keys(
      mura.builder._list_examples(root))


# ---------------------------------------------------------------------------------------------
# rsna_bone_age


def test_bone_age_values_sex_body_part_and_splits(bone_age):
  from cxr_jax.data.builders import mura as mura_module  # pylint: disable=g-import-not-at-top
  stored = bone_age.by_patient()
  assert set(stored) == set(bone_age.layout.examples)
  for image_id, expected in bone_age.layout.examples.items():
    split, record = stored[image_id]
    assert split == expected['split'], image_id
    assert float(record['bone_age_months']) == pytest.approx(expected['bone_age_months'])
    assert bool(record['male']) == expected['male'], image_id
    assert bone_age.label(record, 'body_part') == 'hand'
    _assert_letterboxed(record['image'], *expected['size'])
  assert bone_age.info.features['bone_age_months'].dtype == np.float32
  # One shared body-part vocabulary with MURA.
  assert bone_age.info.features['body_part'].names == list(mura_module.BODY_PARTS)
  assert bone_age.info.metadata['dropped_ids'] == 1  # 8002 is in both CSV files
  assert stored['8002'][0] == 'test'


def test_bone_age_without_validation_set_is_hash_split(tmp_path, bone_age):
  from cxr_jax.data.builders import rsna_bone_age  # pylint: disable=g-import-not-at-top
  layout = fake.write_bone_age(tmp_path / 'manual', validation=False)
  csv_path = tmp_path / 'manual' / 'boneage-training-dataset.csv'
  csv_path.write_text('\ufeff' + csv_path.read_text())  # a byte-order mark (spreadsheet export)
  splits = bone_age.builder._list_examples(epath.Path(layout.manual_dir))
  got = {item.patient_id: split for split, items in splits.items() for item in items}
  assert got == {**{i: e['split'] for i, e in layout.examples.items()},
                 '9999': next(iter(layout.bad))}
  for image_id, split in got.items():
    assert split == base.hash_split(image_id, rsna_bone_age.HASH_FRACTIONS, salt='rsna_bone_age')
