"""Weighted kNN probe against a direct numpy implementation."""

import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.evaluate import probes


def _numpy_knn(bank, bank_labels, queries, *, num_classes, k, temperature):
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  sim = queries @ bank.T
  preds = []
  for i in range(len(queries)):
    votes = np.zeros(num_classes)
    for j in np.argsort(-sim[i])[:k]:
      votes[bank_labels[j]] += np.exp(sim[i, j] / temperature)
    preds.append(int(np.argmax(votes)))
  return np.array(preds)


@pytest.mark.parametrize('k,temperature', [(1, 0.1), (5, 0.1), (20, 0.5)])
def test_knn_predict_matches_numpy(k, temperature):
  rng = np.random.default_rng(k)
  centres = rng.normal(size=(4, 16))
  bank_labels = rng.integers(0, 4, 60)
  bank = centres[bank_labels] + rng.normal(scale=1.5, size=(60, 16))
  queries = centres[rng.integers(0, 4, 25)] + rng.normal(scale=1.5, size=(25, 16))
  expected = _numpy_knn(bank, bank_labels, queries, num_classes=4, k=k, temperature=temperature)
  got = probes.knn_predict(jnp.asarray(bank, jnp.float32), jnp.asarray(bank_labels),
                           jnp.ones(60, jnp.int32), jnp.asarray(queries, jnp.float32),
                           num_classes=4, k=k, temperature=temperature)
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_knn_predict_ignores_padded_bank_rows():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(10, 8)).astype(np.float32)
  labels = np.arange(10) % 2
  valid = np.ones(10, np.int32)
  valid[:5] = 0  # padding: must never vote
  queries = bank[:5] + 1e-3  # each query's nearest neighbour is a padded row
  got = probes.knn_predict(jnp.asarray(bank), jnp.asarray(labels), jnp.asarray(valid),
                           jnp.asarray(queries), num_classes=2, k=1, temperature=0.1)
  expected = _numpy_knn(bank[5:], labels[5:], queries, num_classes=2, k=1, temperature=0.1)
  np.testing.assert_array_equal(np.asarray(got), expected)
