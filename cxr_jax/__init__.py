"""cxr_jax: self-supervised and multi-task learning on chest X-rays in JAX/Flax."""
