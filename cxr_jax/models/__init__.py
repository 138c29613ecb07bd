"""Model zoo: encoders (feature pyramids) and heads."""

from __future__ import annotations

from flax import nnx


def build_encoder(model_config, *, dtype, rngs: nnx.Rngs) -> nnx.Module:
  """The encoder named by config.model.name; it returns a dict of features ('pooled', stages)."""
  name = model_config.get('name', 'resnet')  # configs without a name predate the DenseNet
  if name == 'resnet':
    from cxr_jax.models.resnet import ResNet  # pylint: disable=g-import-not-at-top
    return ResNet(model_config.depth, width=model_config.width,
                  bn_group_size=model_config.bn_group_size or None, dtype=dtype, rngs=rngs)
  if name == 'densenet':
    # depth 121/169/201; width = stem channels (64 = the paper model, growth rate width // 2);
    # an optional block_layers (4 ints) overrides depth (tiny test models).
    from cxr_jax.models.densenet import DenseNet  # pylint: disable=g-import-not-at-top
    return DenseNet(model_config.depth, width=model_config.width,
                    bn_group_size=model_config.bn_group_size or None,
                    block_layers=tuple(model_config.get('block_layers', ())) or None,
                    dtype=dtype, rngs=rngs)
  raise ValueError(
      f"config.model.name={name!r} is not a known encoder (known: 'resnet', 'densenet')")
