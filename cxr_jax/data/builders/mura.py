"""`mura`: MURA v1.1 musculoskeletal radiographs, normal vs abnormal (Rajpurkar et al. 2017).

40,561 upper-extremity radiographs of 14,863 studies (12,173 patients) in seven body parts, each
study labelled normal or abnormal by radiologists. Images are PNG files of varying size; a few are
RGB (converted to grey levels).

Splits. The official train and valid sets are patient-disjoint. The official valid set (whose
labels are public) becomes 'test'; 10% of the official train patients are hashed out as
'validation', the rest is 'train'. All studies of a patient stay in one split.

Features (besides image / patient_id / source):
  label      ClassLabel ['normal', 'abnormal'], the study's label (every image of a study has it)
  body_part  ClassLabel BODY_PARTS (the XR_* folder), shared with `rsna_bone_age`
  study_id   'patient00001/shoulder/study1' (patient, body part, study number; no label)
  patient_id 'patient00001'
"""

from __future__ import annotations

import csv

from etils import epath
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base

# Body parts of the musculoskeletal datasets (MURA's XR_* folders, lower case); `rsna_bone_age`
# uses the same list so the feature means the same in both.
BODY_PARTS = ('elbow', 'finger', 'forearm', 'hand', 'humerus', 'shoulder', 'wrist')
LABELS = ('normal', 'abnormal')
TOP = 'MURA-v1.1'
OFFICIAL_SPLITS = {'train': 'train', 'valid': 'test'}
TRAIN_FRACTIONS = {'train': 0.9, 'validation': 0.1}

_INSTRUCTIONS = """\
Request MURA at https://stanfordmlgroup.github.io/competitions/mura/ (Stanford research use
agreement) and extract MURA-v1.1.zip so that the manual dir holds:

    <manual_dir>/MURA-v1.1/train_image_paths.csv      (no header; one image path per line)
    <manual_dir>/MURA-v1.1/train_labeled_studies.csv  (no header; study folder path, 0 or 1)
    <manual_dir>/MURA-v1.1/valid_image_paths.csv
    <manual_dir>/MURA-v1.1/valid_labeled_studies.csv
    <manual_dir>/MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png
    (in general {train,valid}/XR_<PART>/patient<N>/study<K>_<positive|negative>/image<J>.png)

The manual dir may also be the MURA-v1.1 folder itself (paths in the CSV files are resolved
relative to its parent).

Terms: the Stanford University School of Medicine MURA Dataset Research Use Agreement
(non-commercial research use, no redistribution); cite Rajpurkar et al. 2017.
"""


def _rows(path: epath.Path) -> list[list[str]]:
  if not path.exists():
    raise base.BadInputError(f'{path}: file not found')
  with path.open() as f:
    return [[v.strip() for v in row] for row in csv.reader(f) if row and row[0].strip()]


def parse_path(relative: str) -> tuple[str, str, str, str] | None:
  """'MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png' ->
  ('train', 'shoulder', 'patient00001', 'study1_positive'), or None if it does not fit."""
  parts = relative.replace('\\', '/').split('/')
  if len(parts) != 6 or parts[0] != TOP or not parts[2].startswith('XR_'):
    return None
  return parts[1], parts[2][3:].lower(), parts[3], parts[4]


def _study_dir(relative: str) -> str:
  return relative.replace('\\', '/').rsplit('/', 1)[0].rstrip('/')


class Mura(base.CxrBuilder):
  """MURA v1.1: upper-extremity radiographs, normal vs abnormal study, body part."""

  SOURCE = 'mura'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://stanfordmlgroup.github.io/competitions/mura/'
  CITATION = """\
@article{rajpurkar2017mura,
  title   = {{MURA}: Large Dataset for Abnormality Detection in Musculoskeletal Radiographs},
  author  = {Rajpurkar, Pranav and Irvin, Jeremy and Bagul, Aarti and Ding, Daisy and Duan, Tony
             and Mehta, Hershel and Yang, Brandon and Zhu, Kaylie and Laird, Dillon and Ball,
             Robyn L. and Langlotz, Curtis and Shpanskaya, Katie and Lungren, Matthew P. and Ng,
             Andrew Y.},
  journal = {arXiv preprint arXiv:1712.06957},
  year    = {2017},
}"""

  def _features(self):
    return {
        'label': tfds.features.ClassLabel(names=list(LABELS)),
        'body_part': tfds.features.ClassLabel(names=list(BODY_PARTS)),
        'study_id': tfds.features.Text(),
    }

  def _list_examples(self, root):
    root = epath.Path(root)
    if (root / TOP / 'train_image_paths.csv').exists():
      base_dir = root
    elif (root / 'train_image_paths.csv').exists() and root.name == TOP:
      base_dir = root.parent
    else:
      raise base.BadInputError(f'{root}: no {TOP}/train_image_paths.csv; see the layout in '
                               'MANUAL_DOWNLOAD_INSTRUCTIONS')
    splits: dict[str, list[base.Item]] = {'train': [], 'validation': [], 'test': []}
    for official, target in OFFICIAL_SPLITS.items():
      study_labels = {}
      for row in _rows(base_dir / TOP / f'{official}_labeled_studies.csv'):
        study_labels[row[0].rstrip('/')] = row[1] if len(row) > 1 else ''
      for row in _rows(base_dir / TOP / f'{official}_image_paths.csv'):
        relative = row[0]
        parsed = parse_path(relative)
        patient = parsed[2] if parsed else relative
        label = study_labels.get(_study_dir(relative))
        if target == 'train':
          split = base.hash_split(patient, TRAIN_FRACTIONS, salt=self.SOURCE)
        else:
          split = target
        splits[split].append(base.Item(
            key=relative[len(TOP) + 1:] if relative.startswith(TOP + '/') else relative,
            patient_id=patient, payload=(base_dir / relative, relative, parsed, label)))
    return splits

  def _load_example(self, item, size):
    path, relative, parsed, label = item.payload
    if parsed is None or parsed[1] not in BODY_PARTS:
      raise base.BadInputError(f'{path}: image path {relative!r} is not '
                               f'{TOP}/<split>/XR_<PART>/patient<N>/study<K>_<label>/image<J>.png')
    _, body_part, patient, study = parsed
    if label in ('0', '1'):
      label = LABELS[int(label)]
    elif study.endswith('_positive'):
      label = 'abnormal'
    elif study.endswith('_negative'):
      label = 'normal'
    else:
      raise base.BadInputError(f'{path}: its study is not in the labeled_studies CSV and its '
                               'folder name says neither _positive nor _negative')
    image = base.read_image(path)
    box = base.Letterbox(image.shape, size)
    return {'image': box.image(image), 'label': label, 'body_part': body_part,
            'study_id': f'{patient}/{body_part}/{study.split("_")[0]}'}
