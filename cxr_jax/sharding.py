"""Device mesh, parameter partition rules, and host batch -> global jax.Array.

The mesh comes from `config.mesh`: a tuple of (axis_name, size) pairs, -1 meaning "the rest of the
devices", e.g. `(('data', -1),)` (pure data parallel, the default) or `(('data', -1), ('fsdp', 4))`.
`config.num_devices` (0 = all) restricts the mesh to the first N devices: the device-count invariance
test runs the same config on 1 and on 8 devices in one process.

Parameters are replicated unless a rule in `config.partition_rules` (regex over the '/'-joined
parameter path -> PartitionSpec entries) says otherwise. Batches are sharded over every mesh axis
that is a batch axis ('data' and 'fsdp').
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')


def make_mesh(mesh_axes: Sequence[tuple[str, int]], num_devices: int = 0) -> Mesh:
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f'config.num_devices={num_devices} but only {len(devices)} devices exist')
    devices = devices[:num_devices]
  names = tuple(name for name, _ in mesh_axes)
  sizes = [int(size) for _, size in mesh_axes]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh={mesh_axes}: at most one axis may be -1')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'config.mesh={mesh_axes} does not divide {len(devices)} devices')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f'config.mesh={mesh_axes} needs {math.prod(sizes)} devices, '
                     f'{len(devices)} are in use')
  # Auto axes: shardings inside the step are propagated by XLA from the inputs' and outputs'
  # shardings (JAX's explicit-sharding mode would ask every gather for an output sharding).
  axis_types = (jax.sharding.AxisType.Auto,) * len(names)
  if len(devices) == len(jax.devices()):
    return jax.make_mesh(tuple(sizes), names, axis_types=axis_types, devices=devices)
  return Mesh(np.asarray(devices).reshape(sizes), names, axis_types=axis_types)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in mesh.axis_names if a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the batch axes; everything else replicated."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def path_str(path) -> str:
  """'/'-joined readable key path of a pytree leaf, e.g. 'params/encoder/stem_conv/kernel'."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return '/'.join(parts)


def state_shardings(abstract_state: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Sequence[Any]]] = ()) -> Any:
  """NamedSharding for every leaf: the first matching rule's PartitionSpec, else replicated.

  A rule only applies where each sharded dimension divides evenly; otherwise the leaf stays
  replicated (small biases and norms under an FSDP rule, say).
  """
  compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]

  def for_leaf(path, leaf):
    name = path_str(path)
    shape = getattr(leaf, 'shape', ())
    for pattern, spec in compiled:
      if pattern.search(name) and len(spec) <= len(shape) and all(
          axis is None or shape[i] % _axis_size(mesh, axis) == 0 for i, axis in enumerate(spec)):
        return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(for_leaf, abstract_state)


def _axis_size(mesh: Mesh, axis) -> int:
  names = axis if isinstance(axis, tuple) else (axis,)
  return math.prod(mesh.shape[n] for n in names)


def host_to_global(local_batch: Any, mesh: Mesh) -> Any:
  """This process's slice of the global batch (numpy) -> global jax.Arrays sharded on the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
