"""Flax Linen decoder for the Llama family (Llama 2/3, SmolLM2, Qwen2, Qwen3, Mistral)
and Gemma 3.

RMSNorm, RoPE (with optional Llama-3 frequency scaling), grouped-query attention,
SwiGLU MLP, tied or untied embeddings, optional q/k/v bias (Qwen2), per-head q/k
RMSNorm (Qwen3), a sliding window on every layer (Mistral v0.1). Gemma 3 is the same
decoder with the switches of its ModelConfig group: GeGLU (tanh GELU), RMSNorm scale
(1 + w), norms after attention and MLP as well as before, q/k RMSNorm, embeddings
times sqrt(D), and local sliding-window layers (own RoPE base) between global ones.
Each shows up as one `if config.x` below, not as a second decoder. The Linen module only
declares the parameters (stacked over layers, each with logical axis names); the
math is plain functions over those arrays, so a layer can be run under `lax.scan`
(one compiled block) or unrolled (fastest decode) without changing the params.

Shape letters are documented in `model/config.py`.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from selfimprove_jax.model.config import ModelConfig

Params = dict
Cache = dict  # {"k": [L, B, S, K, H], "v": [L, B, S, K, H]} in the compute dtype

# Large finite negative instead of -inf: a fully masked (padding) query row then
# gives a uniform softmax rather than NaN.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def compute_dtype(config: ModelConfig):
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


# ----------------------------------------------------------------------------- params


def _p(module: nn.Module, name: str, init, shape, names):
  return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)


class Layers(nn.Module):
  """Declares the per-layer parameters, stacked on a leading `layers` axis."""
  config: ModelConfig

  @nn.compact
  def __call__(self) -> dict:
    c = self.config
    L, D, N, K, H, F = (c.num_layers, c.embed_dim, c.num_heads, c.num_kv_heads,
                        c.head_dim, c.mlp_dim)
    w = nn.initializers.normal(0.02)
    ones, zeros = nn.initializers.ones, nn.initializers.zeros
    ones = zeros if c.norm_scale_offset == 1.0 else ones   # a norm's scale starts at 1
    p = {
        "attn_norm": _p(self, "attn_norm", ones, (L, D), ("layers", "norm")),
        "q": _p(self, "q", w, (L, D, N, H), ("layers", "embed", "heads", "head_dim")),
        "k": _p(self, "k", w, (L, D, K, H), ("layers", "embed", "kv_heads", "head_dim")),
        "v": _p(self, "v", w, (L, D, K, H), ("layers", "embed", "kv_heads", "head_dim")),
        "o": _p(self, "o", w, (L, N, H, D), ("layers", "heads", "head_dim", "embed")),
        "mlp_norm": _p(self, "mlp_norm", ones, (L, D), ("layers", "norm")),
        "gate": _p(self, "gate", w, (L, D, F), ("layers", "embed", "mlp")),
        "up": _p(self, "up", w, (L, D, F), ("layers", "embed", "mlp")),
        "down": _p(self, "down", w, (L, F, D), ("layers", "mlp", "embed")),
    }
    if c.qk_norm:
      p["q_norm"] = _p(self, "q_norm", ones, (L, H), ("layers", "norm"))
      p["k_norm"] = _p(self, "k_norm", ones, (L, H), ("layers", "norm"))
    if c.post_norms:
      p["post_attn_norm"] = _p(self, "post_attn_norm", ones, (L, D), ("layers", "norm"))
      p["post_mlp_norm"] = _p(self, "post_mlp_norm", ones, (L, D), ("layers", "norm"))
    if c.qkv_bias:
      p["q_bias"] = _p(self, "q_bias", zeros, (L, N, H), ("layers", "heads", "head_dim"))
      p["k_bias"] = _p(self, "k_bias", zeros, (L, K, H), ("layers", "kv_heads", "head_dim"))
      p["v_bias"] = _p(self, "v_bias", zeros, (L, K, H), ("layers", "kv_heads", "head_dim"))
    return p


# ----------------------------------------------------------------------------- math


def rms_norm(x, weight, eps, offset: float = 0.0):
  """HF LlamaRMSNorm (offset 0) / Gemma3RMSNorm (offset 1, scale 1 + w): normalise in
  fp32, scale, return in the input dtype."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  scale = weight.astype(jnp.float32)
  if offset:
    scale = offset + scale
  return (scale * x32).astype(x.dtype)


def norm(x, weight, config: ModelConfig):
  """The config's RMSNorm (eps and scale offset)."""
  return rms_norm(x, weight, config.norm_eps, config.norm_scale_offset)


def embed(embedding, tokens, config: ModelConfig):
  """Token embeddings [B,T,D] in the compute dtype; Gemma scales them by sqrt(D)
  (rounded to the compute dtype first, as HF's Gemma3TextScaledWordEmbedding does)."""
  dt = compute_dtype(config)
  x = jnp.take(embedding, tokens, axis=0).astype(dt)
  if config.embed_scale:
    x = x * jnp.asarray(config.embed_dim ** 0.5, dt)
  return x


def mlp_activation(g, config: ModelConfig):
  """SwiGLU's SiLU or GeGLU's tanh-approximate GELU (torch's gelu_pytorch_tanh)."""
  return jax.nn.silu(g) if config.mlp_activation == "silu" else jax.nn.gelu(g, approximate=True)


def rope_inv_freq(config: ModelConfig, local: bool = False) -> np.ndarray:
  """Inverse frequencies [H/2], with Llama-3 scaling when the config has it; `local`:
  those of the sliding-window layers (Gemma 3: base rope_local_theta, never scaled)."""
  H = config.head_dim
  theta = config.rope_local_theta if local and config.rope_local_theta else config.rope_theta
  inv_freq = 1.0 / (theta ** (np.arange(0, H, 2, dtype=np.float64) / H))
  s = None if local else config.rope_scaling
  if s is not None:
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor)
              / (s.high_freq_factor - s.low_freq_factor))
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = np.where(medium, smoothed, scaled)
  return inv_freq.astype(np.float32)


def rope_tables(positions, config: ModelConfig, local: bool = False):
  """cos, sin of shape [B, T, H/2] (fp32) for integer positions [B, T]; `local` for
  the sliding-window layers."""
  angles = (positions.astype(jnp.float32)[..., None]
            * jnp.asarray(rope_inv_freq(config, local)))
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
  """Rotate-half RoPE (HF layout) on x [B, T, heads, H]."""
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def attention(q, k, v, mask, scale=None, window=None, q_offset=0):
  """Grouped-query attention. q [B,T,N,H], k/v [B,S,K,H], mask [B,T,S] -> [B,T,N,H].

  mask None means plain causal attention over right-padded rows (S == T): then
  `jax.nn.dot_product_attention` runs it, which on GPU picks the fused cuDNN
  (flash) kernel and never materialises the [B,N,T,S] scores -- at 16 x 1024 tokens
  that array is 0.6 GB per layer in fp32, kept for the backward pass.
  scale: of the scores (default H**-0.5). window: a query sees only keys fewer than
  `window` slots behind it (query t sits at slot q_offset + t), as HF's sliding
  window; slots and positions differ by one constant per row (left padding), so
  the slot distance is the position distance."""
  B, T, N, H = q.shape
  scale = H ** -0.5 if scale is None else scale
  if mask is None:
    # cuDNN's fused kernel only takes 16-bit inputs; elsewhere XLA's reference path.
    fused = jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
    return jax.nn.dot_product_attention(
        q, k, v, is_causal=True, scale=scale,
        local_window_size=None if window is None else (window - 1, 0),
        implementation="cudnn" if fused else None)
  K = k.shape[2]
  if window is not None:
    q_slot = q_offset + jnp.arange(T)
    near = q_slot[:, None] - jnp.arange(k.shape[1])[None, :] < window      # [T,S]
    mask = mask & near[None]
  q = q.reshape(B, T, K, N // K, H)
  scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores * scale
  scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
  return out.reshape(B, T, N, H)


def block(p, x, rope, mask, config: ModelConfig, kv=None, cache_index=None, local=False):
  """One decoder layer. x [B,T,D]; rope: the (cos, sin) tables of its positions; kv:
  optional (k_cache, v_cache) [B,S,K,H] into which this call's keys/values are written
  at `cache_index` (same for all rows). local: a sliding-window layer (a Python bool,
  or a traced one under `lax.scan`); rope must then be its tables
  (`rope_tables(..., local=True)`). Returns (x, (k_cache, v_cache) or None)."""
  dt = x.dtype
  h = norm(x, p["attn_norm"], config)
  # Without a cache (training, scoring) q/k/v and gate/up each run as one matmul on
  # weights joined per call: fewer, larger kernels, and h is read once instead of
  # three / two times (SmolLM2-135M train step on an H100: 249k -> 265k tokens/s
  # with a plain concatenation; benchmarks/RESULTS.md). Joining copies the weights,
  # which B*T tokens amortise in training; a decode step would pay it for one token
  # per row, so the cached path keeps separate matmuls. The joins add an unsharded
  # axis (q's heads grouped under their kv head, gate/up stacked), so the kv_heads
  # and mlp shardings carry over.
  fused = kv is None
  q, k, v = _qkv(p, h, config, fused)
  q, k = apply_rope(q, *rope), apply_rope(k, *rope)
  if kv is not None:
    k_cache, v_cache = kv
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), cache_index, 1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), cache_index, 1)
    kv = (k_cache, v_cache)
    k, v = k_cache.astype(dt), v_cache.astype(dt)
  a = _attend(q, k, v, mask, config, cache_index, local)
  a = jnp.einsum("btnh,nhd->btd", a, p["o"].astype(dt))
  x = x + (norm(a, p["post_attn_norm"], config) if config.post_norms else a)
  m = _mlp(p, norm(x, p["mlp_norm"], config), config, fused)
  x = x + (norm(m, p["post_mlp_norm"], config) if config.post_norms else m)
  return x, kv


def _qkv(p, h, config: ModelConfig, fused: bool):
  """q [B,T,N,H], k and v [B,T,K,H] of the normed input h [B,T,D], with the config's
  biases and q/k norms (before RoPE)."""
  dt = h.dtype
  if fused:   # one matmul on the joined weights (see `block`)
    B, T, _ = h.shape
    D, N, H = p["q"].shape
    K = p["k"].shape[1]
    G = N // K
    w = jnp.concatenate([p["q"].reshape(D, K, G, H), p["k"][:, :, None], p["v"][:, :, None]],
                        axis=2).astype(dt)                                 # [D,K,G+2,H]
    qkv = jnp.einsum("btd,dkgh->btkgh", h, w)
    q = qkv[:, :, :, :G].reshape(B, T, N, H)
    k, v = qkv[:, :, :, G], qkv[:, :, :, G + 1]
  else:
    q = jnp.einsum("btd,dnh->btnh", h, p["q"].astype(dt))
    k = jnp.einsum("btd,dkh->btkh", h, p["k"].astype(dt))
    v = jnp.einsum("btd,dkh->btkh", h, p["v"].astype(dt))
  if config.qkv_bias:
    q, k, v = q + p["q_bias"].astype(dt), k + p["k_bias"].astype(dt), v + p["v_bias"].astype(dt)
  if config.qk_norm:
    q, k = norm(q, p["q_norm"], config), norm(k, p["k_norm"], config)
  return q, k, v


def _attend(q, k, v, mask, config: ModelConfig, cache_index, local):
  """`attention` with the config's score scale, through the sliding window on a local
  layer (a Python bool picks one path; a traced one, under `lax.scan`, a `lax.cond`)."""
  scale = None if config.query_pre_attn_scalar is None else config.query_pre_attn_scalar ** -0.5
  full = functools.partial(attention, scale=scale)
  if config.sliding_window is None:
    return full(q, k, v, mask)
  windowed = functools.partial(attention, scale=scale, window=config.sliding_window,
                               q_offset=0 if cache_index is None else cache_index)
  if isinstance(local, (bool, np.bool_)):
    return (windowed if local else full)(q, k, v, mask)
  # scanned layers: both branches compile once, each layer runs one
  return jax.lax.cond(local, windowed, full, q, k, v, mask)


def _mlp(p, h, config: ModelConfig, fused: bool):
  """The gated MLP of the normed input h [B,T,D] -> [B,T,D]; fused, gate and up run
  as one matmul on weights stacked per call (see `block`)."""
  dt = h.dtype
  if fused:
    gu = jnp.einsum("btd,dsf->btsf", h, jnp.stack([p["gate"], p["up"]], axis=1).astype(dt))
    g, u = gu[:, :, 0], gu[:, :, 1]
  else:
    g = jnp.einsum("btd,df->btf", h, p["gate"].astype(dt))
    u = jnp.einsum("btd,df->btf", h, p["up"].astype(dt))
  return jnp.einsum("btf,fd->btd", mlp_activation(g, config) * u, p["down"].astype(dt))


def causal_mask(input_mask):
  """[B,T] validity mask -> [B,T,T] causal attention mask that also hides padding keys."""
  T = input_mask.shape[-1]
  causal = jnp.tril(jnp.ones((T, T), dtype=bool))
  return causal[None] & input_mask[:, None, :].astype(bool)


# ----------------------------------------------------------------------------- module


class Transformer(nn.Module):
  """The decoder (Llama family or Gemma 3). Call with tokens [B,T], positions [B,T],
  mask [B,T,S]; returns (logits [B,T,V] fp32, or final hidden [B,T,D] when
  return_hidden, new cache)."""
  config: ModelConfig

  def setup(self):
    c = self.config
    self.embedding = _p(self, "embedding", nn.initializers.normal(0.02),
                        (c.vocab_size, c.embed_dim), ("vocab", "embed"))
    self.layers = Layers(c, name="layers")
    self.final_norm = _p(self, "final_norm", nn.initializers.ones, (c.embed_dim,), ("norm",))
    if not c.tie_embeddings:
      self.lm_head = _p(self, "lm_head", nn.initializers.normal(0.02),
                        (c.embed_dim, c.vocab_size), ("embed", "vocab"))

  def __call__(self, tokens, positions, mask, cache: Optional[Cache] = None,
               cache_index=None, return_hidden: bool = False):
    c = self.config
    x = embed(self.embedding, tokens, c)
    rope = rope_tables(positions, c)
    # Local (sliding-window) layers have their own RoPE tables; a layer picks its pair.
    rope_local = rope_tables(positions, c, local=True) if c.sliding_window else rope
    local_layers = np.asarray(c.local_layers)
    layer_params = self.layers()
    fn = functools.partial(block, config=c, cache_index=cache_index)
    if c.remat:
      policy = {"nothing": jax.checkpoint_policies.nothing_saveable,
                "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[c.remat_policy]
      fn = jax.checkpoint(fn, policy=policy)

    def tables(local):
      if not c.sliding_window:
        return rope
      if isinstance(local, (bool, np.bool_)):
        return rope_local if local else rope
      return tuple(jnp.where(local, l, g) for l, g in zip(rope_local, rope))

    if c.scan_layers:
      def step(x, xs):
        p, kv, local = xs
        x, kv = fn(p, x, tables(local), mask, kv=kv, local=local)
        return x, kv
      xs = (layer_params, None if cache is None else (cache["k"], cache["v"]),
            jnp.asarray(local_layers))
      x, new_kv = jax.lax.scan(step, x, xs)
      new_cache = None if cache is None else {"k": new_kv[0], "v": new_kv[1]}
    else:
      new_cache = None if cache is None else dict(cache)
      for i in range(c.num_layers):
        p = jax.tree.map(lambda a: a[i], layer_params)
        kv = None if cache is None else (new_cache["k"][i], new_cache["v"][i])
        local = bool(local_layers[i])
        x, kv = fn(p, x, tables(local), mask, kv=kv, local=local)
        if cache is not None:
          new_cache["k"] = new_cache["k"].at[i].set(kv[0])
          new_cache["v"] = new_cache["v"].at[i].set(kv[1])

    x = norm(x, self.final_norm, c)
    if return_hidden:
      return x, new_cache
    return self.logits(x), new_cache

  def logits(self, hidden):
    """Final projection of normed hidden states [..., D] -> fp32 logits [..., V]."""
    dt = hidden.dtype
    w = self.embedding if self.config.tie_embeddings else self.lm_head.T    # [V, D]
    return output_head(hidden, w.astype(dt))


@jax.custom_vjp
def output_head(hidden, w):
  """hidden [..., D] @ w[V, D].T -> fp32 logits [..., V], both inputs in the compute
  dtype, accumulated in fp32.

  The custom gradient casts the incoming fp32 logit cotangent to the compute dtype
  before the two backward matmuls. Plain autodiff would keep it fp32, and a
  bf16 x fp32 matmul runs as an fp32 one: on an H100 the two [B*T, V] x ... backward
  products of the head are the largest matmuls of a small model's step. The forward
  stays exact (fp32 logits of bf16 inputs, which log-probs and PPO ratios need); the
  gradient is rounded to bf16 like every other gradient of a bf16 model. With fp32
  compute this is the plain gradient."""
  return jnp.einsum("...d,vd->...v", hidden, w, preferred_element_type=jnp.float32)


def _output_head_fwd(hidden, w):
  return output_head(hidden, w), (hidden, w)


def _output_head_bwd(res, g):
  hidden, w = res
  g = g.astype(hidden.dtype)
  d_hidden = jnp.einsum("...v,vd->...d", g, w, preferred_element_type=jnp.float32)
  d_w = jnp.einsum("nv,nd->vd", g.reshape(-1, g.shape[-1]), hidden.reshape(-1, hidden.shape[-1]),
                   preferred_element_type=jnp.float32)
  return d_hidden.astype(hidden.dtype), d_w.astype(w.dtype)


output_head.defvjp(_output_head_fwd, _output_head_bwd)


def init_cache(config: ModelConfig, batch: int, length: int, dtype=None) -> Cache:
  """Zeroed static KV cache [L, B, S, K, H] for `batch` rows and `length` positions."""
  shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
  dtype = dtype or compute_dtype(config)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def forward(params: Params, config: ModelConfig, tokens, input_mask=None,
            return_hidden: bool = False, right_padded: bool = False):
  """Full-sequence forward without a cache (training / scoring).

  tokens [B,T]; input_mask [B,T] (1 = real token, left or right padding; positions
  count from 0 at each row's first real token). With `right_padded` the caller
  promises padding only at the end of rows: real tokens then never see padding under
  a plain causal mask, and the fused attention kernel is used (see `attention`).
  Returns logits [B,T,V] fp32 (or hidden [B,T,D])."""
  if input_mask is None:
    input_mask = jnp.ones(tokens.shape, bool)
    right_padded = True
  input_mask = input_mask.astype(bool)
  positions = jnp.maximum(jnp.cumsum(input_mask, axis=-1) - 1, 0)
  mask = None if right_padded else causal_mask(input_mask)
  out, _ = Transformer(config).apply({"params": params}, tokens, positions, mask,
                                     return_hidden=return_hidden)
  return out


def project_logits(params: Params, config: ModelConfig, hidden):
  """fp32 logits for hidden states [..., D] (used to chunk the vocabulary projection)."""
  return Transformer(config).apply({"params": params}, hidden, method=Transformer.logits)
