"""MoCo v2 (He et al. 2020; Chen et al. 2020) for radiographs, as used by MoCo-CXR and MUSCLE.

Query encoder f_q = ResNet + 2-layer MLP projector; key encoder f_k is its exponential moving
average (momentum m, optionally ramped to 1 by a cosine). Keys of the current global batch are
pushed into a FIFO queue of K negatives; the loss is InfoNCE over [positive | queue] at temperature
tau. Shuffle-BN: keys are computed on a randomly permuted batch whose BN statistics are taken over
fixed-size groups (`config.model.bn_group_size`), then un-permuted, so a query and its key never
share BN statistics, and the result does not depend on the number of devices.

Host side (grain): two random resized crops per image (uint8) and per-view photometric parameters;
device side: brightness/contrast/gamma/blur/flip in the jitted step.

The pure functions below (`info_nce`, `enqueue`, `momentum_update`, `momentum_at`) are what the
unit tests compare with numpy.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cxr_jax import models
from cxr_jax.data import augment
from cxr_jax.methods import base
from cxr_jax.models.heads import ProjectionMLP


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis, keepdims=True), eps))


def info_nce(q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """InfoNCE loss of unit queries q [B, D] against positives k [B, D] and negatives queue [K, D].

  Returns the mean loss and statistics of the positive and negative logits (before 1/tau).
  """
  l_pos = jnp.sum(q * k, axis=-1, keepdims=True)                  # [B, 1]
  l_neg = q @ queue.T                                              # [B, K]
  logits = jnp.concatenate([l_pos, l_neg], axis=1) / temperature   # [B, 1 + K]
  loss = -jax.nn.log_softmax(logits, axis=1)[:, 0]
  stats = {
      'pos_logit_mean': jnp.mean(l_pos),
      'neg_logit_mean': jnp.mean(l_neg),
      'neg_logit_std': jnp.std(l_neg),
      'instance_acc': jnp.mean(jnp.argmax(logits, axis=1) == 0),
  }
  return jnp.mean(loss), stats


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Writes keys [B, D] over the oldest B entries of the ring buffer queue [K, D] (K % B == 0)."""
  size, batch = queue.shape[0], keys.shape[0]
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, 0))
  return queue, (ptr + batch) % size


def momentum_update(target, online, m: jax.Array):
  """target <- m * target + (1 - m) * online, leaf by leaf."""
  return jax.tree_util.tree_map(lambda t, o: m * t + (1.0 - m) * o, target, online)


def momentum_at(step: jax.Array, total_steps: int, base_momentum: float, cosine: bool) -> jax.Array:
  """Momentum coefficient at `step`: constant, or BYOL's cosine ramp from base to 1."""
  if not cosine:
    return jnp.asarray(base_momentum, jnp.float32)
  progress = jnp.minimum(step / max(total_steps, 1), 1.0)
  return 1.0 - (1.0 - base_momentum) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


class MoCoNet(nnx.Module):
  """Encoder + projection head. `__call__` -> unit embeddings [B, dim]; `features` -> pooled."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    dtype = base.compute_dtype(config)
    self.encoder = models.build_encoder(config.model, dtype=dtype, rngs=rngs)
    self.projector = ProjectionMLP(self.encoder.num_features, config.moco.hidden_dim,
                                   config.moco.dim, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train: bool):
    return l2_normalize(self.projector(self.encoder(x, train=train)['pooled']))

  def features(self, x, *, train: bool):
    return self.encoder(x, train=train)['pooled']


class MoCo(base.Method):
  """MoCo v2 pre-training. config.moco: dim, hidden_dim, queue_size, temperature, momentum,
  momentum_cosine, shuffle_bn; config.aug: image_size_px, crop_scale, photometric fields."""

  def __init__(self, config, num_train_steps: int, targets=None):
    queue_size, batch = config.moco.queue_size, config.global_batch_size
    if queue_size % batch:
      raise ValueError(f'config.moco.queue_size={queue_size} must be a multiple of '
                       f'config.global_batch_size={batch}')
    super().__init__(config, num_train_steps, targets)

  def build_model(self, rngs):
    return MoCoNet(self.config, rngs=rngs)

  def init_extra(self, params, model_state, rng):
    queue = l2_normalize(jax.random.normal(rng, (self.config.moco.queue_size,
                                                 self.config.moco.dim), jnp.float32))
    return {'key_params': params, 'key_model_state': model_state, 'queue': queue,
            'queue_ptr': jnp.zeros((), jnp.int32)}

  # ----- host transforms ------------------------------------------------------------------------
  def train_transform(self):
    return functools.partial(_two_view_transform, out_size_px=self.config.aug.image_size_px,
                             crop_scale=tuple(self.config.aug.crop_scale),
                             photometric=self.photometric_config())

  def eval_transform(self):
    return functools.partial(_eval_transform, out_size_px=self.config.aug.image_size_px)

  # ----- device step ------------------------------------------------------------------------------
  def _views(self, batch):
    views, params = batch['views'], batch['view_params']          # [B,2,S,S,1] u8, [B,2,P]
    max_sigma = float(self.config.aug.blur_sigma[1])
    x = [self.model_input(augment.apply_photometric(views[:, i], params[:, i], max_sigma))
         for i in (0, 1)]
    return x[0], x[1]

  def train_step(self, state, batch, rng):
    cfg = self.config.moco
    x_q, x_k = self._views(batch)
    m = momentum_at(state.step, self.num_train_steps, cfg.momentum, cfg.momentum_cosine)
    # As in the reference implementation, the key encoder moves before it encodes the keys.
    key_params = momentum_update(state.extra['key_params'], state.params, m)

    batch_size = x_k.shape[0]
    perm = (jax.random.permutation(rng, batch_size) if cfg.shuffle_bn
            else jnp.arange(batch_size))
    k_shuffled, key_model_state = self.apply(key_params, state.extra['key_model_state'],
                                             x_k[perm], train=True)
    k = jax.lax.stop_gradient(jnp.zeros_like(k_shuffled).at[perm].set(k_shuffled))
    queue = state.extra['queue']

    def loss_fn(params):
      q, model_state = self.apply(params, state.model_state, x_q, train=True)
      loss, stats = info_nce(q, k, queue, cfg.temperature)
      return loss, (model_state, stats)

    (loss, (model_state, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_queue, new_ptr = enqueue(queue, state.extra['queue_ptr'], k)
    extra = {'key_params': key_params, 'key_model_state': key_model_state,
             'queue': new_queue, 'queue_ptr': new_ptr}
    state, opt_metrics = self.apply_gradients(state, grads, model_state=model_state, extra=extra)
    return state, {'loss': loss, 'momentum': m, **stats, **opt_metrics}

  def evaluate(self, state, evaluator):
    return {'knn_accuracy': self.knn_accuracy(state, evaluator)}


def _two_view_transform(example, rng, *, out_size_px, crop_scale, photometric):
  out = augment.two_views(example['image'], rng, out_size_px, crop_scale, photometric)
  out['label'] = np.int32(example['label'])
  return out


def _eval_transform(example, rng, *, out_size_px):
  del rng  # deterministic
  return {'image': augment.center_resize(example['image'], out_size_px),
          'label': np.int32(example['label'])}
