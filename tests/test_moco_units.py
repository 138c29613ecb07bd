"""MoCo v2 building blocks against direct numpy versions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.methods import moco


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_info_nce_matches_numpy():
  rng = np.random.default_rng(0)
  q, k, queue = (_unit(rng.normal(size=s)).astype(np.float32) for s in ((8, 16), (8, 16), (32, 16)))
  tau = 0.2
  loss, stats = moco.info_nce(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), tau)
  # Direct numpy: cross-entropy with the positive at index 0.
  expected = []
  for i in range(8):
    logits = np.concatenate([[q[i] @ k[i]], queue @ q[i]]) / tau
    logits = logits - logits.max()
    expected.append(-(logits[0] - np.log(np.exp(logits).sum())))
  np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)
  np.testing.assert_allclose(float(stats['pos_logit_mean']), np.mean(np.sum(q * k, 1)), rtol=1e-5)
  np.testing.assert_allclose(float(stats['neg_logit_mean']), np.mean(q @ queue.T), rtol=1e-4,
                             atol=1e-6)


def test_info_nce_gradient_matches_numpy():
  rng = np.random.default_rng(1)
  q, k, queue = (_unit(rng.normal(size=s)).astype(np.float32) for s in ((4, 8), (4, 8), (16, 8)))
  tau = 0.5
  grad = jax.grad(lambda q_: moco.info_nce(q_, jnp.asarray(k), jnp.asarray(queue), tau)[0])(
      jnp.asarray(q))
  # d/dq of mean CE: (softmax(logits) - onehot(0)) @ [k; queue] / tau / B
  keys = [np.concatenate([k[i:i + 1], queue]) for i in range(4)]
  expected = []
  for i in range(4):
    logits = keys[i] @ q[i] / tau
    p = np.exp(logits - logits.max())
    p /= p.sum()
    p[0] -= 1
    expected.append(p @ keys[i] / tau / 4)
  np.testing.assert_allclose(np.asarray(grad), np.stack(expected), rtol=1e-4, atol=1e-6)


def test_enqueue_is_a_fifo_ring_buffer():
  size, dim, batch = 12, 3, 4
  queue = np.arange(size * dim, dtype=np.float32).reshape(size, dim)
  ref = queue.copy()
  q, ptr = jnp.asarray(queue), jnp.asarray(0, jnp.int32)
  ref_ptr = 0
  for step in range(5):  # wraps around the ring
    keys = np.full((batch, dim), 100 + step, np.float32)
    q, ptr = moco.enqueue(q, ptr, jnp.asarray(keys))
    ref[ref_ptr:ref_ptr + batch] = keys
    ref_ptr = (ref_ptr + batch) % size
    np.testing.assert_array_equal(np.asarray(q), ref)
    assert int(ptr) == ref_ptr
  # After 5 pushes of 4 into 12 slots, the oldest surviving keys are from step 2.
  assert sorted(set(np.asarray(q)[:, 0].tolist())) == [102.0, 103.0, 104.0]


def test_momentum_update_matches_numpy():
  rng = np.random.default_rng(2)
  target = {'a': rng.normal(size=(3, 4)), 'b': {'c': rng.normal(size=(5,))}}
  online = {'a': rng.normal(size=(3, 4)), 'b': {'c': rng.normal(size=(5,))}}
  out = moco.momentum_update(jax.tree_util.tree_map(jnp.asarray, target),
                             jax.tree_util.tree_map(jnp.asarray, online), jnp.float32(0.99))
  np.testing.assert_allclose(np.asarray(out['a']), 0.99 * target['a'] + 0.01 * online['a'],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out['b']['c']),
                             0.99 * target['b']['c'] + 0.01 * online['b']['c'], rtol=1e-6)


@pytest.mark.parametrize('cosine', [False, True])
def test_momentum_schedule(cosine):
  m = [float(moco.momentum_at(jnp.asarray(s), 100, 0.99, cosine)) for s in (0, 50, 100)]
  if cosine:
    np.testing.assert_allclose(m, [0.99, 0.995, 1.0], rtol=1e-6)
  else:
    assert m == pytest.approx([0.99] * 3)
