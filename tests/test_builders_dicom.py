"""NIH ChestX-ray14, RSNA Pneumonia, SIIM-ACR Pneumothorax and SIIM-COVID-19 builders.

Each builder is prepared once (module scope, skip_bad=True) from a small fake copy of its real
layout (tests/fake_dicom_layouts.py) that includes bad inputs; the tests then check splits,
labels, boxes and masks in the stored 256 px letterboxed frame (hand-computed), patient-disjoint
splits, the absence of PHI everywhere, and BadInputError naming the file with skip_bad=False.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import re

import numpy as np
import pytest

from cxr_jax.data import datasets
from cxr_jax.data.builders import base
from cxr_jax.data.builders import nih_chestxray14 as nih
from cxr_jax.data.builders import rsna_pneumonia as rsna
from cxr_jax.data.builders import siim_acr_pneumothorax as siim
from cxr_jax.data.builders import siim_covid19 as covid
from tests import fake_dicom_layouts as fake

SPLITS = fake.SPLITS


class _Capture(logging.Handler):

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.messages: list[str] = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@contextlib.contextmanager
def _capture_logs():
  handler = _Capture()
  root, absl_logger = logging.getLogger(), logging.getLogger('absl')
  old_level = absl_logger.level
  absl_logger.setLevel(logging.INFO)
  root.addHandler(handler)
  absl_logger.addHandler(handler)
  try:
    yield handler.messages
  finally:
    root.removeHandler(handler)
    absl_logger.removeHandler(handler)
    absl_logger.setLevel(old_level)


@dataclasses.dataclass
class Prepared:
  name: str
  layout: fake.Layout
  data_dir: pathlib.Path
  builder: object
  examples: dict[str, list[dict]]
  logs: list[str]


@pytest.fixture(scope='module', autouse=True)
def _public_salt():
  """The builders' default (public) pseudonym salt, whatever the environment holds."""
  with pytest.MonkeyPatch.context() as mp:
    mp.delenv(siim.SALT_ENV, raising=False)
    yield


def _prepare(name, writer, tmp_path_factory, **writer_kwargs) -> Prepared:
  root = tmp_path_factory.mktemp(f'{name}_manual') / 'download'
  layout = writer(root, **writer_kwargs)
  data_dir = tmp_path_factory.mktemp(f'{name}_tfds')
  with _capture_logs() as logs:
    builder = datasets.prepare(name, str(data_dir), manual_dir=str(root), skip_bad=True)
  examples = {}
  for split in SPLITS:
    source, _ = datasets.load_source(name, split, str(data_dir))
    examples[split] = [source[i] for i in range(len(source))]
  return Prepared(name, layout, data_dir, builder, examples, logs)


@pytest.fixture(scope='module')
def nih_data(tmp_path_factory):
  return _prepare('nih_chestxray14', fake.write_nih, tmp_path_factory)


@pytest.fixture(scope='module')
def rsna_data(tmp_path_factory):
  return _prepare('rsna_pneumonia', fake.write_rsna, tmp_path_factory)


@pytest.fixture(scope='module')
def siim_data(tmp_path_factory):
  return _prepare('siim_acr_pneumothorax', fake.write_siim, tmp_path_factory)


@pytest.fixture(scope='module')
def covid_data(tmp_path_factory):
  return _prepare('siim_covid19', fake.write_covid, tmp_path_factory)


ALL = ('nih_data', 'rsna_data', 'siim_data', 'covid_data')
DICOM = ('rsna_data', 'siim_data', 'covid_data')


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _one(examples, **where) -> dict:
  """The one example whose features equal `where` (text features compared as str)."""
  value = lambda v: _text(v) if isinstance(v, bytes) else np.asarray(v)
  found = [ex for ex in examples if all(np.array_equal(value(ex[k]), v) for k, v in where.items())]
  assert len(found) == 1, (where, len(found))
  return found[0]


def _boxes(example) -> np.ndarray:
  return np.asarray(example['objects']['bbox']).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# Shared checks


@pytest.mark.parametrize('fixture', ALL)
def test_split_sizes_and_skipped_counts(fixture, request):
  data: Prepared = request.getfixturevalue(fixture)
  sizes = {s: len(data.examples[s]) for s in SPLITS}
  assert sizes == data.layout.sizes
  assert data.builder.info.splits['train'].num_examples == sizes['train']
  skipped = data.builder.info.metadata['skipped']
  assert sum(skipped.values()) == len(data.layout.bad)
  for kind, split in data.layout.bad_split.items():
    assert skipped.get(split, 0) >= 1, kind
  # The counts are stored with the dataset, not only on the builder that prepared it.
  reloaded = datasets.get_builder(data.name, str(data.data_dir))
  assert dict(reloaded.info.metadata['skipped']) == dict(skipped)
  # Each skip is logged, naming the file.
  for kind, file_name in data.layout.bad.items():
    assert any('skipping bad input' in m and file_name in m for m in data.logs), kind


@pytest.mark.parametrize('fixture', ALL)
def test_no_patient_in_two_splits(fixture, request):
  data: Prepared = request.getfixturevalue(fixture)
  patients = {s: {_text(ex['patient_id']) for ex in data.examples[s]} for s in SPLITS}
  assert all(patients[s] for s in SPLITS)
  assert not patients['train'] & patients['validation']
  assert not patients['train'] & patients['test']
  assert not patients['validation'] & patients['test']
  for s in SPLITS:
    assert all(_text(ex['source']) == data.name for ex in data.examples[s])
    assert all(ex['image'].shape == (256, 256, 1) and ex['image'].dtype == np.uint8
               for ex in data.examples[s])


def _strings(value):
  """Every str/bytes inside a decoded example."""
  if isinstance(value, dict):
    for v in value.values():
      yield from _strings(v)
  elif isinstance(value, (bytes, str)):
    yield _text(value)
  elif isinstance(value, np.ndarray) and value.dtype.kind in 'OSU':
    for v in value.ravel():
      yield _text(v)


@pytest.mark.parametrize('fixture', DICOM)
def test_no_phi_anywhere(fixture, request):
  data: Prepared = request.getfixturevalue(fixture)
  phi = fake.phi_strings()
  texts = [t for s in SPLITS for ex in data.examples[s] for t in _strings(ex)]
  assert texts  # patient_id, source, ...
  texts += data.logs
  texts.append(json.dumps(dict(data.builder.info.metadata), default=str))
  for text in texts:
    assert not any(p in text for p in phi), text
  files = [p for p in data.data_dir.rglob('*') if p.is_file()]
  assert any(p.name == 'dataset_info.json' for p in files)
  for path in files:
    raw = path.read_bytes()
    assert not any(p.encode() in raw for p in phi), path


@pytest.mark.parametrize('fixture', ('siim_data', 'covid_data'))
def test_patient_ids_are_pseudonyms(fixture, request):
  data: Prepared = request.getfixturevalue(fixture)
  source = data.name
  for key, e in data.layout.expect.items():
    pseudonym = fake._pseudonym(e['patient'], source)  # pylint: disable=protected-access
    assert re.fullmatch('[0-9a-f]{16}', pseudonym)
    assert any(_text(ex['patient_id']) == pseudonym for ex in data.examples[e['split']]), key
  assert 'public default salt' in data.builder.info.metadata['patient_id']


@pytest.mark.parametrize('module,files', [
    (nih, ('Data_Entry_2017.csv', 'BBox_List_2017.csv', 'train_val_list.txt', 'test_list.txt',
           'images_001/images/00000001_000.png')),
    (rsna, ('stage_2_train_labels.csv', 'stage_2_detailed_class_info.csv',
            'stage_2_train_images/<patientId>.dcm')),
    (siim, ('train-rle.csv', "' EncodedPixels'",
            'dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm')),
    (covid, ('train_image_level.csv', 'train_study_level.csv',
             'train/<StudyInstanceUID>/<SeriesInstanceUID>/<image>.dcm')),
], ids=lambda v: getattr(v, 'SOURCE', ''))
def test_documentation(module, files):
  cls = next(v for v in vars(module).values() if isinstance(v, type)
             and issubclass(v, base.CxrBuilder) and v.__module__ == module.__name__)
  assert cls.SOURCE == module.SOURCE and cls.name == module.SOURCE
  assert cls.DESCRIPTION == module.__doc__
  assert cls.CITATION.startswith('@') and cls.HOMEPAGE.startswith('https://')
  for f in (*files, 'https://', 'Terms'):
    assert f in cls.MANUAL_DOWNLOAD_INSTRUCTIONS, f


def test_pseudonym_salt_from_environment(monkeypatch):
  public = fake._pseudonym('PHI-PID-1', siim.SOURCE)  # pylint: disable=protected-access
  monkeypatch.setenv(siim.SALT_ENV, 'a-private-salt')
  assert siim.pseudonym_salt(siim.SOURCE) == 'a-private-salt'
  assert fake._pseudonym('PHI-PID-1', siim.SOURCE) != public  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------------
# Bad input: BadInputError naming the file (skip_bad=False)

BAD_CASES = [('nih_chestxray14', fake.write_nih, k) for k in ('corrupt', 'missing')] + [
    (name, writer, k)
    for name, writer in (('rsna_pneumonia', fake.write_rsna),
                         ('siim_acr_pneumothorax', fake.write_siim),
                         ('siim_covid19', fake.write_covid))
    for k in fake.BAD_KINDS]


@pytest.mark.parametrize('name,writer,kind', BAD_CASES,
                         ids=[f'{n}-{k}' for n, _, k in BAD_CASES])
def test_bad_input_raises_naming_the_file(name, writer, kind, tmp_path):
  layout = writer(tmp_path / 'download', bad=(kind,))
  file_name = layout.bad[kind]
  with pytest.raises(base.BadInputError, match=re.escape(file_name)):
    datasets.prepare(name, str(tmp_path / 'tfds'), manual_dir=str(layout.root))


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14


def _multi_hot(findings: str) -> np.ndarray:
  v = np.zeros(14, np.uint8)
  for f in findings.split('|'):
    if f != 'No Finding':
      v[nih.FINDINGS.index(f)] = 1
  return v


def test_nih_labels_boxes_and_views(nih_data):
  assert len(nih_data.layout.expect) == 6
  for name, e in nih_data.layout.expect.items():
    ex = _one(nih_data.examples[e['split']], patient_id=e['patient'],
              labels=_multi_hot(e['findings']))
    assert ex['view_position'] == nih.VIEW_POSITIONS.index(e['view']), name
    assert bool(ex['has_boxes']) == bool(e['boxes']), name
    # Boxes are given in the 1024 px released frame; the fake PNGs are 64 or 128 px and
    # square, so the stored (unpadded) relative box is the 1024-frame box / 1024.
    np.testing.assert_allclose(_boxes(ex), np.asarray(e['boxes']).reshape(-1, 4), atol=1e-6)
    assert [nih.BOX_CLASSES[i] for i in ex['objects']['label']] == e['box_labels']


def test_nih_specific_vectors(nih_data):
  train = nih_data.examples['train']
  vectors = {tuple(np.flatnonzero(ex['labels'])) for ex in train}
  assert (1, 2) in vectors          # Cardiomegaly|Effusion
  assert () in vectors              # No Finding
  assert (12, 13) in vectors        # Hernia|Pleural_Thickening
  test = nih_data.examples['test']
  infiltrate = _one(test, labels=_multi_hot('Infiltration|Mass'))
  assert [nih.BOX_CLASSES[i] for i in infiltrate['objects']['label']] == ['Infiltration', 'Mass']
  assert not any(ex['has_boxes'] for s in ('train', 'validation')
                 for ex in nih_data.examples[s])


def test_nih_parse_findings_rejects_unknown():
  np.testing.assert_array_equal(nih.parse_findings('No Finding', 'x'), np.zeros(14))
  with pytest.raises(base.BadInputError, match='row 7'):
    nih.parse_findings('Cardiomegaly|Covid', 'row 7')


# ---------------------------------------------------------------------------------------------
# RSNA Pneumonia


def test_rsna_labels_and_boxes(rsna_data):
  names = rsna_data.builder.info.features['label'].names
  assert names == ['normal', 'no_lung_opacity_not_normal', 'lung_opacity']
  assert list(rsna.CLASSES) == ['Normal', 'No Lung Opacity / Not Normal', 'Lung Opacity']
  for pid, e in rsna_data.layout.expect.items():
    ex = _one(rsna_data.examples[e['split']], patient_id=pid)
    assert names[ex['label']] == e['label'], pid
    assert ex['has_boxes']
    np.testing.assert_allclose(_boxes(ex), np.asarray(e['boxes']).reshape(-1, 4), atol=1e-6)
    assert list(ex['objects']['label']) == [0] * len(e['boxes'])
  # Hand check of one box: (x=8, y=16, w=20, h=40) in a 128x64 image -> scale 2, 64 px pad.
  a = next(p for p, e in rsna_data.layout.expect.items() if len(e['boxes']) == 2)
  ex = _one(rsna_data.examples['train'], patient_id=a)
  np.testing.assert_allclose(_boxes(ex)[0], [0.125, 0.3125, 0.4375, 0.46875], atol=1e-6)
  # The image sits in columns 64..191; the padding is black.
  assert ex['image'][:, :64].max() == 0 and ex['image'][:, 192:].max() == 0
  assert (ex['image'][:, 64:192] > 0).mean() > 0.95


# ---------------------------------------------------------------------------------------------
# SIIM-ACR Pneumothorax: RLE


def test_rle_hand_example():
  # 4 rows x 3 columns, flattened column by column: (1,0),(2,0) -> 1,2; (3,1) -> 7; (0,2) -> 8.
  mask = np.zeros((4, 3), np.uint8)
  mask[1:3, 0] = 1
  mask[3, 1] = 1
  mask[0, 2] = 1
  # Runs [1, 3) and [7, 9): offsets 1, then 7 - 3 = 4.
  assert siim.rle_encode(mask) == '1 2 4 2'
  np.testing.assert_array_equal(siim.rle_decode('1 2 4 2', 4, 3), mask)
  np.testing.assert_array_equal(fake.hand_mask(), np.maximum(
      siim.rle_decode(fake.HAND_RLES[0], 128, 64), siim.rle_decode(fake.HAND_RLES[1], 128, 64)))


def test_rle_competition_sample():
  # The sample row of the competition data page (1024 x 1024): the first run starts at pixel
  # 387620 = 378 * 1024 + 548 (column 378, row 548) and is 23 long; the next starts 996 after it.
  rle = '387620 23 996 33 986 43 977 51 968 58 962 65 956 70 952 74 949 76 946 79'
  mask = siim.rle_decode(rle, 1024, 1024)
  lengths = [int(v) for v in rle.split()[1::2]]
  assert mask.sum() == sum(lengths)
  assert mask[548:571, 378].all() and not mask[547, 378] and not mask[571, 378]
  assert mask[543:576, 379].all()   # 387620 + 23 + 996 = 388639 = 379 * 1024 + 543
  assert siim.rle_encode(mask) == rle


def test_rle_round_trips_and_edges():
  rng = np.random.default_rng(0)
  for shape in ((1, 1), (5, 7), (32, 16), (64, 64)):
    for p in (0.0, 0.1, 0.5, 1.0):
      mask = (rng.random(shape) < p).astype(np.uint8)
      rle = siim.rle_encode(mask)
      np.testing.assert_array_equal(siim.rle_decode(rle, *shape), mask)
  assert siim.rle_encode(np.zeros((4, 4))) == '-1'
  assert siim.rle_encode(np.ones((2, 2))) == '0 4'
  np.testing.assert_array_equal(siim.rle_decode('-1', 3, 2), np.zeros((3, 2)))
  np.testing.assert_array_equal(siim.rle_decode(' -1', 3, 2), np.zeros((3, 2)))
  last = np.zeros((3, 2), np.uint8)
  last[2, 1] = 1
  assert siim.rle_encode(last) == '5 1'
  for bad in ('1 2 3', '0 7', 'a 1', '-2 1'):
    with pytest.raises(ValueError):
      siim.rle_decode(bad, 3, 2)


# ---------------------------------------------------------------------------------------------
# SIIM-ACR Pneumothorax: builder


def _stored_mask_128x64(mask: np.ndarray) -> np.ndarray:
  """A 128x64 source mask in the stored 256 frame: scale 2, columns 64..191."""
  out = np.zeros((256, 256), np.uint8)
  out[:, 64:192] = np.kron(mask, np.ones((2, 2), np.uint8))
  return out


def test_siim_masks_labels_and_alignment(siim_data):
  names = siim_data.builder.info.features['label'].names
  assert names == ['no_pneumothorax', 'pneumothorax']
  for key, e in siim_data.layout.expect.items():
    pseudonym = fake._pseudonym(e['patient'], siim.SOURCE)  # pylint: disable=protected-access
    ex = _one(siim_data.examples[e['split']], patient_id=pseudonym, label=e['label'])
    assert ex['has_mask'], key
    stored = ex['pneumothorax_mask'][..., 0]
    assert set(np.unique(stored)) <= {0, 1}
    np.testing.assert_array_equal(stored, _stored_mask_128x64(e['mask']), err_msg=key)
    if e['label']:
      # The region is also drawn (white) on a dim image: the mask covers exactly the bright
      # pixels. Bilinear 2x enlarging weighs an edge pixel >= 3/4 * 3/4 from inside the region
      # (>= 143 of 255) and a neighbour outside it <= 1/4 (<= 64 + 3/4 of the dim background).
      image = ex['image'][..., 0].astype(int)
      inside, outside = stored == 1, (stored == 0)
      outside[:, :64] = outside[:, 192:] = False
      assert image[inside].min() > 115 and image[outside].max() < 115, key
  # The two-region image: union of both rows of train-rle.csv.
  p1 = fake._pseudonym(siim_data.layout.expect[fake.siim_uids(1)['SOPInstanceUID']]['patient'],
                       siim.SOURCE)  # pylint: disable=protected-access
  union = _one(siim_data.examples['train'], patient_id=p1, label=1)
  assert union['pneumothorax_mask'].sum() == fake.hand_mask().sum() * 4


def test_siim_same_patient_same_split(siim_data):
  p1_images = [e for e in siim_data.layout.expect.values()
               if e['patient'] == siim_data.layout.expect[
                   fake.siim_uids(1)['SOPInstanceUID']]['patient']]
  assert len(p1_images) == 2 and {e['split'] for e in p1_images} == {'train'}


# ---------------------------------------------------------------------------------------------
# SIIM-FISABIO-RSNA COVID-19


def test_covid_labels_boxes_and_studies(covid_data):
  names = covid_data.builder.info.features['label'].names
  assert names == ['negative', 'typical', 'indeterminate', 'atypical']
  for key, e in covid_data.layout.expect.items():
    candidates = [x for x in covid_data.examples[e['split']]
                  if _text(x['study_id']) == e['study'] and len(_boxes(x)) == len(e['boxes'])]
    assert len(candidates) == 1, key
    ex = candidates[0]
    assert names[ex['label']] == e['label'], key
    assert ex['has_boxes']
    np.testing.assert_allclose(_boxes(ex), np.asarray(e['boxes']).reshape(-1, 4), atol=1e-6)
  # Hand check: 'opacity 1 10 8 50 30' in a 64x128 image -> scale 2, 64 px padding on top;
  # 'opacity 0.9 60.5 2 140 70' runs past the right (x = 128) and bottom (y = 64) edges and is
  # clipped to the image there (not to the padded square).
  first = next(e for e in covid_data.layout.expect.values() if len(e['boxes']) == 2)
  ex = next(x for x in covid_data.examples[first['split']]
            if _text(x['study_id']) == first['study'])
  np.testing.assert_allclose(_boxes(ex), [[0.3125, 0.078125, 0.484375, 0.390625],
                                          [0.265625, 0.47265625, 0.75, 1.0]], atol=1e-6)
  assert ex['image'][:64].max() == 0 and ex['image'][192:].max() == 0


def test_covid_studies_of_one_patient_stay_together(covid_data):
  by_patient = {}
  for e in covid_data.layout.expect.values():
    by_patient.setdefault(e['patient'], set()).add(e['split'])
  assert all(len(s) == 1 for s in by_patient.values())
  studies_per_patient = {}
  for e in covid_data.layout.expect.values():
    studies_per_patient.setdefault(e['patient'], set()).add(e['study'])
  assert max(len(s) for s in studies_per_patient.values()) >= 2


def test_covid_label_parsing():
  boxes = covid.parse_label_boxes('opacity 1 1 2 3 4 opacity 0.5 5 6 7 8', 'x')
  np.testing.assert_array_equal(boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])
  assert covid.parse_label_boxes('none 1 0 0 1 1', 'x').shape == (0, 4)
  with pytest.raises(base.BadInputError, match='img7'):
    covid.parse_label_boxes('opacity 1 1 2 3', 'img7')
