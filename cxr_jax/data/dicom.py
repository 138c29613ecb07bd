"""Reading chest-radiograph DICOM files for dataset preparation.

This module is the only place where DICOM files are read when the TFDS
builders (RSNA pneumonia, SIIM-ACR pneumothorax, SIIM-FISABIO-RSNA COVID-19)
prepare their data.  It exposes three readers and one writer:

  ``read_dicom(path, window='auto') -> DicomImage``
      Display-ready ``uint8`` pixels plus a handful of pixel-related fields.
  ``read_ids(path, keys=(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID))``
      The file's own identifiers, for joining with the challenge CSVs.
  ``patient_pseudonym(path_or_dataset, salt, length=16)``
      A salted hash of PatientID, for patient-level splits.
  ``write_dicom(path, pixels_uint16, ...)``
      A small DICOM writer for tests and fixtures only (fake datasets).

Privacy rules
-------------
* Every read passes an explicit tag list to ``pydicom.dcmread(...,
  specific_tags=[...])``.  pydicom skips the value of any other element with a
  seek (an undefined-length sequence is walked to find its end and then
  dropped), so PHI elements such as PatientName, PatientID, PatientBirthDate,
  StudyDate, InstitutionName, AccessionNumber or ReferringPhysicianName never
  enter the parsed dataset (pydicom always adds SpecificCharacterSet, which
  it needs to decode text).  ``read_dicom`` reads only the pixel module, the
  modality/VOI LUT modules, PixelSpacing / ImagerPixelSpacing, ViewPosition
  and Modality; ``DicomImage`` holds nothing else, so its repr holds no PHI.
* ``read_ids`` returns exactly the keys the caller asks for, verbatim.  The
  defaults are the study/series/instance UIDs, which are not PHI in the public
  challenge releases (they were re-generated on de-identification); whether
  another key is safe to store is the caller's decision.
* ``patient_pseudonym`` reads only PatientID and returns
  ``HMAC-SHA256(key=salt, msg=PatientID)`` as a hex prefix.  The ID itself is
  never returned, stored, logged or put into an exception message.  Without
  the salt the pseudonym cannot be reversed by hashing candidate IDs, so keep
  the salt out of the repository and use the same salt for every split that
  must agree.
* Error messages name the file and the cause, never an element value.

Pixel rules (``read_dicom``)
----------------------------
1. Decode with ``ds.pixel_array``.  Multi-frame files: only the first frame is
   decoded (``ds.pixel_array_options(index=0)``) and returned.  Only
   single-sample MONOCHROME1 / MONOCHROME2 images are accepted.  For a
   compressed transfer syntax whose decoder pydicom lacks, or whose decoder
   plugins (pylibjpeg, pillow, gdcm, ...) are not installed, ``DicomReadError``
   says so and names the missing packages.
2. Modality LUT: ``pydicom.pixels.apply_modality_lut`` (Modality LUT Sequence,
   or RescaleSlope / RescaleIntercept).
3. VOI, chosen by ``window``:
     ``'auto'`` (default): a VOI LUT Sequence, else WindowCenter/WindowWidth
       (the first window when several are given; VOILUTFunction honoured),
       applied with ``pydicom.pixels.apply_voi_lut``; when the file has
       neither (or only an unusable one, e.g. width < 1) the robust min-max
       rule below is used.
     ``'minmax'``: robust min-max, ignoring the file's VOI: the 0.5th and
       99.5th percentiles of the modality-LUT values map to black and white
       and values outside are clipped.  If those percentiles coincide the true
       min/max are used; a constant image becomes all zeros.
     ``(center, width)``: a LINEAR window (DICOM PS3.3 C.11.2.1.2.1, width
       >= 1) replacing whatever VOI the file holds.
   The VOI output is normalised to [0, 1]: a window by its output range (the
   one pydicom maps onto: 0 .. 2**BitsStored - 1 for unsigned data, through
   the rescale when present), a VOI LUT by the min/max of its own entries
   (vendors often declare 16-bit entries for 12-bit LUT data).
4. MONOCHROME1 is inverted after the VOI (``1 - x``), so bright always means
   dense (bone) as a radiologist sees it.  Presentation LUT Shape is not read:
   for DX images it is tied to the photometric interpretation.
5. ``uint8 = clip(rint(255 * x), 0, 255)``.

Errors
------
Every failure to produce an image raises ``DicomReadError`` (a ``ValueError``)
with a one-line message ``"<path>: <cause>"``: missing file, not DICOM or
truncated, no pixel data, unsupported transfer syntax or photometric
interpretation, zero-size image, undecodable pixel data.  pydicom's own
exceptions are chained as ``__cause__``.  Invalid arguments (an unknown
``window`` value, an empty salt) raise plain ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import os
import struct
from typing import Any, Mapping, Sequence, Tuple, Union

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import (
  PYDICOM_IMPLEMENTATION_UID,
  DigitalXRayImageStorageForPresentation,
  ExplicitVRLittleEndian,
  generate_uid,
)

PathLike = Union[str, os.PathLike]
Window = Union[str, Tuple[float, float]]

DEFAULT_ID_KEYS: Tuple[str, ...] = (
  'StudyInstanceUID',
  'SeriesInstanceUID',
  'SOPInstanceUID',
)

# Everything read_dicom asks pydicom to parse; all other elements are skipped.
PIXEL_KEYWORDS: Tuple[str, ...] = (
  # Image pixel module.
  'SamplesPerPixel',
  'PhotometricInterpretation',
  'Rows',
  'Columns',
  'BitsAllocated',
  'BitsStored',
  'HighBit',
  'PixelRepresentation',
  'PlanarConfiguration',
  'NumberOfFrames',
  'ExtendedOffsetTable',
  'ExtendedOffsetTableLengths',
  'PixelData',
  # Modality LUT module.
  'RescaleSlope',
  'RescaleIntercept',
  'RescaleType',
  'ModalityLUTSequence',
  # VOI LUT module.
  'WindowCenter',
  'WindowWidth',
  'VOILUTFunction',
  'VOILUTSequence',
  # Returned metadata.
  'PixelSpacing',
  'ImagerPixelSpacing',
  'ViewPosition',
  'Modality',
)

# Distinctive fake PHI for fixtures: tests assert none of it leaks.
SAMPLE_PHI: Mapping[str, str] = {
  'PatientName': 'Doe^Jane',
  'PatientID': 'PHI-12345',
  'PatientBirthDate': '19700101',
  'StudyDate': '20200102',
  'StudyTime': '101112',
  'InstitutionName': 'General Hospital',
  'InstitutionAddress': '1 Main Street Springfield',
  'AccessionNumber': 'ACC-98765',
  'ReferringPhysicianName': 'House^Gregory',
}

_MONOCHROME = ('MONOCHROME1', 'MONOCHROME2')

# Exceptions pydicom (or malformed element values) can raise while parsing or
# decoding an untrusted file.
_PARSE_ERRORS = (
  InvalidDicomError,
  BytesLengthException,
  EOFError,
  struct.error,
  ValueError,
  TypeError,
  KeyError,
  IndexError,
  AttributeError,
  NotImplementedError,
  RuntimeError,
  UnicodeError,
  OverflowError,
)


class DicomReadError(ValueError):
  """A DICOM file could not be read; the message is ``"<path>: <cause>"``."""

  def __init__(self, path: PathLike | str, cause: str):
    self.path = os.fspath(path)
    self.cause = ' '.join(str(cause).split())  # always one line
    super().__init__(f'{self.path}: {self.cause}')

  def __reduce__(self):
    return (type(self), (self.path, self.cause))


@dataclasses.dataclass(frozen=True, eq=False)
class DicomImage:
  """A display-ready radiograph and its pixel-related metadata (no PHI).

  Attributes:
    pixels: uint8 [rows, columns], read-only; bright = dense (bone).
    rows: Rows.
    columns: Columns.
    bits_stored: BitsStored of the stored pixel values.
    photometric_interpretation: 'MONOCHROME1' or 'MONOCHROME2' as stored
      (``pixels`` are already inverted for MONOCHROME1).
    pixel_spacing_mm: (row spacing, column spacing) in mm from PixelSpacing,
      else ImagerPixelSpacing; None when absent or malformed.
    view_position: ViewPosition, e.g. 'PA' or 'AP'; '' when absent.
    modality: Modality, e.g. 'CR' or 'DX'; '' when absent.
  """

  pixels: np.ndarray = dataclasses.field(repr=False)
  rows: int
  columns: int
  bits_stored: int
  photometric_interpretation: str
  pixel_spacing_mm: Tuple[float, float] | None
  view_position: str
  modality: str

  def __repr__(self) -> str:
    fields = ', '.join(
      f'{f.name}={getattr(self, f.name)!r}'
      for f in dataclasses.fields(self)
      if f.name != 'pixels'
    )
    shape = 'x'.join(str(n) for n in self.pixels.shape)
    return f'DicomImage(pixels=<{self.pixels.dtype} {shape}>, {fields})'


def read_dicom(path: PathLike, window: Window = 'auto') -> DicomImage:
  """Reads one radiograph as display-ready uint8 pixels (see module rules).

  Args:
    path: the DICOM file.
    window: 'auto' (file VOI, else robust min-max), 'minmax' (robust min-max,
      file VOI ignored) or a LINEAR (center, width) in modality-LUT units.

  Returns:
    A DicomImage without PHI.

  Raises:
    DicomReadError: the file cannot be turned into an image.
    ValueError: invalid `window`.
  """
  window = _check_window(window)
  ds = _dcmread(path, specific_tags=list(PIXEL_KEYWORDS))
  frame = _decode_first_frame(path, ds)
  try:
    values = apply_modality_lut(frame, ds)
    unit = _apply_voi(values, ds, window)
  except _PARSE_ERRORS as exc:
    raise DicomReadError(path, f'cannot apply modality/VOI LUT: {_describe(exc)}') from exc
  if ds.PhotometricInterpretation == 'MONOCHROME1':
    unit = 1.0 - unit
  pixels = np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
  pixels.setflags(write=False)
  return DicomImage(
    pixels=pixels,
    rows=int(ds.Rows),
    columns=int(ds.Columns),
    bits_stored=int(ds.get('BitsStored') or ds.BitsAllocated),
    photometric_interpretation=str(ds.PhotometricInterpretation),
    pixel_spacing_mm=_pixel_spacing(ds),
    view_position=_text(ds, 'ViewPosition'),
    modality=_text(ds, 'Modality'),
  )


def read_ids(path: PathLike, keys: Sequence[str] = DEFAULT_ID_KEYS) -> dict[str, str]:
  """Returns {keyword: value as str} for `keys`, read without pixel data.

  Only `keys` are parsed; they are returned verbatim, so the caller decides
  whether they are safe to store (the default UIDs are, in the public
  challenge datasets).

  Raises:
    DicomReadError: unreadable file, or a key absent or empty in it.
    ValueError: a key is not a DICOM keyword.
  """
  keys = tuple(keys)
  for key in keys:
    if tag_for_keyword(key) is None:
      raise ValueError(f'not a DICOM keyword: {key!r}')
  ds = _dcmread(path, specific_tags=list(keys), stop_before_pixels=True)
  out = {}
  for key in keys:
    value = _text(ds, key, path)
    if not value:
      raise DicomReadError(path, f'{key} is missing or empty')
    out[key] = value
  return out


def patient_pseudonym(
  path_or_dataset: PathLike | Dataset,
  salt: str | bytes,
  length: int = 16,
) -> str:
  """Salted pseudonym of PatientID: hex prefix of HMAC-SHA256(salt, PatientID).

  Deterministic for a given (PatientID, salt), different across salts, and it
  never contains or reveals the ID (the ID is only held in a local variable).
  Use it as the grouping key of patient-level splits.

  Args:
    path_or_dataset: a DICOM file (only PatientID is parsed) or a dataset.
    salt: secret, non-empty; the same salt gives the same pseudonyms.
    length: number of hex characters, 8..64 (16 = 64 bits: collisions are
      negligible for a million patients).

  Raises:
    DicomReadError: unreadable file, or no / empty PatientID.
    ValueError: empty salt or bad length.
  """
  if isinstance(salt, str):
    salt = salt.encode('utf-8')
  if not salt:
    raise ValueError('patient_pseudonym needs a non-empty salt')
  if not 8 <= length <= 64:
    raise ValueError(f'length must be in [8, 64], got {length}')
  if isinstance(path_or_dataset, Dataset):
    ds = path_or_dataset
    where = str(getattr(ds, 'filename', None) or '<dataset>')
  else:
    where = os.fspath(path_or_dataset)
    ds = _dcmread(where, specific_tags=['PatientID'], stop_before_pixels=True)
  patient_id = _text(ds, 'PatientID', where)
  if not patient_id:
    raise DicomReadError(where, 'PatientID is missing or empty')
  digest = hmac.new(salt, patient_id.encode('utf-8'), hashlib.sha256)
  return digest.hexdigest()[:length]


def write_dicom(
  path: PathLike,
  pixels_uint16: np.ndarray,
  *,
  bits_stored: int = 12,
  photometric: str = 'MONOCHROME2',
  window: Tuple[float, float] | Sequence[Tuple[float, float]] | None = None,
  rescale: Tuple[float, float] | None = None,
  phi: Mapping[str, str] | None = None,
  uids: Mapping[str, str] | None = None,
  tags: Mapping[str, Any] | None = None,
) -> str:
  """Writes a small uncompressed DICOM file.  For tests and fixtures only.

  The file is a DX "for presentation" instance, Explicit VR Little Endian,
  unsigned 16-bit allocated.  Pixel values are stored verbatim (no inversion
  for MONOCHROME1).

  Args:
    path: output file.
    pixels_uint16: [rows, columns] or [frames, rows, columns] integers in
      [0, 2**bits_stored - 1].
    bits_stored: BitsStored, 1..16.
    photometric: 'MONOCHROME1' or 'MONOCHROME2'.
    window: (center, width) or several such pairs (WindowCenter/WindowWidth).
    rescale: (slope, intercept) (RescaleSlope/RescaleIntercept).
    phi: keyword -> value of PHI-like elements to add, e.g. SAMPLE_PHI.
    uids: overrides of StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID;
      the defaults are derived deterministically from `path`.
    tags: any other keyword -> value; a value of None removes the element
      (the defaults are Modality='DX' and ViewPosition='PA').

  Returns:
    The SOPInstanceUID written.
  """
  path = os.fspath(path)
  arr = np.asarray(pixels_uint16)
  if not np.issubdtype(arr.dtype, np.integer) or arr.ndim not in (2, 3):
    raise ValueError(f'pixels must be a 2-D or 3-D integer array, got {arr.dtype} {arr.shape}')
  if not 1 <= bits_stored <= 16:
    raise ValueError(f'bits_stored must be in [1, 16], got {bits_stored}')
  if arr.size and (arr.min() < 0 or arr.max() >= 2**bits_stored):
    raise ValueError(f'pixel values must lie in [0, {2**bits_stored - 1}]')
  if photometric not in _MONOCHROME:
    raise ValueError(f'photometric must be one of {_MONOCHROME}, got {photometric!r}')

  ids = {key: generate_uid(entropy_srcs=[path, key]) for key in DEFAULT_ID_KEYS}
  ids.update(uids or {})

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
  meta.MediaStorageSOPInstanceUID = ids['SOPInstanceUID']
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

  ds = FileDataset(path, {}, file_meta=meta, preamble=b'\0' * 128)
  ds.SOPClassUID = DigitalXRayImageStorageForPresentation
  for key, value in ids.items():
    setattr(ds, key, value)
  ds.Modality = 'DX'
  ds.ViewPosition = 'PA'
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.Rows, ds.Columns = int(arr.shape[-2]), int(arr.shape[-1])
  if arr.ndim == 3:
    ds.NumberOfFrames = int(arr.shape[0])
  ds.BitsAllocated = 16
  ds.BitsStored = bits_stored
  ds.HighBit = bits_stored - 1
  ds.PixelRepresentation = 0
  if window is not None:
    pairs = [window] if np.ndim(window) == 1 else list(window)
    ds.WindowCenter = [float(c) for c, _ in pairs] if len(pairs) > 1 else float(pairs[0][0])
    ds.WindowWidth = [float(w) for _, w in pairs] if len(pairs) > 1 else float(pairs[0][1])
  if rescale is not None:
    ds.RescaleSlope, ds.RescaleIntercept = float(rescale[0]), float(rescale[1])
    ds.RescaleType = 'US'
  for key, value in {**(phi or {}), **(tags or {})}.items():
    if tag_for_keyword(key) is None:
      raise ValueError(f'not a DICOM keyword: {key!r}')
    if value is None:
      if key in ds:
        delattr(ds, key)
    else:
      setattr(ds, key, value)
  ds.PixelData = arr.astype('<u2').tobytes()
  ds.save_as(path, enforce_file_format=True)
  return str(ids['SOPInstanceUID'])


# --------------------------------------------------------------------------
# Internals.


def _describe(exc: BaseException) -> str:
  text = ' '.join(str(exc).split())
  return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def _dcmread(path: PathLike, **kwargs: Any) -> FileDataset:
  """pydicom.dcmread with every failure turned into DicomReadError."""
  try:
    return pydicom.dcmread(os.fspath(path), **kwargs)
  except FileNotFoundError as exc:
    raise DicomReadError(path, 'file not found') from exc
  except IsADirectoryError as exc:
    raise DicomReadError(path, 'is a directory, not a file') from exc
  except PermissionError as exc:
    raise DicomReadError(path, 'permission denied') from exc
  except OSError as exc:
    raise DicomReadError(path, f'cannot read file: {exc.strerror or _describe(exc)}') from exc
  except _PARSE_ERRORS as exc:
    raise DicomReadError(path, f'not a DICOM file or truncated/corrupt: {_describe(exc)}') from exc


def _decode_first_frame(path: PathLike, ds: FileDataset) -> np.ndarray:
  """Validates the pixel module and returns the first frame, [rows, columns]."""
  if 'PixelData' not in ds:
    raise DicomReadError(path, 'no pixel data (PixelData element absent; file may be truncated)')
  try:
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get('SamplesPerPixel') or 1)
    photometric = str(ds.PhotometricInterpretation).strip()
  except _PARSE_ERRORS as exc:
    raise DicomReadError(path, f'incomplete image pixel module: {_describe(exc)}') from exc
  if rows <= 0 or columns <= 0:
    raise DicomReadError(path, f'zero-size image (Rows={rows}, Columns={columns})')
  if samples != 1 or photometric not in _MONOCHROME:
    raise DicomReadError(
      path,
      f'unsupported photometric interpretation {photometric!r} with {samples} '
      'samples per pixel (expected single-sample MONOCHROME1/MONOCHROME2)',
    )

  syntax = ds.file_meta.get('TransferSyntaxUID')
  if not syntax:
    raise DicomReadError(path, 'no TransferSyntaxUID in the file meta information')
  try:
    decoder = get_decoder(syntax)
  except NotImplementedError as exc:
    raise DicomReadError(
      path, f'unsupported transfer syntax {syntax.name} ({syntax}): pydicom has no decoder for it'
    ) from exc
  if not decoder.is_available:
    missing = '; '.join(decoder.missing_dependencies) or 'no plugin available'
    raise DicomReadError(
      path,
      f'unsupported transfer syntax {syntax.name} ({syntax}): no decoding plugin '
      f'installed ({missing})',
    )

  try:
    ds.pixel_array_options(index=0)  # decode only the first frame
    arr = ds.pixel_array
  except _PARSE_ERRORS as exc:
    raise DicomReadError(
      path, f'cannot decode pixel data (truncated or corrupt?): {_describe(exc)}'
    ) from exc
  if arr.ndim == 3 and arr.shape[0] == 1:
    arr = arr[0]
  if arr.size == 0:
    raise DicomReadError(path, 'zero-size image (decoded pixel array is empty)')
  if arr.shape != (rows, columns):
    raise DicomReadError(
      path, f'decoded shape {arr.shape} does not match Rows x Columns {(rows, columns)}'
    )
  return arr


def _check_window(window: Any) -> Window:
  usage = f"window must be 'auto', 'minmax' or (center, width), got {window!r}"
  if isinstance(window, str):
    if window not in ('auto', 'minmax'):
      raise ValueError(usage)
    return window
  try:
    center, width = (float(v) for v in window)
  except (TypeError, ValueError) as exc:
    raise ValueError(usage) from exc
  if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
    raise ValueError(f'window needs a finite center and a width >= 1, got {window!r}')
  return (center, width)


def _has_voi_lut_sequence(ds: Dataset) -> bool:
  seq = ds.get('VOILUTSequence')
  if not seq:
    return False
  return seq[0].get('LUTDescriptor') is not None and seq[0].get('LUTData') is not None


def _has_window(ds: Dataset) -> bool:
  center, width = ds.get('WindowCenter'), ds.get('WindowWidth')
  return center not in (None, '') and width not in (None, '')


def _apply_voi(values: np.ndarray, ds: Dataset, window: Window) -> np.ndarray:
  """Modality-LUT values -> float64 in [0, 1] (before any MONOCHROME1 inversion)."""
  if window == 'minmax':
    return _robust_minmax(values)
  if window == 'auto':
    if _has_voi_lut_sequence(ds):
      try:
        return _voi_lut_sequence(values, ds)
      except (ValueError, TypeError, NotImplementedError, IndexError):
        pass  # unusable LUT: try the window, then min-max
    if _has_window(ds):
      try:
        return _windowing(values, ds)
      except (ValueError, TypeError, IndexError):
        pass  # e.g. width < 1, unknown VOILUTFunction, malformed values
    return _robust_minmax(values)
  # Explicit LINEAR (center, width) replacing the file's VOI.
  for key in ('VOILUTSequence', 'VOILUTFunction'):
    if key in ds:
      delattr(ds, key)
  ds.WindowCenter, ds.WindowWidth = window
  return _windowing(values, ds)


def _robust_minmax(values: np.ndarray) -> np.ndarray:
  values = np.asarray(values, dtype=np.float64)
  lo, hi = np.percentile(values, [0.5, 99.5])
  if hi <= lo:
    lo, hi = float(values.min()), float(values.max())
  if hi <= lo:
    return np.zeros_like(values)
  return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _windowing(values: np.ndarray, ds: Dataset) -> np.ndarray:
  out = apply_voi_lut(values, ds, index=0, prefer_lut=False)
  y_min, y_max = _windowing_output_range(ds)
  return np.clip((np.asarray(out, np.float64) - y_min) / (y_max - y_min), 0.0, 1.0)


def _windowing_output_range(ds: Dataset) -> Tuple[float, float]:
  """The range pydicom's apply_windowing maps onto (mirrors its rules)."""
  if ds.get('ModalityLUTSequence'):
    bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
    y_min, y_max = 0.0, float(2**bits - 1)
  elif int(ds.get('PixelRepresentation') or 0) == 0:
    y_min, y_max = 0.0, float(2 ** int(ds.BitsStored) - 1)
  else:
    half = 2 ** (int(ds.BitsStored) - 1)
    y_min, y_max = float(-half), float(half - 1)
  slope, intercept = ds.get('RescaleSlope'), ds.get('RescaleIntercept')
  if slope is not None and intercept is not None:
    y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
  return y_min, y_max


def _voi_lut_sequence(values: np.ndarray, ds: Dataset) -> np.ndarray:
  if not np.issubdtype(values.dtype, np.integer):
    values = np.rint(values).astype(np.int64)  # LUT inputs are integers
  out = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), np.float64)
  n_entries, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
  n_entries = n_entries or 2**16
  inputs = np.arange(first, first + n_entries, dtype=np.int64)
  entries = apply_voi_lut(inputs, ds, index=0, prefer_lut=True)
  lo, hi = float(np.min(entries)), float(np.max(entries))
  if hi <= lo:
    return np.zeros_like(out)
  return np.clip((out - lo) / (hi - lo), 0.0, 1.0)


def _text(ds: Dataset, keyword: str, path: PathLike | None = None) -> str:
  """An element as a stripped str ('' when absent); multi-values joined by '\\'."""
  try:
    value = ds.get(keyword)
  except _PARSE_ERRORS as exc:
    if path is None:
      return ''
    raise DicomReadError(path, f'cannot parse {keyword}: {type(exc).__name__}') from exc
  if value is None:
    return ''
  if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
    return '\\'.join(str(v).strip() for v in value)
  return str(value).strip()


def _pixel_spacing(ds: Dataset) -> Tuple[float, float] | None:
  for keyword in ('PixelSpacing', 'ImagerPixelSpacing'):
    try:
      value = ds.get(keyword)
      if value is None:
        continue
      if isinstance(value, (str, bytes, float, int)):
        spacing = [float(value)]
      else:
        spacing = [float(v) for v in value]
    except _PARSE_ERRORS:
      continue
    if len(spacing) == 2 and all(math.isfinite(s) and s > 0 for s in spacing):
      return (spacing[0], spacing[1])
  return None
