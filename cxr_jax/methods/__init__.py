"""Training methods; each is a `cxr_jax.methods.base.Method` subclass named by `config.method`."""

from __future__ import annotations

import importlib

# config.method -> 'module:Class'
METHODS = {
    'moco': 'cxr_jax.methods.moco:MoCo',
    'inpainting': 'cxr_jax.methods.inpainting:Inpainting',
    'multitask': 'cxr_jax.methods.multitask:MultiTask',
}


def get(name: str):
  if name not in METHODS:
    raise ValueError(f'config.method={name!r} is not a known method; known: '
                     f'{", ".join(sorted(METHODS))}')
  module, cls = METHODS[name].split(':')
  return getattr(importlib.import_module(module), cls)
