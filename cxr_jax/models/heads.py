"""Heads that sit on encoder features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class ProjectionMLP(nnx.Module):
  """MoCo v2 projection head: Linear -> ReLU -> Linear (no BN), [B, C] -> [B, out_dim] float32."""

  def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(in_dim, hidden_dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.fc2 = nnx.Linear(hidden_dim, out_dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.relu(self.fc1(x))).astype(jnp.float32)
