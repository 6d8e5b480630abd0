"""Creating parameters: abstract shapes with logical axes, sharded random init."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.model.llama import Transformer
from selfimprove_jax.runtime import sharding as sharding_lib


def _init_boxed(config: ModelConfig, rng):
  tokens = jnp.zeros((1, 1), jnp.int32)
  mask = jnp.ones((1, 1, 1), bool)
  return Transformer(config).init(rng, tokens, tokens, mask)["params"]


def abstract_params(config: ModelConfig):
  """ShapeDtypeStructs of the params, boxed with their logical axis names."""
  return jax.eval_shape(lambda: _init_boxed(config, jax.random.key(0)))


def logical_axes(config: ModelConfig):
  """Pytree (same structure as params) of logical axis-name tuples."""
  boxed = abstract_params(config)
  return jax.tree.map(lambda x: tuple(x.names), boxed,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def param_shardings(config: ModelConfig, mesh: Mesh, rules=sharding_lib.RULES):
  """NamedSharding per parameter from the rule table."""
  return sharding_lib.tree_shardings(abstract_params(config), mesh, rules)


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def init_params(config: ModelConfig, seed: int = 0, mesh: Mesh | None = None):
  """Random fp32 params, created directly in their sharded layout (never whole on
  one device): the init is jitted with the rule table's out_shardings."""
  mesh = mesh or sharding_lib.single_device_mesh()
  shardings = param_shardings(config, mesh)
  init = jax.jit(lambda rng: nn.unbox(_init_boxed(config, rng)), out_shardings=shardings)
  return init(jax.random.key(seed))
