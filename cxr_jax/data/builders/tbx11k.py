"""`tbx11k`: TBX11K tuberculosis X-rays with TB-area bounding boxes (Liu et al., CVPR 2020).

11,200 chest radiographs at 512 x 512: healthy, sick but not TB, and TB (active, latent or
uncertain), the TB images with bounding boxes of TB areas. The official train (6,600) and val
(1,800) lists are the train and validation splits; the official test images (3,302) carry no public
labels and are not used. The source has no patient identifiers: each image is its own patient.

Boxes come from the COCO-format annotations (annotations/json/TBX11K_{train,val}.json), whose
coordinates are in the 512 x 512 images' pixels ([x, y, width, height]); they are scaled if an
image on disk differs from the size its annotation record gives. (The VOC XML annotations are in
the original, larger resolution and are not read.)

Features (besides image / patient_id / source):
  label          ClassLabel ['healthy', 'sick_non_tb', 'tb'] from the image folder
                 (imgs/health, imgs/sick, imgs/tb)
  objects/bbox   TB areas, relative (ymin, xmin, ymax, xmax) in the stored square
  objects/label  ClassLabel ['active_tb', 'latent_tb', 'uncertain_tb'] from the COCO categories
                 ActiveTuberculosis / ObsoletePulmonaryTuberculosis / PulmonaryTuberculosis
  has_boxes      bool: the image has an annotation record (True for all of train and val; a
                 record without boxes means no TB area)
"""

from __future__ import annotations

import json

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import base

LABELS = ('healthy', 'sick_non_tb', 'tb')
FOLDER_LABELS = {'health': 'healthy', 'sick': 'sick_non_tb', 'tb': 'tb'}
BOX_LABELS = ('active_tb', 'latent_tb', 'uncertain_tb')
CATEGORY_LABELS = {'ActiveTuberculosis': 'active_tb',
                   'ObsoletePulmonaryTuberculosis': 'latent_tb',
                   'PulmonaryTuberculosis': 'uncertain_tb'}
# Used only if an annotation file has no 'categories' list (the ids of the official release).
DEFAULT_CATEGORY_IDS = {1: 'ActiveTuberculosis', 2: 'ObsoletePulmonaryTuberculosis',
                        3: 'PulmonaryTuberculosis'}
SPLIT_FILES = {'train': 'TBX11K_train', 'validation': 'TBX11K_val'}

_INSTRUCTIONS = """\
Download TBX11K (links at https://mmcheng.net/tb/ and https://github.com/yun-liu/Tuberculosis;
also on Kaggle) and extract it so that the manual dir holds:

    <manual_dir>/TBX11K/imgs/{health,sick,tb,test}/*.png        (512x512)
    <manual_dir>/TBX11K/lists/TBX11K_train.txt                   (lines like 'tb/tb0003.png')
    <manual_dir>/TBX11K/lists/TBX11K_val.txt
    <manual_dir>/TBX11K/annotations/json/TBX11K_train.json       (COCO format)
    <manual_dir>/TBX11K/annotations/json/TBX11K_val.json

The manual dir may also be the TBX11K folder itself. Without the lists, the images of each JSON
file are used. imgs/test and imgs/extra are not read.

Terms: for non-commercial research; see the homepage for the licence, and cite Liu et al. 2020.
"""


def _norm(name: str) -> str:
  name = name.replace('\\', '/').lstrip('./')
  return name[len('imgs/'):] if name.startswith('imgs/') else name


def _read_json(path: epath.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise base.BadInputError(f'{path}: cannot read annotations ({type(e).__name__}: {e})') from None


def _annotations(coco: dict, path: epath.Path) -> dict[str, dict]:
  """file name (relative to imgs/) -> {'record': image record, 'boxes': [(category, xywh)]}."""
  categories = {c['id']: c['name'] for c in coco.get('categories', [])} or DEFAULT_CATEGORY_IDS
  by_id, out = {}, {}
  for record in coco.get('images', []):
    entry = {'record': record, 'boxes': []}
    by_id[record['id']] = entry
    out[_norm(record['file_name'])] = entry
  for ann in coco.get('annotations', []):
    entry = by_id.get(ann.get('image_id'))
    if entry is None:
      raise base.BadInputError(f'{path}: annotation {ann.get("id")} names image '
                               f'{ann.get("image_id")}, which is not in its images list')
    entry['boxes'].append((categories.get(ann.get('category_id'), str(ann.get('category_id'))),
                           ann.get('bbox')))
  return out


class Tbx11k(base.CxrBuilder):
  """TBX11K: healthy / sick (non-TB) / TB chest X-rays with TB-area boxes."""

  SOURCE = 'tbx11k'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://mmcheng.net/tb/'
  CITATION = """\
@inproceedings{liu2020rethinking,
  title     = {Rethinking Computer-Aided Tuberculosis Diagnosis},
  author    = {Liu, Yun and Wu, Yu-Huan and Ban, Yunfeng and Wang, Huifang and Cheng, Ming-Ming},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition
               (CVPR)},
  year      = {2020},
  doi       = {10.1109/CVPR42600.2020.00272},
}"""

  def _features(self):
    return {
        'label': tfds.features.ClassLabel(names=list(LABELS)),
        'objects': base.objects_feature(BOX_LABELS),
        'has_boxes': tfds.features.Scalar(dtype=np.bool_),
    }

  def _list_examples(self, root):
    root = epath.Path(root)
    folder = next((c for c in (root / 'TBX11K', root) if (c / 'imgs').is_dir()), None)
    if folder is None:
      raise base.BadInputError(f'{root}: no TBX11K/imgs folder; see the layout in '
                               'MANUAL_DOWNLOAD_INSTRUCTIONS')
    annotations: dict[str, dict] = {}
    split_names: dict[str, list[str]] = {}
    for split, stem in SPLIT_FILES.items():
      json_path = folder / 'annotations' / 'json' / f'{stem}.json'
      coco = _annotations(_read_json(json_path), json_path) if json_path.exists() else {}
      annotations.update(coco)
      list_path = folder / 'lists' / f'{stem}.txt'
      if list_path.exists():
        names = [_norm(line.strip()) for line in list_path.read_text().splitlines()
                 if line.strip()]
      elif coco:
        names = sorted(coco)
      else:
        raise base.BadInputError(f'{folder}: neither lists/{stem}.txt nor '
                                 f'annotations/json/{stem}.json exists')
      split_names[split] = names
    # Annotation records are matched by path under imgs/ ('tb/tb0003.png'), else by file name.
    by_file_name = {name.rsplit('/', 1)[-1]: entry for name, entry in annotations.items()}
    splits: dict[str, list[base.Item]] = {}
    for split, names in split_names.items():
      splits[split] = [
          base.Item(key=name, patient_id=epath.Path(name).stem,
                    payload=(folder / 'imgs' / name, name,
                             annotations.get(name, by_file_name.get(name.rsplit('/', 1)[-1]))))
          for name in names]
    return splits

  def _load_example(self, item, size):
    path, name, annotation = item.payload
    label = FOLDER_LABELS.get(name.split('/')[0])
    if label is None:
      raise base.BadInputError(f'{path}: not in imgs/health, imgs/sick or imgs/tb (no label)')
    image = base.read_image(path)
    box = base.Letterbox(image.shape, size)
    objects = base.empty_objects()
    if annotation and annotation['boxes']:
      record = annotation['record']
      h, w = image.shape
      sy = h / float(record.get('height') or h)
      sx = w / float(record.get('width') or w)
      labels, xywh = [], []
      for category, bbox in annotation['boxes']:
        if category not in CATEGORY_LABELS:
          raise base.BadInputError(f'{path}: unknown TB category {category!r} in its annotations')
        if bbox is None or len(bbox) != 4:
          raise base.BadInputError(f'{path}: malformed bbox {bbox!r} in its annotations')
        x, y, bw, bh = (float(v) for v in bbox)
        xywh.append((x * sx, y * sy, bw * sx, bh * sy))
        labels.append(BOX_LABELS.index(CATEGORY_LABELS[category]))
      objects = {'bbox': box.boxes(base.xywh_to_yxyx(xywh)),
                 'label': np.asarray(labels, np.int64)}
    return {'image': box.image(image), 'label': label, 'objects': objects,
            'has_boxes': annotation is not None}
