"""Defaults every config shares (trainer, data, checkpoints, evaluation) and variant parsing.

Config files in configs/ start from `base_config()` and set what their method needs. Their
`get_config(arg)` takes the text after the colon in `--config=configs/moco.py:cpu`: a variant name
such as 'cpu' and/or comma-separated key=value pairs ('cpu,model.depth=18').
"""

from __future__ import annotations

import ast

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = ''
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic_cxr'        # 'builder' or 'builder/config' (TFDS syntax)
  c.data.data_dir = ''                 # '' = TFDS default (TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.manual_dir = ''               # real datasets: the manual download (see data/builders)
  c.data.skip_bad = False              # skip (and count) bad source files instead of stopping
  c.data.flat_cache = True             # read a decoded copy of each split (data/flat_cache.py)
  # Several datasets in one pipeline: tuple of dicts, see cxr_jax/data/mixture.py. () = data.name.
  c.data.sources = ()
  c.data.class_names = ()              # classification label space; () = the first source's
  c.data.multi_label = False
  c.data.box_class_names = ()          # detection label space; () = the first source's
  c.data.max_boxes = 16                # boxes per example after padding
  c.data.num_threads = 8               # grain reader threads per host
  c.data.num_workers = 0               # grain worker processes per host (0 = threads only)
  c.data.prefetch = 8                  # host batches buffered ahead
  c.data.device_prefetch = 2           # global batches placed on devices ahead

  c.global_batch_size = 256
  c.num_epochs = 100
  c.num_train_steps = -1               # > 0 overrides num_epochs
  c.compute_dtype = 'float32'          # activations; parameters are always float32

  c.mesh = (('data', -1),)             # (axis, size) pairs; -1 = remaining devices
  c.num_devices = 0                    # 0 = all devices; N = the first N (tests, debugging)
  c.partition_rules = ()               # ((regex, (axis or None, ...)), ...); default replicated

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'sgd'
  c.optim.base_lr = 0.1
  c.optim.lr_reference_batch = 256
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 0
  c.optim.momentum = 0.9
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 1e-4
  c.optim.weight_decay_exclude = ''    # regex of parameter paths without weight decay
  c.optim.grad_clip_norm = 0.0
  c.optim.lr_multipliers = ()          # ((regex, multiplier), ...); 0 freezes

  c.eval = ml_collections.ConfigDict()
  c.eval.global_batch_size = 256

  c.log_every_steps = 50
  c.eval_every_steps = 1000            # 0 = only... never; evaluation also runs at the end if > 0
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.max_to_keep = 3
  c.checkpoint.async_save = True
  c.compilation_cache_dir = '~/.cache/cxr_jax/xla'  # '' disables JAX's persistent cache

  c.init_from = ml_collections.ConfigDict()
  c.init_from.workdir = ''             # another stage's workdir; '' = start from scratch
  c.init_from.step = -1                # -1 = latest checkpoint there
  # The encoder's weights and its BatchNorm running statistics (evaluation uses the latter).
  c.init_from.include = r'^(params|model_state)/encoder/'
  c.init_from.exclude = ''
  return c


def shrink_for_cpu(c: ml_collections.ConfigDict) -> None:
  """Settings every ':cpu' variant shares: a ResNet-18 at 1/4 width on 64 px inputs, batch 64,
  float32 (bfloat16 is slow on CPUs), and evaluation / logging sized for 2 cores."""
  c.compute_dtype = 'float32'
  c.model.depth = 18
  c.model.width = 16
  c.model.bn_group_size = 32
  c.aug.image_size_px = 64
  c.global_batch_size = 64
  c.data.num_threads = 2
  c.eval.global_batch_size = 250
  c.eval.knn.k = 20
  c.log_every_steps = 10


def sibling_config(this_file: str, name: str, arg: str | None = None
                   ) -> ml_collections.ConfigDict:
  """get_config(arg) of another file in the same configs folder (for configs that extend one;
  loaded by path so configs work from any working directory)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)), name)
  spec = importlib.util.spec_from_file_location(f'_cxr_config_{name[:-3]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def parse_arg(arg: str | None, variants: tuple[str, ...]) -> tuple[str | None, dict]:
  """'cpu,model.depth=18' -> ('cpu', {'model.depth': 18}); unknown variants are an error."""
  variant, overrides = None, {}
  for part in filter(None, (arg or '').split(',')):
    if '=' in part:
      key, value = part.split('=', 1)
      try:
        overrides[key.strip()] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        overrides[key.strip()] = value
    elif part in variants:
      variant = part
    else:
      raise ValueError(f'config variant {part!r} is not one of {", ".join(variants)}')
  return variant, overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f'config has no field {key!r}')
    node[leaf] = value
