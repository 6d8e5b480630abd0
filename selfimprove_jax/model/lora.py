"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): the
base weights stay frozen and each targeted weight W gets a trainable low-rank update,
W + (alpha / rank) * A @ B.

Only the adapters (A, B) are trained and held in the optimizer state: for Llama 3.2
1B with rank 16 on q/k/v/o that is 0.18% of the parameters, so the Adam moments
shrink from 2 x 1.24 B to 2 x 2.3 M floats (measured step memory:
benchmarks/RESULTS.md).

Adapters mirror the stacked per-layer params: for a target W of shape
[L, in..., out...] (our einsum layout, model/llama.py), A is [L, in..., r] and B is
[L, r, out...], so each keeps W's logical axis names on its W-side dims and shards
like W. The input dims are the leading ones: one (D for q/k/v/gate/up, F for down)
except for o, whose input is (N, H). A starts ~N(0, 1/in), B at zero, so a fresh
adapter leaves the model unchanged.

The update is merged into the weights (`merge`) rather than added on the fly as
x @ A @ B next to x @ W: the model code stays one path, the sampler runs at the base
model's speed (merge once per sampling phase), and in the train step the merge is
one [in, r] x [r, out] product per target, small next to the B*T-token matmuls. The
DPO / GRPO reference is the base params themselves: no second copy of the weights.

Adapters live in the model package because they are a way of writing the model's
weights (sampling, export and run directories merge them); optimize trains them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Optional

import flax.linen as nn
import ml_collections
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.model.params import abstract_params
from selfimprove_jax.runtime import sharding as sharding_lib

# Per-layer matrices an adapter can target, with how many leading dims are input.
MATRICES = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
LORA_MATRICES = tuple(MATRICES)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank r, alpha (update scale alpha / r) and the per-layer parameter names it
  targets (fnmatch patterns over the names of MATRICES, e.g. ("q", "v") or ("*",))."""
  rank: int
  alpha: float
  targets: tuple[str, ...]

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def from_config(c) -> Optional[LoraConfig]:
  """LoraConfig from `config.lora`, or None when rank is 0."""
  check_lora_config(c)
  if not c.rank:
    return None
  targets = tuple(p.strip() for p in str(c.targets).split(",") if p.strip())
  return LoraConfig(rank=int(c.rank), alpha=float(c.alpha), targets=targets)


def target_keys(lora: LoraConfig) -> list[str]:
  """The per-layer parameter names the patterns select, in MATRICES order."""
  return [k for k in MATRICES if any(fnmatch.fnmatch(k, p) for p in lora.targets)]


def _boxed(model_config: ModelConfig, lora: LoraConfig):
  """Abstract adapters boxed with logical names: {"layers": {key: {"a", "b"}}}."""
  base = abstract_params(model_config)["layers"]
  out = {}
  for key in target_keys(lora):
    w = base[key]
    shape, names, n_in = w.value.shape, tuple(w.names), MATRICES[key]
    a = jax.ShapeDtypeStruct(shape[:1 + n_in] + (lora.rank,), jnp.float32)
    b = jax.ShapeDtypeStruct((shape[0], lora.rank) + shape[1 + n_in:], jnp.float32)
    out[key] = {"a": nn.LogicallyPartitioned(a, names[:1 + n_in] + ("lora_rank",)),
                "b": nn.LogicallyPartitioned(b, ("layers", "lora_rank") + names[1 + n_in:])}
  return {"layers": out}


def abstract_lora(model_config: ModelConfig, lora: LoraConfig):
  """ShapeDtypeStructs of the adapters (unboxed)."""
  return nn.unbox(_boxed(model_config, lora))


def lora_shardings(model_config: ModelConfig, lora: LoraConfig, mesh: Mesh):
  """NamedSharding per adapter: W-side dims like W, the rank dim replicated."""
  return sharding_lib.tree_shardings(_boxed(model_config, lora), mesh)


def abstract_sharded_lora(model_config: ModelConfig, lora: LoraConfig,
                          mesh: Optional[Mesh] = None):
  """ShapeDtypeStructs of the adapters with their shardings (checkpoint restore)."""
  mesh = mesh or sharding_lib.single_device_mesh()
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      abstract_lora(model_config, lora), lora_shardings(model_config, lora, mesh))


def count_lora_params(model_config: ModelConfig, lora: LoraConfig) -> int:
  """L * r * (in + out) per target, from the config alone."""
  c = model_config
  D, F = c.embed_dim, c.mlp_dim
  NH, KH = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  in_out = {"q": (D, NH), "k": (D, KH), "v": (D, KH), "o": (NH, D), "gate": (D, F),
            "up": (D, F), "down": (F, D)}
  return sum(c.num_layers * lora.rank * sum(in_out[k]) for k in target_keys(lora))


def init_lora(model_config: ModelConfig, lora: LoraConfig, seed: int = 0,
              mesh: Optional[Mesh] = None):
  """Fresh adapters (A ~ N(0, 1/in), B = 0), created in their sharded layout."""
  mesh = mesh or sharding_lib.single_device_mesh()
  shapes = abstract_lora(model_config, lora)

  def init(rng):
    out = {}
    for i, (key, ab) in enumerate(shapes["layers"].items()):
      a, b = ab["a"], ab["b"]
      fan_in = 1
      for d in a.shape[1:-1]:
        fan_in *= d
      std = fan_in ** -0.5
      out[key] = {"a": std * jax.random.normal(jax.random.fold_in(rng, i), a.shape, a.dtype),
                  "b": jnp.zeros(b.shape, b.dtype)}
    return {"layers": out}
  return jax.jit(init, out_shardings=lora_shardings(model_config, lora, mesh))(
      jax.random.key(seed))


def delta(adapter: dict, lora: LoraConfig, shape) -> jax.Array:
  """scale * A @ B for one target, in W's stacked shape [L, in..., out...]."""
  a, b = adapter["a"], adapter["b"]
  L, r = a.shape[0], a.shape[-1]
  prod = jnp.einsum("lir,lro->lio", a.reshape(L, -1, r), b.reshape(L, r, -1))
  return (lora.scale * prod).reshape(shape)


def model_params_fn(base: dict, lora: Optional[LoraConfig]):
  """`fn(params) -> model params`: identity without LoRA, else one jitted merge of the
  adapters into `base` (what the sampler and evaluation get)."""
  if lora is None:
    return lambda params: params
  merged = jax.jit(lambda b, a: merge(b, a, lora))
  return lambda adapters: merged(base, adapters)


def merge(base: dict, adapters: dict, lora: LoraConfig) -> dict:
  """Base params with every adapter's update added (fp32, same structure as base).
  Differentiable in `adapters`; the base enters as a constant."""
  layers = dict(base["layers"])
  for key, ab in adapters["layers"].items():
    w = layers[key]
    layers[key] = w + delta(ab, lora, w.shape).astype(w.dtype)
  return dict(base, layers=layers)


# ----------------------------------------------------------------------------- config


def default_lora_config() -> ml_collections.ConfigDict:
  """`config.lora`: rank 0 = off (full fine-tuning)."""
  c = ml_collections.ConfigDict()
  c.rank = 0
  c.alpha = 16.0
  c.targets = "q,k,v,o"    # comma-separated patterns over q,k,v,o,gate,up,down ('*' = all)
  # Dropout on the adapter's input needs the product computed beside W (x @ A @ B);
  # merged adapters have no separate input, so only 0 is accepted.
  c.dropout = 0.0
  return c


def check_lora_config(c) -> None:
  """One-line UserError for a bad `config.lora`."""
  if c.rank < 0:
    raise UserError(f"lora.rank={c.rank!r} must be >= 0 (0 = off)")
  if c.rank and c.alpha <= 0:
    raise UserError(f"lora.alpha={c.alpha!r} must be > 0")
  if c.dropout != 0.0:
    raise UserError(f"lora.dropout={c.dropout!r}: only 0 is supported (adapters are merged "
                    f"into the weights, see model/lora.py)")
  patterns = [p.strip() for p in str(c.targets).split(",") if p.strip()]
  if c.rank and not patterns:
    raise UserError("lora.targets is empty: name parameters such as q,k,v,o")
  for p in patterns:
    if not fnmatch.filter(LORA_MATRICES, p):
      raise UserError(f"lora.targets pattern {p!r} matches none of {', '.join(LORA_MATRICES)}")
