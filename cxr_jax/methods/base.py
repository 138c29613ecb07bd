"""The method interface every training method implements, and the state it trains.

A method owns its model, losses, per-example host transforms and evaluation; the trainer owns the
loop, sharding, checkpoints and logging. All model application is functional: the NNX module is
split once into a static graph definition and pure-dict parameters / BN statistics
(`nnx.merge(graphdef, params, model_state)` inside the jitted step), as in Flax's functional
training-loop guide, so no NNX object is traced per step and the state is a plain pytree that
Orbax saves and `init_from` addresses by path ('params/encoder/...').
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cxr_jax import optim
from cxr_jax.data import augment
from cxr_jax.evaluate import probes


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: number of optimizer updates applied
  params: Any              # trained parameters (pure nested dict)
  model_state: Any         # BatchNorm running statistics (pure nested dict)
  opt_state: Any           # optax state
  extra: Any               # method-specific arrays: momentum encoder, queue, ... (dict)
  rng: jax.Array           # uint32[2] base key; step keys are fold_in(rng, step)


def compute_dtype(config):
  name = config.get('compute_dtype', 'float32')
  if name not in ('float32', 'bfloat16', 'float16'):
    raise ValueError(f"config.compute_dtype={name!r} is not 'float32', 'bfloat16' or 'float16'")
  return jnp.dtype(name)


class Method:
  """Base class. Subclasses implement build_model, train_step and the transforms."""

  def __init__(self, config, num_train_steps: int, targets=None):
    """`targets`: the data's label spaces (cxr_jax.data.mixture.Targets), for methods with
    heads sized by them."""
    self.config = config
    self.num_train_steps = num_train_steps
    self.targets = targets
    abstract_model = nnx.eval_shape(lambda: self.build_model(nnx.Rngs(0)))
    self.graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)
    self.tx = optim.make_optimizer(config, nnx.to_pure_dict(abstract_params), num_train_steps)
    self.lr_schedule = optim.learning_rate_schedule(config, num_train_steps)
    self.jit_features = jax.jit(self.features)

  # ----- to implement -------------------------------------------------------------------------
  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    raise NotImplementedError

  def init_extra(self, params, model_state, rng) -> dict:
    """Method-specific state (momentum encoder, queue, ...). Default: none."""
    return {}

  def train_step(self, state: TrainState, batch: dict, rng: jax.Array
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    raise NotImplementedError

  def train_transform(self) -> Callable[[dict, np.random.Generator], dict]:
    """Host-side per-example training transform (grain random_map)."""
    raise NotImplementedError

  def eval_transform(self) -> Callable[[dict, np.random.Generator], dict]:
    """Host-side per-example evaluation transform; its rng is seeded by the example index only,
    so evaluation inputs (e.g. inpainting holes) are the same at every evaluation."""
    raise NotImplementedError

  def evaluate(self, state: TrainState, evaluator) -> dict[str, float]:
    """Metrics over the evaluation split(s); `evaluator` gives global eval batches."""
    return {}

  # ----- shared machinery -------------------------------------------------------------------------
  def init(self, rng: jax.Array) -> TrainState:
    init_rng, extra_rng, base_rng = jax.random.split(rng, 3)
    model = self.build_model(nnx.Rngs(params=init_rng))
    _, params, model_state = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, model_state = nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=self.tx.init(params),
                      extra=self.init_extra(params, model_state, extra_rng), rng=base_rng)

  def apply(self, params, model_state, *args, train: bool, method: str | None = None, **kwargs):
    """Runs the model functionally; returns (output, new_model_state)."""
    model = nnx.merge(self.graphdef, params, model_state)
    fn = getattr(model, method) if method else model
    out = fn(*args, train=train, **kwargs)
    new_state = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)) if train else model_state
    return out, new_state

  def photometric_config(self) -> augment.PhotometricConfig:
    aug = self.config.aug
    return augment.PhotometricConfig(
        brightness=aug.brightness, contrast=aug.contrast, gamma=tuple(aug.gamma),
        blur_prob=aug.blur_prob, blur_sigma=tuple(aug.blur_sigma), hflip_prob=aug.hflip_prob,
        jitter_prob=aug.jitter_prob)

  def model_input(self, images_f01: jax.Array) -> jax.Array:
    return augment.model_input(images_f01, self.config.model.input_norm)

  def features(self, state: TrainState, images: jax.Array) -> jax.Array:
    """Frozen-encoder features [B, C] of uint8 images [B, H, W, 1] (BN in inference mode).

    The model must define `features(x, *, train)` (pooled encoder output).
    """
    x = self.model_input(images.astype(jnp.float32) / 255.0)
    feats, _ = self.apply(state.params, state.model_state, x, train=False, method='features')
    return feats

  def knn_accuracy(self, state: TrainState, evaluator) -> float:
    """Weighted kNN of validation features against the training split (config.eval.knn)."""
    knn = self.config.eval.knn
    return probes.knn_probe(
        self.jit_features, state, evaluator, transform=self.eval_transform(),
        bank_split=self.config.data.train_split, query_split=self.config.data.eval_split,
        num_classes=evaluator.num_classes, k=knn.k, temperature=knn.temperature)

  def apply_gradients(self, state: TrainState, grads, **changes) -> tuple[TrainState, dict]:
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'grad_norm': optim.global_norm(grads),
               'param_norm': optim.global_norm(params),
               'learning_rate': self.lr_schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         **changes), metrics
