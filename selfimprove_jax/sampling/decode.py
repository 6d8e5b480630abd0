"""The jitted heart of the sampler: prefill, token choice, and the decode loop.

Everything here is a pure function of arrays; `sampler.py` owns batching, buckets and
compilation. The model math is `model/llama.py`'s (`Transformer` for the prefill,
`block` for each decode step); this file only arranges it for incremental decoding:

* The KV cache is one (k, v) pair of [B, S, K, H] arrays per layer rather than the
  stacked [L, B, S, K, H] the Linen module uses, and the decode step unrolls the
  layers. Each layer's cache is then its own loop-carried buffer that the
  `dynamic_update_slice` in `block` writes in place; a `lax.scan` over a stacked
  cache would read and write the whole cache as scan inputs/outputs every step.
* Params are cast to the compute dtype once per call, before the loop, so the loop
  body never converts fp32 weights (norm weights stay fp32: `rms_norm` computes in
  fp32 from them, so the result is bit-identical to the model's own forward).
* All rows are left-padded to one bucket length Tb, so every row writes its t-th new
  token at the same cache slot Tb + t and `block`'s single `cache_index` suffices;
  positions come from the count of real prompt tokens.

`continuous.py` reuses the prefill, the token choice (`next_tokens`) and the decode
step (`forward_step`) for continuous batching over a ring cache.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.runtime import sharding as sharding_lib
from selfimprove_jax.model.llama import (Transformer, block, causal_mask, compute_dtype, embed,
                                         init_cache, norm, project_logits, rope_tables)

# Finish codes inside the loop (0 = still running); names in params.FINISH_REASONS.
RUNNING, EOS, STOP, LENGTH = 0, 1, 2, 3
_NORMS = ("attn_norm", "mlp_norm", "final_norm", "q_norm", "k_norm", "post_attn_norm",
          "post_mlp_norm")


class DecodeState(NamedTuple):
  """Loop carry of the decode `while_loop` (B rows, S = Tb + max_new cache slots,
  M = max_new, W = longest stop sequence or 1)."""
  cache: tuple             # L pairs (k [B,S,K,H], v [B,S,K,H]) in the compute dtype
  logits: jax.Array        # [B,V] fp32 logits for the next token
  step: jax.Array          # [] int32 tokens generated so far
  positions: jax.Array     # [B] int32 position of the next token
  prompt_mask: jax.Array   # [B,Tb] bool, real (non-pad) prompt slots
  row_keys: jax.Array      # [B] PRNG keys, one per (prompt, sample) pair
  tokens: jax.Array        # [B,M] int32
  logprobs: jax.Array      # [B,M] fp32, raw model distribution
  sample_logprobs: jax.Array  # [B,M] fp32, sampling distribution
  recent: jax.Array        # [B,W] int32 last W tokens (-1 before any)
  done: jax.Array          # [B] bool
  finish: jax.Array        # [B] int32 finish code
  length: jax.Array        # [B] int32 tokens kept
  stop_len: jax.Array      # [B] int32 trailing tokens that are EOS / stop sequence
  limit: jax.Array         # [B] int32 new-token budget of the row (<= M)


class Choice(NamedTuple):
  """Static description of how tokens are chosen (one compilation per distinct value;
  temperature and top_p are traced, so changing them does not recompile)."""
  name: str          # key of CHOOSERS
  top_k: int = 0     # candidates kept by "truncated" (V when only top_p is on)
  use_top_p: bool = False


# ----------------------------------------------------------------------------- choosers
# Each takes fp32 logits [B,V], per-row keys [B], temperature and top_p scalars and
# returns (token [B] int32, log-prob of it under the sampling distribution [B]).


def _choose_greedy(logits, keys, temperature, top_p, choice):
  del keys, temperature, top_p, choice
  tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return tok, jnp.zeros(tok.shape, jnp.float32)


def _choose_temperature(logits, keys, temperature, top_p, choice):
  """Plain softmax(logits / T) sampling: no sort over the vocabulary."""
  del top_p, choice
  scaled = logits / temperature
  tok = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
  chosen = jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0]
  return tok, chosen - jax.nn.logsumexp(scaled, axis=-1)


def _choose_truncated(logits, keys, temperature, top_p, choice):
  """Top-k then top-p over the k largest scaled logits (`lax.top_k` returns them
  sorted, so top-p is a cumulative sum over k candidates, not over V)."""
  scaled = logits / temperature
  vals, idx = jax.lax.top_k(scaled, choice.top_k)               # [B,k] descending
  if choice.use_top_p:
    probs = jax.nn.softmax(vals, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs                  # mass strictly above
    vals = jnp.where(before < top_p, vals, -jnp.inf)             # keeps at least one
  j = jax.vmap(jax.random.categorical)(keys, vals)
  tok = jnp.take_along_axis(idx, j[:, None], axis=-1)[:, 0].astype(jnp.int32)
  chosen = jnp.take_along_axis(vals, j[:, None], axis=-1)[:, 0]
  return tok, chosen - jax.nn.logsumexp(vals, axis=-1)


CHOOSERS = {"greedy": _choose_greedy, "temperature": _choose_temperature,
            "truncated": _choose_truncated}


def make_choice(greedy: bool, top_k: int, top_p: float, vocab_size: int) -> Choice:
  """The static chooser for these controls; the sort-based path only when needed."""
  if greedy:
    return Choice("greedy")
  if top_k <= 0 and top_p >= 1.0:
    return Choice("temperature")
  k = min(top_k, vocab_size) if top_k > 0 else vocab_size
  return Choice("truncated", top_k=k, use_top_p=top_p < 1.0)


# ----------------------------------------------------------------------------- helpers


def _constrain(x, logical, mesh: Optional[Mesh]):
  if mesh is None:
    return x
  spec = sharding_lib.spec_for(logical, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


_CACHE_AXES = ("batch", "length", "kv_heads", "head_dim")


def cast_params(params, config: ModelConfig):
  """(top-level params, [per-layer params]) with matrices in the compute dtype and
  norm weights in fp32; slicing the layers here keeps it out of the loop body."""
  dt = compute_dtype(config)
  cast = lambda name, a: a.astype(jnp.float32 if name in _NORMS else dt)
  top = {k: cast(k, v) for k, v in params.items() if k != "layers"}
  layers = [{k: cast(k, v[i]) for k, v in params["layers"].items()}
            for i in range(config.num_layers)]
  return top, layers


def _logits(top, config: ModelConfig, hidden):
  return project_logits(top, config, hidden)


# size: a jitted kernel; its arrays and static settings are its parameters
def forward_step(top, layers, config: ModelConfig, cache, tok, positions, key_mask,
                 cache_index, mesh=None):
  """One decode step for every row: tok [B] at `positions` [B], written to cache slot
  `cache_index`; attends where key_mask [B,S]. Returns (fp32 logits [B,V], cache)."""
  x = embed(top["embedding"], tok[:, None], config)                      # [B,1,D]
  rope = {local: rope_tables(positions[:, None], config, local)          # [B,1,H/2]
          for local in set(config.local_layers)}
  mask = key_mask[:, None, :]                                            # [B,1,S]
  new_cache = []
  for p, kv, local in zip(layers, cache, config.local_layers):
    x, (k, v) = block(p, x, rope[local], mask, config, kv=kv, cache_index=cache_index,
                      local=local)
    new_cache.append((_constrain(k, _CACHE_AXES, mesh), _constrain(v, _CACHE_AXES, mesh)))
  x = norm(x[:, 0], top["final_norm"], config)
  return _logits(top, config, x), tuple(new_cache)


# ----------------------------------------------------------------------------- prefill


def prefill_prompts(params, tokens, prompt_mask, *, config: ModelConfig, shared: int = 0):
  """One forward over U left-padded prompts tokens [U,Tb]. Returns (KV cache
  {"k","v": [L,U,Tb,K,H]}, fp32 next-token logits [U,V], real lengths [U]).

  shared: P > 0 when every row's first P real tokens are the same and every row has
  more than P (`shared_prefix`; a chat template's system prompt is most of a short
  prompt). Those P run once, for one row, and each row runs only its last Tb - P
  slots, attending to the shared keys; the cache is then laid out as the left-padded
  forward lays it out, so decoding is unchanged. Equal to shared=0 up to float
  rounding (other matmul shapes). Not for sliding-window models: the window mask
  reads slot distance as position distance, which a gap between the shared keys and
  a short row's own does not keep."""
  U, Tb = tokens.shape
  prompt_mask = prompt_mask.astype(bool)
  lengths = prompt_mask.sum(-1).astype(jnp.int32)
  model = Transformer(config)
  if not shared:
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0)
    hidden, cache = model.apply(
        {"params": params}, tokens, positions, causal_mask(prompt_mask),
        cache=init_cache(config, U, Tb), cache_index=0, return_hidden=True)
    return cache, project_logits(params, config, hidden[:, -1]), lengths
  P, Ts = shared, Tb - shared
  slots = jnp.arange(Tb)
  # the shared tokens, once: row 0's first P real tokens into cache slots [0, P)
  prefix = jax.lax.dynamic_slice_in_dim(tokens[0], Tb - lengths[0], P)[None]
  _, cache = model.apply(
      {"params": params}, prefix, jnp.arange(P)[None], (slots[None] <= jnp.arange(P)[:, None])[None],
      cache=init_cache(config, 1, Tb), cache_index=0, return_hidden=True)
  cache = jax.tree.map(lambda c: jnp.broadcast_to(c, c.shape[:1] + (U,) + c.shape[2:]), cache)
  # each row's own tokens sit right-aligned in slots [P, Tb) of the left-padded input
  own = jnp.arange(Ts)[None] >= (Ts - (lengths - P))[:, None]                  # [U,Ts]
  positions = P + jnp.maximum(jnp.cumsum(own, axis=-1) - 1, 0)
  keys = jnp.concatenate([jnp.ones((U, P), bool), own], axis=-1)               # [U,Tb]
  mask = (slots[None] <= (P + jnp.arange(Ts))[:, None])[None] & keys[:, None, :]
  hidden, cache = model.apply(
      {"params": params}, tokens[:, P:], positions, mask, cache=cache, cache_index=P,
      return_hidden=True)
  # the shared keys move from slots [0, P) to just before the row's own (left padding)
  start = (Tb - lengths)[:, None]
  source = jnp.where((slots[None] >= start) & (slots[None] < start + P), slots[None] - start,
                     slots[None])                                              # [U,Tb]
  cache = jax.tree.map(
      lambda c: jnp.take_along_axis(c, source[None, :, :, None, None], axis=2), cache)
  return cache, project_logits(params, config, hidden[:, -1]), lengths


def shared_prefix(rows, unit: int = 16) -> int:
  """The `shared` argument of `prefill_prompts` for these token rows: how many tokens
  all of them start with, leaving each at least one of its own, rounded down to a
  multiple of `unit` (few distinct values: each compiles its own prefill); 0 when
  that is less than `unit`."""
  n = min(len(r) for r in rows) - 1
  if n < unit:
    return 0
  first = np.asarray(rows[0][:n])
  for r in rows[1:]:
    differ = np.flatnonzero(np.asarray(r[:n]) != first)
    if differ.size:
      n = int(differ[0])
      if n < unit:
        return 0
      first = first[:n]
  return n // unit * unit


def row_key_data(seed, row_prompt, row_sample):
  """uint32 key data [B,2] of each row's PRNG key, derived from (seed, prompt index,
  sample index) only, so a row's sample does not depend on how the request was
  chunked, sorted, sharded or scheduled into slots."""
  base = jax.random.key(seed)
  keys = jax.vmap(lambda p, s: jax.random.fold_in(jax.random.fold_in(base, p), s))(
      row_prompt, row_sample)
  return jax.random.key_data(keys)


# size: a jitted kernel; its arrays and static settings are its parameters
def prefill(params, tokens, prompt_mask, row_prompt, row_sample, row_real, row_limit, seed,
            *, config: ModelConfig, group: int, max_new: int, stop_width: int,
            mesh: Optional[Mesh] = None, shared: int = 0) -> DecodeState:
  """Runs the U left-padded prompts tokens [U,Tb] once and broadcasts each prompt's
  KV cache and next-token logits to its `group` rows (B = U * group).

  row_prompt/row_sample [B] name each row's (prompt, sample) pair (its PRNG key,
  `row_key_data`); row_limit [B] is its new-token budget. Padding rows (row_real
  False) start done. shared: the prompts' common first tokens, run once
  (`prefill_prompts`)."""
  U, Tb = tokens.shape
  B, S = U * group, Tb + max_new
  cache, logits, lengths = prefill_prompts(params, tokens, prompt_mask, config=config,
                                           shared=shared)

  def widen(c):  # [L,U,Tb,K,H] -> L x [B,S,K,H]: repeat per sample, room for new tokens
    c = jnp.repeat(c, group, axis=1)
    c = jnp.pad(c, ((0, 0), (0, 0), (0, max_new), (0, 0), (0, 0)))
    return [_constrain(c[i], _CACHE_AXES, mesh) for i in range(config.num_layers)]

  cache = tuple(zip(widen(cache["k"]), widen(cache["v"])))
  row_keys = jax.random.wrap_key_data(row_key_data(seed, row_prompt, row_sample))
  batch = lambda x: _constrain(x, ("batch",) + (None,) * (x.ndim - 1), mesh)
  zeros_f = jnp.zeros((B, max_new), jnp.float32)
  return DecodeState(
      cache=cache,
      logits=batch(jnp.repeat(logits, group, axis=0)),
      step=jnp.zeros((), jnp.int32),
      positions=batch(jnp.repeat(lengths, group, axis=0)),
      prompt_mask=batch(jnp.repeat(prompt_mask.astype(bool), group, axis=0)),
      row_keys=row_keys,
      tokens=batch(jnp.zeros((B, max_new), jnp.int32)),
      logprobs=batch(zeros_f), sample_logprobs=batch(zeros_f),
      recent=batch(jnp.full((B, stop_width), -1, jnp.int32)),
      done=batch(~row_real.astype(bool)),
      finish=batch(jnp.zeros((B,), jnp.int32)),
      length=batch(jnp.zeros((B,), jnp.int32)),
      stop_len=batch(jnp.zeros((B,), jnp.int32)),
      limit=batch(jnp.minimum(row_limit.astype(jnp.int32), max_new)))


# ----------------------------------------------------------------------------- decode


def _stop_hits(recent, stop_table, stop_valid):
  """recent [B,W], stop_table/stop_valid [NS,W] (right-aligned) -> (hit [B],
  matched length [B]). A sequence matches when the last tokens equal it."""
  eq = (recent[:, None, :] == stop_table[None]) | ~stop_valid[None]     # [B,NS,W]
  hit = jnp.all(eq, axis=-1)                                           # [B,NS]
  lens = stop_valid.sum(-1).astype(jnp.int32)                          # [NS]
  return hit.any(-1), jnp.max(jnp.where(hit, lens[None], 0), axis=-1)


class NextTokens(NamedTuple):
  """One decode step's choice for every row (all [B] except recent [B,W])."""
  token: jax.Array
  logprob: jax.Array         # under the model's distribution
  sample_logprob: jax.Array  # under the sampling distribution
  recent: jax.Array          # last W tokens including this one
  code: jax.Array            # finish code if the row ended here, else RUNNING
  trailing: jax.Array        # tokens of the EOS / stop sequence that ended it


# size: a jitted kernel; its arrays and static settings are its parameters
def next_tokens(logits, keys, recent, at_limit, eos_ids, stop_table, stop_valid,
                temperature, top_p, choose) -> NextTokens:
  """Chooses each row's next token from fp32 logits [B,V] and says whether it ends
  the row (EOS before a stop sequence before the length budget `at_limit` [B]).
  Shared by the bucketed and the continuous decode loops."""
  tok, sample_lp = choose(logits, keys, temperature, top_p)
  chosen = jnp.take_along_axis(logits, tok[:, None], axis=-1)[:, 0]
  raw_lp = chosen - jax.nn.logsumexp(logits, axis=-1)
  recent = jnp.concatenate([recent[:, 1:], tok[:, None]], axis=1)
  is_eos = jnp.any(tok[:, None] == eos_ids[None, :], axis=-1)
  if stop_table.shape[0]:
    is_stop, stop_len = _stop_hits(recent, stop_table, stop_valid)
    is_stop &= ~is_eos
  else:
    is_stop, stop_len = jnp.zeros_like(is_eos), jnp.zeros(tok.shape, jnp.int32)
  code = jnp.where(is_eos, EOS, jnp.where(is_stop, STOP, jnp.where(at_limit, LENGTH,
                                                                   RUNNING)))
  trailing = jnp.where(is_eos, 1, jnp.where(is_stop, stop_len, 0))
  return NextTokens(tok, raw_lp, sample_lp, recent, code, trailing)


# size: a jitted kernel; its arrays and static settings are its parameters
def decode(params, state: DecodeState, eos_ids, stop_table, stop_valid, temperature,
           top_p, *, config: ModelConfig, choice: Choice,
           mesh: Optional[Mesh] = None) -> DecodeState:
  """Generates up to M tokens for every row inside one `lax.while_loop`, which ends
  early once every row has finished. eos_ids [E] int32; stop_table/stop_valid [NS,W]
  (NS may be 0). Returns the final state: the whole state is returned (not just the
  outputs) so that every donated input buffer, the KV cache above all, is aliased to
  an output and the loop runs in place instead of on a copy."""
  top, layers = cast_params(params, config)
  choose = functools.partial(CHOOSERS[choice.name], choice=choice)
  B, M = state.tokens.shape
  Tb = state.prompt_mask.shape[1]
  gen_slots = jnp.arange(M, dtype=jnp.int32)

  def cond(s: DecodeState):
    return (s.step < M) & ~jnp.all(s.done)

  def body(s: DecodeState) -> DecodeState:
    t = s.step
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(s.row_keys, t)
    active = ~s.done
    nt = next_tokens(s.logits, keys, s.recent, t + 1 >= s.limit, eos_ids, stop_table,
                     stop_valid, temperature, top_p, choose)
    write = lambda buf, val: jax.lax.dynamic_update_slice_in_dim(
        buf, jnp.where(active, val, jnp.zeros_like(val))[:, None], t, axis=1)
    code = jnp.where(active, nt.code, s.finish)

    # Attend to the real prompt slots and to the generated slots up to this one.
    key_mask = jnp.concatenate(
        [s.prompt_mask, jnp.broadcast_to(gen_slots[None] <= t, (B, M))], axis=1)
    logits, cache = forward_step(top, layers, config, s.cache, nt.token, s.positions,
                                 key_mask, Tb + t, mesh)
    return s._replace(
        cache=cache, logits=logits, step=t + 1, positions=s.positions + 1,
        tokens=write(s.tokens, nt.token), logprobs=write(s.logprobs, nt.logprob),
        sample_logprobs=write(s.sample_logprobs, nt.sample_logprob), recent=nt.recent,
        done=s.done | (active & (code != RUNNING)), finish=code,
        length=jnp.where(active, t + 1, s.length),
        stop_len=jnp.where(active, nt.trailing, s.stop_len))

  return jax.lax.while_loop(cond, body, state)
