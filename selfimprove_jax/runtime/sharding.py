"""Sharding is data: one mesh from the config and one short logical-axis rule table.

Every parameter is created with logical axis names (see model/llama.py); the table
below maps them to mesh axes. A dimension whose size the mesh axes do not divide is
replicated instead (SmolLM2-135M has 3 kv heads: on tensor=4 they are replicated),
so any preset runs on any mesh. Adding a parallelism strategy is a rule change.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selfimprove_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("length", None),
)


def make_mesh(shape: Mapping[str, int], devices: Optional[Sequence[Any]] = None) -> Mesh:
  """Mesh over `devices` (default: all, across processes) with axes data/fsdp/tensor.

  `shape` maps axis name to size; missing axes are 1 and one axis may be -1
  (= all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise UserError(f"unknown mesh axes {sorted(unknown)}; expected {MESH_AXES}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise UserError(f"mesh {dict(shape)}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"mesh {dict(shape)} does not divide the {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                    f"there are {len(devices)}")
  return Mesh(np.asarray(devices, dtype=object).reshape(sizes), MESH_AXES)


def single_device_mesh() -> Mesh:
  return make_mesh({}, devices=jax.devices()[:1])


def spec_for(logical: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
             rules=RULES) -> P:
  """PartitionSpec for an array with logical axis names; non-dividing axes replicate."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, size in zip(logical, shape):
    axes = table.get(name) if name is not None else None
    if axes is None:
      out.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    n = math.prod(mesh.shape[a] for a in axes)
    if not axes or size % n:
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return P(*out)


def logical_sharding(logical: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                     rules=RULES) -> NamedSharding:
  return NamedSharding(mesh, spec_for(logical, shape, mesh, rules))


def tree_shardings(boxed_shapes, mesh: Mesh, rules=RULES):
  """NamedShardings for a pytree of `nn.LogicallyPartitioned` ShapeDtypeStructs
  (what `jax.eval_shape(model.init, ...)` returns)."""
  def one(x):
    if isinstance(x, nn.LogicallyPartitioned):
      return logical_sharding(x.names, x.value.shape, mesh, rules)
    return NamedSharding(mesh, P())
  return jax.tree.map(one, boxed_shapes,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int, batch_size: Optional[int] = None) -> NamedSharding:
  """Shard the leading (batch) axis over data x fsdp, the rest replicated."""
  shape = (batch_size or 0,) + (1,) * (ndim - 1)
  if batch_size is None:
    return NamedSharding(mesh, P(("data", "fsdp")))
  return logical_sharding(("batch",) + (None,) * (ndim - 1), shape, mesh)


def put_from_host(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Place a host array sharded, each device receiving only its own slice (works
  across processes: every host builds its addressable shards from its copy)."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])
