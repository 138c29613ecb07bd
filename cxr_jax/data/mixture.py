"""Several datasets in one grain pipeline, with one example structure and `has_*` target flags.

A training run reads `config.data.sources`: a tuple of dicts, one per dataset, e.g.

    config.data.sources = (
        dict(name='nih_chestxray14', weight=2.0, provides=('label',)),
        dict(name='montgomery', weight=1.0, provides=('mask',), preprocess=('clahe',)),
        dict(name='rsna_pneumonia', weight=1.0, provides=('boxes',), balance='positive',
             positive_fraction=0.5),
    )

(empty: the single dataset `config.data.name`). Every example of every source is *standardised*
to the same structure, so a batch can mix datasets whose label sets are disjoint:

  image        uint8 [S, S, 1]          after the source's preprocessing hooks
  label        int32                    index into config.data.class_names (0 when absent)
  labels       float32 [C]              multi-hot over config.data.class_names (multi-label)
  mask         uint8 {0,1} [S, S, 1]    the source's `mask_key` feature (zeros when absent)
  boxes        float32 [M, 4]           relative (ymin, xmin, ymax, xmax), zero rows past num_boxes
  box_labels   int32 [M]                index into config.data.box_class_names
  num_boxes    int32
  has_label, has_mask, has_boxes   bool: the target exists for this example. A target exists when
               the source is configured to provide it, the dataset has it, and (where the dataset
               flags it per example, e.g. Shenzhen's partial masks) the example has it.
  source_id    int32                    position of the source in config.data.sources
  body_part    int32                    index into BODY_PARTS (MUSCLE pre-trains across them)

Class names are matched by name: a source's class 'Pneumonia' maps to the target class
'Pneumonia'; `label_map` renames ((source_name, target_name), ...). A source class with no target
class is an error at start-up, naming the source and class, unless it is mapped to '' (which
marks the example's label absent). Sampling: sources are interleaved in proportion to their
weights (grain's deterministic mixture, so positions are checkpointable), each shuffled and
repeated on its own. `balance='label'` draws each class equally often; `balance='positive'`
draws examples with boxes/mask content with probability `positive_fraction` (MultiCheXNet).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from absl import logging
import cv2
import grain
import numpy as np

from cxr_jax.data import datasets

TARGETS = ('label', 'mask', 'boxes')
BODY_PARTS = ('chest', 'elbow', 'finger', 'forearm', 'hand', 'humerus', 'shoulder', 'wrist')


def _equalize(image: np.ndarray) -> np.ndarray:
  return cv2.equalizeHist(image[..., 0])[..., None]


def _clahe(image: np.ndarray) -> np.ndarray:
  return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(image[..., 0])[..., None]


# name -> uint8 [S, S, 1] -> uint8 [S, S, 1]; extend with `register_preprocess`.
PREPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    'equalize': _equalize,
    'clahe': _clahe,
    'invert': lambda image: 255 - image,
}


def register_preprocess(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
  PREPROCESS[name] = fn


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One dataset of a mixture (the fields of a `config.data.sources` entry)."""

  name: str
  weight: float = 1.0
  split: str = 'train'
  eval_split: str = 'validation'
  provides: tuple[str, ...] = TARGETS
  mask_key: str = 'lung_mask'
  label_map: tuple[tuple[str, str], ...] = ()
  preprocess: tuple[str, ...] = ()
  body_part: str = ''               # '' = the dataset's own `body_part` feature, else 'chest'
  balance: str = ''                 # '' | 'label' | 'positive'
  positive_fraction: float = 0.5
  fraction: float = 1.0             # train on this fraction of the split (label-efficiency runs)

  def __post_init__(self):
    where = f'data source {self.name!r}'
    if not set(self.provides) <= set(TARGETS):
      raise ValueError(f'{where}: provides={self.provides} must be a subset of {TARGETS}')
    for hook in self.preprocess:
      if hook not in PREPROCESS:
        raise ValueError(f'{where}: unknown preprocess {hook!r}; known: {", ".join(PREPROCESS)}')
    if self.body_part and self.body_part not in BODY_PARTS:
      raise ValueError(f'{where}: body_part={self.body_part!r} is not one of {BODY_PARTS}')
    if self.balance not in ('', 'label', 'positive'):
      raise ValueError(f'{where}: balance={self.balance!r} must be "", "label" or "positive"')
    if not self.weight > 0:
      raise ValueError(f'{where}: weight must be > 0, got {self.weight}')
    if not 0 < self.fraction <= 1:
      raise ValueError(f'{where}: fraction must be in (0, 1], got {self.fraction}')


def source_specs(config) -> list[SourceSpec]:
  """The configured sources; the single `config.data.name` when `config.data.sources` is empty."""
  data = config.data
  entries = data.get('sources') or ()
  if not entries:
    return [SourceSpec(name=data.name, split=data.train_split, eval_split=data.eval_split)]
  specs = []
  for entry in entries:
    if isinstance(entry, str) or not hasattr(entry, 'keys'):
      raise ValueError(f'config.data.sources entries must be dicts, got {entry!r} (on the '
                       "command line: --config.data.sources=\"({'name': 'montgomery'},)\")")
    entry = dict(entry)
    unknown = set(entry) - {f.name for f in dataclasses.fields(SourceSpec)}
    if unknown:
      raise ValueError(f'config.data.sources entry {entry.get("name")!r} has unknown keys '
                       f'{sorted(unknown)}')
    for key in ('provides', 'preprocess'):  # a single name or a sequence of names
      if key in entry:
        entry[key] = (entry[key],) if isinstance(entry[key], str) else tuple(entry[key])
    if 'label_map' in entry:
      entry['label_map'] = tuple(tuple(p) for p in dict(entry['label_map']).items())
    specs.append(SourceSpec(**entry))
  return specs


@dataclasses.dataclass(frozen=True)
class Targets:
  """The label spaces examples are mapped into (from the config, else the first source)."""

  class_names: tuple[str, ...]
  multi_label: bool
  box_class_names: tuple[str, ...]
  max_boxes: int


def _class_names(feature) -> tuple[str, ...] | None:
  names = getattr(feature, 'names', None)
  return tuple(names) if names is not None else None


def targets_from(config, infos: Sequence[Any]) -> Targets:
  """Target label spaces: config.data.class_names / box_class_names, or the first source's."""
  data = config.data
  class_names = tuple(data.get('class_names') or ())
  multi_label = bool(data.get('multi_label', False))
  box_class_names = tuple(data.get('box_class_names') or ())
  if not class_names:
    for info in infos:
      feats = info.features
      if 'label' in feats:
        class_names = _class_names(feats['label'])
        break
      if 'labels' in feats and info.metadata and info.metadata.get('class_names'):
        class_names, multi_label = tuple(info.metadata['class_names']), True
        break
  if not box_class_names:
    for info in infos:
      if 'objects' in info.features:
        box_class_names = _class_names(info.features['objects']['label'])
        break
  return Targets(class_names=class_names or (), multi_label=multi_label,
                 box_class_names=box_class_names or (), max_boxes=int(data.get('max_boxes', 16)))


def _index_map(spec: SourceSpec, source_names: Sequence[str] | None,
               target_names: Sequence[str], what: str) -> np.ndarray | None:
  """Source class index -> target index (-1 = absent on purpose); None if the source has none."""
  if source_names is None:
    return None
  renames = dict(spec.label_map)
  index = {n: i for i, n in enumerate(target_names)}
  out = np.full((len(source_names),), -1, np.int64)
  for i, name in enumerate(source_names):
    target = renames.get(name, name)
    if target == '':
      continue
    if target not in index:
      raise ValueError(f'data source {spec.name!r}: {what} {name!r} has no target class among '
                       f'{list(target_names)}; add it or map it with label_map')
    out[i] = index[target]
  return out


def _bool(example, key, default=True) -> bool:
  value = example.get(key, default)
  return bool(np.asarray(value).reshape(()))


class Standardizer:
  """Maps one source's examples to the common structure (see the module docstring)."""

  def __init__(self, spec: SourceSpec, info, targets: Targets, source_id: int):
    self.spec, self.targets, self.source_id = spec, targets, source_id
    feats = info.features
    provides = set(spec.provides)
    self.label_map = self.multi_map = None
    if 'label' in provides and 'label' in feats:
      self.label_map = _index_map(spec, _class_names(feats['label']), targets.class_names, 'class')
    if 'label' in provides and 'labels' in feats:
      names = (info.metadata or {}).get('class_names')
      if names is None:
        raise ValueError(f'data source {spec.name!r}: multi-label dataset without '
                         'metadata["class_names"]')
      self.multi_map = _index_map(spec, names, targets.class_names, 'class')
    self.has_mask = 'mask' in provides and spec.mask_key in feats
    self.box_map = None
    if 'boxes' in provides and 'objects' in feats:
      self.box_map = _index_map(spec, _class_names(feats['objects']['label']),
                                targets.box_class_names, 'box class')
    self.dataset_body_part = 'body_part' in feats and not spec.body_part
    self.body_part_names = _class_names(feats['body_part']) if self.dataset_body_part else None
    self.body_part = BODY_PARTS.index(spec.body_part or 'chest')
    self._warned_boxes = False

  def __call__(self, example: dict, preprocess: bool = True) -> dict:
    """The standardised example; `preprocess=False` skips the image hooks (for callers that
    only read the targets)."""
    t = self.targets
    image = np.asarray(example['image'], np.uint8)
    for hook in self.spec.preprocess if preprocess else ():
      image = PREPROCESS[hook](image)
    num_classes = len(t.class_names)
    label, labels, has_label = 0, np.zeros((num_classes,), np.float32), False
    if self.label_map is not None:
      mapped = int(self.label_map[int(example['label'])])
      has_label = mapped >= 0 and _bool(example, 'has_label')
      label = max(mapped, 0)
      if has_label:
        labels[label] = 1.0
    elif self.multi_map is not None:
      src = np.asarray(example['labels']).astype(bool)
      keep = self.multi_map >= 0
      labels[self.multi_map[keep & src]] = 1.0
      has_label = _bool(example, 'has_label')
    if self.has_mask and _bool(example, 'has_mask'):
      mask, has_mask = np.asarray(example[self.spec.mask_key], np.uint8), True
    else:
      mask, has_mask = np.zeros_like(image), False
    boxes = np.zeros((t.max_boxes, 4), np.float32)
    box_labels = np.zeros((t.max_boxes,), np.int32)
    num_boxes, has_boxes = 0, False
    if self.box_map is not None and _bool(example, 'has_boxes'):
      has_boxes = True
      src_boxes = np.asarray(example['objects']['bbox'], np.float32).reshape(-1, 4)
      src_labels = self.box_map[np.asarray(example['objects']['label'], np.int64)]
      keep = src_labels >= 0
      src_boxes, src_labels = src_boxes[keep], src_labels[keep]
      if len(src_boxes) > t.max_boxes and not self._warned_boxes:
        self._warned_boxes = True
        logging.warning('data source %r: an example has %d boxes, more than max_boxes=%d; '
                        'extra boxes are not used (raise config.data.max_boxes)',
                        self.spec.name, len(src_boxes), t.max_boxes)
      num_boxes = min(len(src_boxes), t.max_boxes)
      boxes[:num_boxes] = src_boxes[:num_boxes]
      box_labels[:num_boxes] = src_labels[:num_boxes]
    body_part = self.body_part
    if self.dataset_body_part:
      body_part = BODY_PARTS.index(self.body_part_names[int(example['body_part'])])
    return {
        'image': image, 'label': np.int32(label), 'labels': labels, 'mask': mask,
        'boxes': boxes, 'box_labels': box_labels, 'num_boxes': np.int32(num_boxes),
        'has_label': np.bool_(has_label), 'has_mask': np.bool_(has_mask),
        'has_boxes': np.bool_(has_boxes), 'source_id': np.int32(self.source_id),
        'body_part': np.int32(body_part),
    }


def is_positive(example: dict) -> bool:
  """A standardised example with a finding to localise (boxes or mask content)."""
  return bool(example['num_boxes'] > 0 or example['mask'].any())


class Mixture:
  """The configured sources, standardised: `train_dataset` mixes their training splits and
  `split_dataset` reads any split of one source (evaluation)."""

  def __init__(self, config):
    self.config = config
    self.specs = source_specs(config)
    self._sources: dict[tuple[int, str], Any] = {}
    self.infos = [self._load(i, spec.split)[1] for i, spec in enumerate(self.specs)]
    self.targets = targets_from(config, self.infos)
    self.standardizers = [Standardizer(spec, info, self.targets, i)
                          for i, (spec, info) in enumerate(zip(self.specs, self.infos))]

  def _load(self, index: int, split: str):
    if (index, split) not in self._sources:
      data = self.config.data
      self._sources[index, split] = datasets.load_source(
          self.specs[index].name, split, data.data_dir,
          manual_dir=data.get('manual_dir') or None, skip_bad=bool(data.get('skip_bad', False)),
          flat_cache=bool(data.get('flat_cache', True)))
    return self._sources[index, split]

  def num_train_examples(self) -> int:
    total = 0
    for i, spec in enumerate(self.specs):
      subset = self.train_indices(i)
      total += len(self._load(i, spec.split)[0]) if subset is None else len(subset)
    return total

  def split_dataset(self, index: int, split: str | None = None,
                    indices: np.ndarray | None = None) -> grain.MapDataset:
    """Split `split` (default: the source's training split) of source `index`, standardised,
    in stored order; only the examples at `indices` if given."""
    source = self._load(index, split or self.specs[index].split)[0]
    if indices is not None:
      source = _Subset(source, indices)
    return grain.MapDataset.source(source).map(self.standardizers[index])

  def train_dataset(self, seed: int) -> grain.MapDataset:
    """All sources shuffled (per epoch), repeated and interleaved by weight: infinite."""
    parts, weights = [], []
    for i, spec in enumerate(self.specs):
      for group, weight in self._groups(i):
        parts.append(group.shuffle(seed=seed + 7919 * len(parts)).repeat())
        weights.append(spec.weight * weight)
    if len(parts) == 1:
      return parts[0]
    return grain.MapDataset.mix(parts, weights)

  def train_indices(self, index: int) -> np.ndarray | None:
    """The training examples of source `index` in use: all (None), or `fraction` of them.

    The subset is a fixed function of the source name and its size, not of the run's seed, so
    runs that compare initialisations train on the same labelled examples.
    """
    spec = self.specs[index]
    if spec.fraction >= 1:
      return None
    n = len(self._load(index, spec.split)[0])
    seed = int.from_bytes(spec.name.encode()[:8].ljust(8, b'\0'), 'little')
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:max(1, int(round(spec.fraction * n)))])

  def _groups(self, index: int) -> list[tuple[grain.MapDataset, float]]:
    spec = self.specs[index]
    subset = self.train_indices(index)
    if not spec.balance:
      return [(self.split_dataset(index, indices=subset), 1.0)]
    # One pass over the split reading targets only (no pre-processing hooks).
    source = self._load(index, spec.split)[0]
    positions = np.arange(len(source)) if subset is None else subset
    standardize = self.standardizers[index]
    keys = np.array([self._balance_key(spec, standardize(source[int(i)], preprocess=False))
                     for i in positions])
    values = sorted(set(keys.tolist()))
    if spec.balance == 'positive':
      if len(values) < 2:
        kind = 'positive' if values[0] else 'negative'
        raise ValueError(f'data source {spec.name!r}: balance="positive" needs positive and '
                         f'negative examples; all {len(keys)} are {kind}')
      fractions = {0: 1.0 - spec.positive_fraction, 1: spec.positive_fraction}
    else:
      fractions = {v: 1.0 / len(values) for v in values}
    logging.info('data source %r balanced by %s: %s', spec.name, spec.balance,
                 {v: int(np.sum(keys == v)) for v in values})
    return [(self.split_dataset(index, indices=positions[keys == v]), fractions[v])
            for v in values]

  @staticmethod
  def _balance_key(spec: SourceSpec, example: dict) -> int:
    return int(is_positive(example)) if spec.balance == 'positive' else int(example['label'])


class _Subset:
  """The examples of a random-access source at `indices` (a random-access source itself)."""

  def __init__(self, source, indices: np.ndarray):
    self._source, self._indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i):
    return self._source[int(self._indices[i])]
