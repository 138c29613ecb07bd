"""Probes of frozen encoders: weighted kNN (the InstDisc / MoCo monitor) over full splits.

Features are computed on the mesh and stay there; kNN runs as jitted matrix products, one query
batch at a time, so a bank of 10^5 features x 2048 dims needs no host round trip.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp


@jax.jit
def _concat(parts):
  return jnp.concatenate(parts, axis=0)


def extract_features(feature_fn: Callable, state, batches) -> dict[str, jax.Array]:
  """Runs feature_fn(state, images) over eval batches -> {'features','label','valid'} [N, ...]."""
  feats, labels, valid = [], [], []
  for batch in batches:
    feats.append(feature_fn(state, batch['image']))
    labels.append(batch['label'])
    valid.append(batch['valid'])
  if not feats:
    raise ValueError('extract_features: the split yielded no batches')
  return {'features': _concat(feats), 'label': _concat(labels), 'valid': _concat(valid)}


@functools.partial(jax.jit, static_argnames=('num_classes', 'k'))
def knn_predict(bank: jax.Array, bank_labels: jax.Array, bank_valid: jax.Array,
                queries: jax.Array, *, num_classes: int, k: int, temperature: float) -> jax.Array:
  """Weighted kNN class predictions [Q] for queries [Q, D] against a bank [N, D] (cosine)."""
  def unit(x):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

  sim = unit(queries) @ unit(bank).T                                   # [Q, N]
  sim = jnp.where(bank_valid[None, :] > 0, sim, -jnp.inf)
  top_sim, top_idx = jax.lax.top_k(sim, k)                             # [Q, k]
  weights = jnp.where(jnp.isfinite(top_sim), jnp.exp(top_sim / temperature), 0.0)
  votes = jax.nn.one_hot(bank_labels[top_idx], num_classes) * weights[..., None]
  return jnp.argmax(jnp.sum(votes, axis=1), axis=-1)


def knn_probe(feature_fn: Callable, state, evaluator, *, transform, bank_split: str,
              query_split: str, num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
  """Top-1 accuracy of weighted kNN: bank = `bank_split` features, queries = `query_split`."""
  bank = extract_features(feature_fn, state, evaluator.batches(bank_split, transform))
  k = int(min(k, bank['features'].shape[0]))
  correct, total = 0, 0
  for batch in evaluator.batches(query_split, transform):
    pred = knn_predict(bank['features'], bank['label'], bank['valid'],
                       feature_fn(state, batch['image']), num_classes=num_classes, k=k,
                       temperature=temperature)
    correct += _masked_sum(pred == batch['label'], batch['valid'])
    total += _masked_sum(jnp.ones_like(batch['valid']), batch['valid'])
  return float(correct) / max(float(total), 1.0)


@jax.jit
def _masked_sum(values, valid):
  return jnp.sum(values.astype(jnp.int32) * (valid > 0))
