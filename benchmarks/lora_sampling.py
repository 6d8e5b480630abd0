"""Sampling with LoRA: merged weights (W + s * A @ B once, then the base model's step)
vs the low-rank product added on the fly (x @ W + s * (x @ A) @ B in every step).

  python benchmarks/lora_sampling.py                       # smollm2_135m, rank 16, q,k,v,o
  python benchmarks/lora_sampling.py --targets '*' --batch 16

The model code has one path (merged weights), so the on-the-fly variant is a minimal
local decoder step below, and the merged variant runs through the same local function
with the adapters already merged: the two differ only in the adapter products. The
package's own cached step (`Transformer` with a KV cache, what the sampler jits) is
timed on the merged weights beside them, to show the local step is representative.
The local step leaves out RoPE (elementwise, the same in both variants). Random
weights, random adapters (B not zero, so nothing folds away), fp32.

Timed: a decode step (B rows, one new token, a KV cache of S slots) and a prefill
(B rows x T tokens), each the median of --repeats calls after a compiling one, and the
one-off merge (`model.lora.merge`, jitted) that the merged variant pays per
sampling phase.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

from machine import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def lowrank(x, ab, n_in: int, scale: float):
  """scale * (x @ A) @ B for x [B,T,in...], A [in..., r], B [r, out...]."""
  import jax.numpy as jnp
  a, b = ab["a"], ab["b"]
  r = a.shape[-1]
  xin = x.reshape(x.shape[:2] + (-1,))
  y = jnp.einsum("btr,ro->bto", jnp.einsum("bti,ir->btr", xin, a.reshape(-1, r)),
                 b.reshape(r, -1))
  return scale * y.reshape(x.shape[:2] + b.shape[1:])


def local_step(params, adapters, tokens, cache, index, config, scale):
  """A cached decoder step over tokens [B,T] written at slot `index` of cache
  {"k","v"} [L,B,S,K,H]; `adapters` None means the weights are used as they are.
  Returns (logits [B,T,V], cache)."""
  import jax
  import jax.numpy as jnp
  from selfimprove_jax.model.llama import attention, mlp_activation, norm
  from selfimprove_jax.model.lora import MATRICES
  c = config
  x = jnp.take(params["embedding"], tokens, axis=0)
  B, T = tokens.shape
  S = cache["k"].shape[2]
  mask = (jnp.arange(S)[None, :] <= index + jnp.arange(T)[:, None])[None].repeat(B, 0)

  def proj(h, p, ad, key, spec):
    y = jnp.einsum(spec, h, p[key])
    if ad is not None and key in ad:
      y = y + lowrank(h, ad[key], MATRICES[key], scale)
    return y

  def layer(x, xs):
    p, ad, k_cache, v_cache = xs
    h = norm(x, p["attn_norm"], c)
    q = proj(h, p, ad, "q", "btd,dnh->btnh")
    k = proj(h, p, ad, "k", "btd,dkh->btkh")
    v = proj(h, p, ad, "v", "btd,dkh->btkh")
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k, index, 1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v, index, 1)
    a = attention(q, k_cache, v_cache, mask)
    x = x + proj(a, p, ad, "o", "btnh,nhd->btd")
    h = norm(x, p["mlp_norm"], c)
    g = proj(h, p, ad, "gate", "btd,df->btf")
    u = proj(h, p, ad, "up", "btd,df->btf")
    x = x + proj(mlp_activation(g, c) * u, p, ad, "down", "btf,fd->btd")
    return x, (k_cache, v_cache)

  ad_layers = None if adapters is None else adapters["layers"]
  x, (k, v) = jax.lax.scan(layer, x, (params["layers"], ad_layers, cache["k"], cache["v"]))
  x = norm(x, params["final_norm"], c)
  logits = jnp.einsum("btd,vd->btv", x, params["embedding"])
  return logits, {"k": k, "v": v}


def median_seconds(fn, repeats: int) -> float:
  import jax
  import numpy as np
  jax.block_until_ready(fn())            # compile + first call
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="smollm2_135m")
  p.add_argument("--batch", type=int, default=64, help="rows (the sampler's batch)")
  p.add_argument("--cache", type=int, default=256, help="KV cache slots S")
  p.add_argument("--prefill", type=int, default=128,
                 help="prefill tokens per row T (0: time the decode step only)")
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--targets", default="q,k,v,o")
  p.add_argument("--repeats", type=int, default=10)
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from selfimprove_jax.model import Transformer, get_preset, init_params
  from selfimprove_jax.model import lora as lora_lib

  config = get_preset(args.preset)
  if config.sliding_window is not None or config.tie_embeddings is False:
    raise SystemExit("the local step covers tied-embedding models without sliding "
                     "windows (the Llama / SmolLM2 presets)")
  lora = lora_lib.LoraConfig(rank=args.rank, alpha=2.0 * args.rank,
                             targets=tuple(args.targets.split(",")))
  base = init_params(config, seed=0)
  adapters = lora_lib.init_lora(config, lora, seed=1)
  # a trained adapter: B away from zero, so neither variant is the base model
  adapters = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(2), x.shape),
                          adapters)
  merge = jax.jit(lambda b, a: lora_lib.merge(b, a, lora))
  merged = merge(base, adapters)
  out = {"machine": cpu_name(), "backend": jax.default_backend(), "preset": args.preset,
         "rank": args.rank, "targets": args.targets, "batch": args.batch,
         "cache": args.cache, "prefill": args.prefill, "repeats": args.repeats,
         "merge_s": median_seconds(lambda: merge(base, adapters), args.repeats)}

  B, S, T = args.batch, args.cache, args.prefill
  rng = np.random.RandomState(0)
  shape = (config.num_layers, B, S, config.num_kv_heads, config.head_dim)
  cache = {"k": jnp.asarray(rng.randn(*shape), jnp.float32),
           "v": jnp.asarray(rng.randn(*shape), jnp.float32)}
  one = jnp.asarray(rng.randint(0, config.vocab_size, (B, 1)), jnp.int32)
  many = jnp.asarray(rng.randint(0, config.vocab_size, (B, max(T, 1))), jnp.int32)
  step = jax.jit(functools.partial(local_step, config=config, scale=lora.scale))
  model = Transformer(config)

  @jax.jit
  def package_step(params, tokens, cache, index):
    Tn = tokens.shape[1]
    positions = jnp.broadcast_to(index + jnp.arange(Tn), tokens.shape)
    mask = (jnp.arange(S)[None, :] <= index + jnp.arange(Tn)[:, None])[None].repeat(B, 0)
    return model.apply({"params": params}, tokens, positions, mask, cache=cache,
                       cache_index=index)

  # a decode step writes slot S - 1 (the cache full before it), a prefill slots 0..T-1
  phases = [("decode", one, S - 1)] + ([("prefill", many, 0)] if T else [])
  for phase, tokens, index in phases:
    idx = jnp.int32(index)
    res = {"merged_s": median_seconds(lambda: step(merged, None, tokens, cache, idx),
                                      args.repeats),
           "on_the_fly_s": median_seconds(lambda: step(base, adapters, tokens, cache, idx),
                                          args.repeats),
           "package_merged_s": median_seconds(lambda: package_step(merged, tokens, cache, idx),
                                              args.repeats)}
    res["on_the_fly_over_merged"] = res["on_the_fly_s"] / res["merged_s"]
    # the two variants compute the same function (up to fp32 round-off)
    a = np.asarray(step(merged, None, tokens, cache, idx)[0])
    b = np.asarray(step(base, adapters, tokens, cache, idx)[0])
    res["max_abs_logit_diff"] = float(np.max(np.abs(a - b)))
    out[phase] = res
    print(phase, json.dumps(res), flush=True)
  # decode steps after which one merge has cost less than the on-the-fly overhead
  extra = out["decode"]["on_the_fly_s"] - out["decode"]["merged_s"]
  out["decode_steps_to_repay_merge"] = out["merge_s"] / extra if extra > 0 else None
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
