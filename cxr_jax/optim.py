"""optax optimizers and learning-rate schedules from `config.optim`.

config.optim fields:
  name: 'sgd' | 'adamw' | 'lars'
  base_lr: learning rate for a global batch of `lr_reference_batch` (scaled linearly with the batch,
    the MoCo / Goyal et al. rule: lr = base_lr * global_batch / lr_reference_batch)
  lr_reference_batch: 256
  schedule: 'cosine' | 'constant';  warmup_steps (linear warmup from 0)
  momentum (sgd, lars), b1/b2 (adamw), weight_decay
  weight_decay_exclude: regex over parameter paths excluded from weight decay ('' = decay all, as
    in the MoCo reference code which decays every parameter)
  grad_clip_norm: 0 = off
  lr_multipliers: tuple of (regex, multiplier) pairs, e.g. (('^encoder/', 0.1),) for a lower encoder
    learning rate; multiplier 0 freezes the matched parameters (no update, no weight decay).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cxr_jax.sharding import path_str


def learning_rate_schedule(config, num_train_steps: int) -> optax.Schedule:
  opt = config.optim
  peak = opt.base_lr * config.global_batch_size / opt.lr_reference_batch
  warmup = min(int(opt.warmup_steps), max(num_train_steps - 1, 0))
  if opt.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(num_train_steps, warmup + 1), end_value=0.0)
  if opt.schedule == 'constant':
    if not warmup:
      return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  raise ValueError(f"config.optim.schedule={opt.schedule!r} is not 'cosine' or 'constant'")


def _path_mask(params: Any, pattern: str, match_value: bool) -> Any:
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(
      lambda p, _: bool(regex.search(path_str(p))) == match_value, params)


def make_optimizer(config, params: Any, num_train_steps: int) -> optax.GradientTransformation:
  """The optimizer for `params` (a pytree of arrays or ShapeDtypeStructs)."""
  opt = config.optim
  schedule = learning_rate_schedule(config, num_train_steps)
  decay_mask = (_path_mask(params, opt.weight_decay_exclude, False)
                if opt.weight_decay_exclude else None)
  if opt.name == 'sgd':
    tx = optax.chain(
        optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=opt.momentum, nesterov=False))
  elif opt.name == 'adamw':
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                     mask=decay_mask)
  elif opt.name == 'lars':
    tx = optax.lars(schedule, weight_decay=opt.weight_decay, momentum=opt.momentum,
                    weight_decay_mask=decay_mask if decay_mask is not None else True,
                    trust_ratio_mask=decay_mask if decay_mask is not None else True)
  else:
    raise ValueError(f"config.optim.name={opt.name!r} is not one of 'sgd', 'adamw', 'lars'")
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)

  multipliers = tuple(opt.get('lr_multipliers', ()) or ())
  if multipliers:
    tx = _with_lr_multipliers(tx, params, multipliers)
  return tx


def _with_lr_multipliers(tx, params, multipliers) -> optax.GradientTransformation:
  """Scales the updates of parameters matching each regex; 0 freezes them (optax.set_to_zero)."""
  compiled = [(re.compile(p), float(m)) for p, m in multipliers]

  def label(path, _):
    name = path_str(path)
    for i, (regex, _m) in enumerate(compiled):
      if regex.search(name):
        return f'group{i}'
    return 'default'

  labels = jax.tree_util.tree_map_with_path(label, params)
  transforms = {'default': tx}
  for i, (_, m) in enumerate(compiled):
    transforms[f'group{i}'] = (optax.set_to_zero() if m == 0.0
                               else optax.chain(tx, optax.scale(m)))
  return optax.multi_transform(transforms, labels)


def global_norm(tree: Any) -> jax.Array:
  return optax.tree.norm(jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), tree))
