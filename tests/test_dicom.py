"""Tests for cxr_jax.data.dicom (DICOM reading for dataset preparation)."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import JPEGLosslessSV1, MPEG2MPML

from cxr_jax.data import dicom

PHI = dict(dicom.SAMPLE_PHI)
PHI_STRINGS = sorted(set(PHI.values()) | {'Doe', 'Jane', '12345', 'Hospital'})
UIDS = {
  'StudyInstanceUID': '1.2.826.0.1.3680043.8.498.1',
  'SeriesInstanceUID': '1.2.826.0.1.3680043.8.498.1.2',
  'SOPInstanceUID': '1.2.826.0.1.3680043.8.498.1.2.3',
}


def _pixels(shape=(40, 32), bits=12, seed=0):
  """Stored values covering the whole 0 .. 2**bits - 1 range."""
  rng = np.random.default_rng(seed)
  px = rng.integers(0, 2**bits, shape, dtype=np.int64)
  px.flat[0], px.flat[1] = 0, 2**bits - 1
  return px.astype(np.uint16)


def _write(tmp_path, pixels=None, name='image.dcm', **kwargs):
  """A DICOM file with the sample PHI (unless overridden) and fixed UIDs."""
  kwargs.setdefault('phi', PHI)
  kwargs.setdefault('uids', UIDS)
  path = tmp_path / name
  dicom.write_dicom(path, _pixels() if pixels is None else pixels, **kwargs)
  return path


def _linear_window(x, center, width):
  """DICOM PS3.3 C.11.2.1.2.1 LINEAR window to [0, 1], written independently."""
  x = np.asarray(x, np.float64)
  c, w = center - 0.5, width - 1.0
  out = (x - c) / w + 0.5
  out = np.where(x <= c - w / 2, 0.0, out)
  out = np.where(x > c + w / 2, 1.0, out)
  return out


def _to_uint8(unit):
  return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def _assert_close_uint8(actual, expected):
  assert actual.dtype == np.uint8 and actual.shape == expected.shape
  diff = np.abs(actual.astype(int) - expected.astype(int))
  assert diff.max() <= 1  # float rounding at exact .5 ties only
  assert (diff == 0).mean() > 0.99


# ---------------------------------------------------------------- pixels


def test_window_matches_dicom_linear_formula(tmp_path):
  px = _pixels()
  image = dicom.read_dicom(_write(tmp_path, px, window=(1800, 1200)))
  expected = _to_uint8(_linear_window(px, 1800, 1200))
  _assert_close_uint8(image.pixels, expected)
  assert (image.pixels[px <= 1000] == 0).all() and (image.pixels[px >= 2500] == 255).all()
  assert 0 < image.pixels[(px > 1300) & (px < 2300)].min()


def test_rescale_applied_before_window(tmp_path):
  px = _pixels()
  slope, intercept = 2.0, -1000.0
  image = dicom.read_dicom(_write(tmp_path, px, window=(2500, 3000), rescale=(slope, intercept)))
  expected = _to_uint8(_linear_window(px * slope + intercept, 2500, 3000))
  _assert_close_uint8(image.pixels, expected)
  # Without the rescale the same window would give a different image.
  assert not np.array_equal(image.pixels, _to_uint8(_linear_window(px, 2500, 3000)))


def test_rescale_applied_before_minmax(tmp_path):
  px = _pixels()
  # A negative slope reverses the stored values: bright must follow the
  # rescaled values, not the stored ones.
  image = dicom.read_dicom(_write(tmp_path, px, rescale=(-1.0, 4095.0)))
  plain = dicom.read_dicom(_write(tmp_path, px, name='plain.dcm'))
  _assert_close_uint8(image.pixels, 255 - plain.pixels)


def test_first_of_several_windows_is_used(tmp_path):
  px = _pixels()
  image = dicom.read_dicom(_write(tmp_path, px, window=[(1000, 800), (3000, 400)]))
  _assert_close_uint8(image.pixels, _to_uint8(_linear_window(px, 1000, 800)))


def test_window_argument_overrides_file(tmp_path):
  px = _pixels()
  path = _write(tmp_path, px, window=(1000, 800))
  image = dicom.read_dicom(path, window=(3000, 2000))
  _assert_close_uint8(image.pixels, _to_uint8(_linear_window(px, 3000, 2000)))
  minmax = dicom.read_dicom(path, window='minmax')
  no_window = dicom.read_dicom(_write(tmp_path, px, name='nowin.dcm'))
  np.testing.assert_array_equal(minmax.pixels, no_window.pixels)
  with pytest.raises(ValueError):
    dicom.read_dicom(path, window=(1000, 0.5))
  with pytest.raises(ValueError):
    dicom.read_dicom(path, window='linear')


def test_minmax_rule_on_16bit_without_window(tmp_path):
  rng = np.random.default_rng(1)
  px = rng.normal(30000, 5000, (64, 64)).clip(0, 65535)
  px[:2, :] = 0  # outliers (~3% of pixels each side) are clipped, not stretched
  px[-2:, :] = 65535
  px = px.astype(np.uint16)
  image = dicom.read_dicom(_write(tmp_path, px, bits_stored=16))
  lo, hi = np.percentile(px.astype(np.float64), [0.5, 99.5])
  expected = _to_uint8(np.clip((px - lo) / (hi - lo), 0, 1))
  np.testing.assert_array_equal(image.pixels, expected)
  assert image.bits_stored == 16
  assert image.pixels.min() == 0 and image.pixels.max() == 255
  body = image.pixels[2:-2]
  assert 0.4 < body.mean() / 255 < 0.6  # not squashed by the outliers


def test_constant_image_is_black(tmp_path):
  image = dicom.read_dicom(_write(tmp_path, np.full((8, 8), 700, np.uint16)))
  assert (image.pixels == 0).all()


def test_monochrome1_is_inverted_after_windowing(tmp_path):
  px = _pixels()
  mono2 = dicom.read_dicom(_write(tmp_path, px, window=(1800, 1200), name='m2.dcm'))
  mono1 = dicom.read_dicom(
    _write(tmp_path, px, window=(1800, 1200), photometric='MONOCHROME1', name='m1.dcm')
  )
  assert mono1.photometric_interpretation == 'MONOCHROME1'
  _assert_close_uint8(mono1.pixels, _to_uint8(1.0 - _linear_window(px, 1800, 1200)))
  assert np.abs(mono1.pixels.astype(int) + mono2.pixels.astype(int) - 255).max() <= 1
  # The highest stored value (least attenuation in MONOCHROME1) is black.
  assert mono1.pixels.flat[1] == 0 and mono2.pixels.flat[1] == 255
  auto1 = dicom.read_dicom(_write(tmp_path, px, photometric='MONOCHROME1', name='a1.dcm'))
  auto2 = dicom.read_dicom(_write(tmp_path, px, name='a2.dcm'))
  assert np.abs(auto1.pixels.astype(int) + auto2.pixels.astype(int) - 255).max() <= 1


def test_voi_lut_sequence_is_preferred_and_normalised_by_its_range(tmp_path):
  px = _pixels()
  # 16-bit descriptor holding 12-bit data (a common vendor quirk).
  lut = np.sqrt(np.arange(4096) / 4095.0) * 4095.0
  item = Dataset()
  item.add_new('LUTDescriptor', 'US', [4096, 0, 16])
  item.add_new('LUTData', 'OW', np.rint(lut).astype('<u2').tobytes())
  path = _write(tmp_path, px, window=(100, 10), tags={'VOILUTSequence': Sequence([item])})
  image = dicom.read_dicom(path)
  _assert_close_uint8(image.pixels, _to_uint8(np.rint(lut)[px] / 4095.0))


def test_unusable_file_window_falls_back_to_minmax(tmp_path):
  px = _pixels()
  bad = dicom.read_dicom(_write(tmp_path, px, window=(1000, 0), name='bad.dcm'))
  minmax = dicom.read_dicom(_write(tmp_path, px, name='plain.dcm'))
  np.testing.assert_array_equal(bad.pixels, minmax.pixels)


def test_uint8_range_shape_and_immutability(tmp_path):
  configs = [
    {},
    {'window': (2048, 4096)},
    {'window': (0, 1)},
    {'rescale': (0.5, -20.0), 'window': (900, 700)},
    {'photometric': 'MONOCHROME1'},
    {'bits_stored': 16, 'pixels': _pixels(bits=16)},
  ]
  for i, cfg in enumerate(configs):
    cfg = dict(cfg)
    image = dicom.read_dicom(_write(tmp_path, cfg.pop('pixels', None), name=f'{i}.dcm', **cfg))
    assert image.pixels.dtype == np.uint8
    assert image.pixels.shape == (image.rows, image.columns) == (40, 32)
    assert 0 <= image.pixels.min() <= image.pixels.max() <= 255
    assert not image.pixels.flags.writeable
  with pytest.raises(Exception):
    image.rows = 3  # frozen


def test_multiframe_returns_first_frame(tmp_path):
  frames = np.stack([_pixels(seed=s) for s in range(3)])
  multi = dicom.read_dicom(_write(tmp_path, frames, window=(2000, 1500), name='multi.dcm'))
  single = dicom.read_dicom(_write(tmp_path, frames[0], window=(2000, 1500), name='one.dcm'))
  np.testing.assert_array_equal(multi.pixels, single.pixels)


def test_metadata_fields(tmp_path):
  image = dicom.read_dicom(
    _write(
      tmp_path, tags={'ImagerPixelSpacing': [0.15, 0.16], 'ViewPosition': 'AP', 'Modality': 'CR'}
    )
  )
  assert image.pixel_spacing_mm == (0.15, 0.16)
  assert (image.view_position, image.modality, image.bits_stored) == ('AP', 'CR', 12)
  both = dicom.read_dicom(
    _write(
      tmp_path, name='b.dcm', tags={'PixelSpacing': [0.1, 0.2], 'ImagerPixelSpacing': [0.3, 0.3]}
    )
  )
  assert both.pixel_spacing_mm == (0.1, 0.2)  # PixelSpacing wins
  bare = dicom.read_dicom(
    _write(tmp_path, name='c.dcm', tags={'ViewPosition': None, 'Modality': None})
  )
  assert (bare.pixel_spacing_mm, bare.view_position, bare.modality) == (None, '', '')


# ---------------------------------------------------------------- privacy


def test_returned_object_holds_no_phi(tmp_path):
  image = dicom.read_dicom(_write(tmp_path, window=(1800, 1200)))
  texts = [repr(image), str(image)]
  for field in image.__dataclass_fields__:
    value = getattr(image, field)
    texts += [repr(value), str(value)]
  blob = '\n'.join(texts)
  for phi in PHI_STRINGS:
    assert phi not in blob
    assert phi.encode() not in image.pixels.tobytes()
  assert 'DicomImage(pixels=<uint8 40x32>' in repr(image)
  assert set(image.__dataclass_fields__) == {
    'pixels', 'rows', 'columns', 'bits_stored', 'photometric_interpretation',
    'pixel_spacing_mm', 'view_position', 'modality',
  }


def test_phi_elements_are_never_parsed(tmp_path, monkeypatch):
  path = _write(tmp_path, window=(1800, 1200))
  full = pydicom.dcmread(path)
  assert all(key in full for key in PHI)  # the fixture really contains PHI
  seen = []
  real_dcmread = pydicom.dcmread

  def spy(*args, **kwargs):
    ds = real_dcmread(*args, **kwargs)
    seen.append(ds)
    return ds

  monkeypatch.setattr(pydicom, 'dcmread', spy)
  dicom.read_dicom(path)
  ids = dicom.read_ids(path)
  dicom.patient_pseudonym(path, 'salt')
  assert len(seen) == 3
  image_ds, ids_ds, pseudo_ds = seen
  assert {e.keyword for e in image_ds} <= set(dicom.PIXEL_KEYWORDS)
  assert {e.keyword for e in ids_ds} == set(ids)
  assert {e.keyword for e in pseudo_ds} == {'PatientID'}
  for ds in (image_ds, ids_ds):
    assert not any(key in ds for key in PHI)
    dumped = str(ds)
    assert not any(phi in dumped for phi in PHI_STRINGS)


def test_read_ids_returns_uids(tmp_path):
  path = _write(tmp_path)
  assert dicom.read_ids(path) == UIDS
  sop = dicom.read_ids(path, keys=('SOPInstanceUID',))
  assert sop == {'SOPInstanceUID': UIDS['SOPInstanceUID']}
  # The caller decides which keys it asks for; they come back verbatim.
  assert dicom.read_ids(path, keys=('AccessionNumber',)) == {'AccessionNumber': 'ACC-98765'}
  with pytest.raises(dicom.DicomReadError, match='FrameOfReferenceUID'):
    dicom.read_ids(path, keys=('FrameOfReferenceUID',))
  with pytest.raises(ValueError, match='not a DICOM keyword'):
    dicom.read_ids(path, keys=('NoSuchKeyword',))
  generated = dicom.read_ids(_write(tmp_path, name='gen.dcm', uids=None))
  assert set(generated) == set(UIDS) and len(set(generated.values())) == 3


def test_patient_pseudonym(tmp_path):
  path = _write(tmp_path)
  a = dicom.patient_pseudonym(path, 'salt-A')
  assert a == dicom.patient_pseudonym(str(path), b'salt-A')  # deterministic
  assert a == dicom.patient_pseudonym(pydicom.dcmread(path), 'salt-A')  # same from a dataset
  assert len(a) == 16 and int(a, 16) >= 0
  assert dicom.patient_pseudonym(path, 'salt-B') != a  # salted
  assert len(dicom.patient_pseudonym(path, 'salt-A', length=32)) == 32
  for phi in ('PHI-12345', '12345', 'PHI'):
    assert phi not in a and phi.lower() not in a
  assert a not in hashlib.sha256(b'PHI-12345').hexdigest()  # not the unsalted hash
  other = _write(tmp_path, name='other.dcm', phi={**PHI, 'PatientID': 'PHI-67890'})
  assert dicom.patient_pseudonym(other, 'salt-A') != a
  with pytest.raises(ValueError):
    dicom.patient_pseudonym(path, '')
  no_id = _write(tmp_path, name='noid.dcm', phi={'PatientName': 'Doe^Jane'})
  with pytest.raises(dicom.DicomReadError, match='noid.dcm.*PatientID') as info:
    dicom.patient_pseudonym(no_id, 'salt-A')
  assert 'Doe' not in str(info.value)


# ---------------------------------------------------------------- errors


def _bad_missing(tmp_path):
  return tmp_path / 'missing_file.dcm'


def _bad_random(tmp_path):
  path = tmp_path / 'random_bytes.dcm'
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  return path


def _bad_truncated(tmp_path):
  data = _write(tmp_path, name='whole.dcm').read_bytes()
  path = tmp_path / 'truncated_half.dcm'
  path.write_bytes(data[: len(data) // 2])
  return path


def _bad_truncated_header(tmp_path):
  data = _write(tmp_path, name='whole.dcm').read_bytes()
  path = tmp_path / 'truncated_header.dcm'
  path.write_bytes(data[:300])
  return path


def _bad_no_pixel_data(tmp_path):
  path = _write(tmp_path, name='no_pixel_data.dcm')
  ds = pydicom.dcmread(path)
  del ds.PixelData
  ds.save_as(path, enforce_file_format=True)
  return path


def _bad_zero_size(tmp_path):
  return _write(tmp_path, np.zeros((0, 16), np.uint16), name='zero_size.dcm')


def _bad_directory(tmp_path):
  path = tmp_path / 'a_directory.dcm'
  path.mkdir()
  return path


def _bad_rgb(tmp_path):
  rgb = {'PhotometricInterpretation': 'RGB', 'SamplesPerPixel': 3}
  return _write(tmp_path, name='rgb_image.dcm', tags=rgb)


def _bad_unknown_syntax(tmp_path):
  path = _write(tmp_path, name='mpeg2_video.dcm')
  ds = pydicom.dcmread(path)
  ds.file_meta.TransferSyntaxUID = MPEG2MPML
  ds.PixelData = encapsulate([b'\x00' * 64])
  ds['PixelData'].VR = 'OB'
  ds.save_as(path, enforce_file_format=True)
  return path


BAD_INPUTS = {
  'missing': (_bad_missing, 'file not found'),
  'random': (_bad_random, 'not a DICOM file'),
  'truncated': (_bad_truncated, 'truncated'),
  'truncated_header': (_bad_truncated_header, 'truncated'),
  'no_pixel_data': (_bad_no_pixel_data, 'no pixel data'),
  'zero_size': (_bad_zero_size, 'zero-size'),
  'directory': (_bad_directory, 'directory'),
  'rgb': (_bad_rgb, 'photometric'),
  'unknown_syntax': (_bad_unknown_syntax, 'unsupported transfer syntax'),
}


@pytest.mark.parametrize('kind', sorted(BAD_INPUTS))
def test_bad_inputs_raise_dicom_read_error(tmp_path, kind):
  make, cause = BAD_INPUTS[kind]
  path = make(tmp_path)
  with pytest.raises(dicom.DicomReadError) as info:
    dicom.read_dicom(path)
  message = str(info.value)
  assert os.path.basename(path) in message and str(path) in message
  assert cause.lower() in message.lower()
  assert '\n' not in message
  assert isinstance(info.value, ValueError)
  assert info.value.path == str(path)
  assert not any(phi in message for phi in PHI_STRINGS)


@pytest.mark.parametrize('kind', ['missing', 'random', 'truncated_header'])
def test_bad_inputs_for_ids_and_pseudonym(tmp_path, kind):
  path = BAD_INPUTS[kind][0](tmp_path)
  for fn in (dicom.read_ids, lambda p: dicom.patient_pseudonym(p, 'salt')):
    with pytest.raises(dicom.DicomReadError, match=os.path.basename(path)):
      fn(path)


def test_missing_decoder_plugin_is_reported(tmp_path):
  if get_decoder(JPEGLosslessSV1).is_available:
    pytest.skip('a JPEG Lossless decoder plugin is installed here')
  path = _write(tmp_path, name='jpeg_lossless.dcm')
  ds = pydicom.dcmread(path)
  ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
  ds.PixelData = encapsulate([b'\xff\xd8\xff\xd9'])
  ds['PixelData'].VR = 'OB'
  ds.save_as(path, enforce_file_format=True)
  with pytest.raises(dicom.DicomReadError, match='jpeg_lossless.dcm.*no decoding plugin'):
    dicom.read_dicom(path)


def test_error_pickles():
  err = pickle.loads(pickle.dumps(dicom.DicomReadError('/x/y.dcm', 'no pixel data')))
  assert isinstance(err, dicom.DicomReadError)
  assert str(err) == '/x/y.dcm: no pixel data' and err.cause == 'no pixel data'


def test_write_dicom_validates(tmp_path):
  with pytest.raises(ValueError):
    dicom.write_dicom(tmp_path / 'a.dcm', np.full((4, 4), 4096, np.uint16), bits_stored=12)
  with pytest.raises(ValueError):
    dicom.write_dicom(tmp_path / 'b.dcm', np.zeros((4, 4), np.float32))
  with pytest.raises(ValueError):
    dicom.write_dicom(tmp_path / 'c.dcm', np.zeros((4, 4), np.uint16), photometric='RGB')
  sop = dicom.write_dicom(tmp_path / 'd.dcm', np.zeros((4, 4), np.uint16))
  ds = pydicom.dcmread(tmp_path / 'd.dcm')
  assert ds.SOPInstanceUID == sop == ds.file_meta.MediaStorageSOPInstanceUID
  assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
  assert 'PatientName' not in ds  # no PHI unless asked for
