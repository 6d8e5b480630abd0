"""Continuous batching: a fixed set of B decode slots; a row that finishes frees its
slot and a waiting sample takes it, so the batch stays full while completion lengths
spread (reasoning answers vary 10-100x in length; the bucketed loop of `decode.py`
runs every chunk until its longest row ends).

Pure functions of arrays, jitted by `sampler.py`, which owns the queue of waiting
prompts and decides when to refill:

* `init_slots` builds the empty state (every slot free).
* `admit` prefills R waiting prompts at once ([R,Tb], one compilation per prompt
  bucket Tb) and copies each prompt's KV cache and next-token logits into the `group`
  free slots of its samples (G samples of a prompt share one prefill, as in the
  bucketed path).
* `run` decodes every slot inside one `lax.while_loop` until at least `min_free`
  slots are free (or all are), writing each row's tokens and log-probs straight into
  result buffers [N,M] indexed by sample, so a freed slot holds nothing to save.

The KV cache is a ring of S = Tmax + M slots per row, written at `step % S` by every
row at once. Rows admitted at different steps then still share one scalar write
index, so `model.llama.block`'s in-place `dynamic_update_slice` serves unchanged (a
per-row write index would be a scatter every layer, every step). A row admitted at
step t has its prompt's keys placed at ring slots t-P..t-1 (mod S) and attends to the
ring slots at distance <= its context length behind the write slot; RoPE is applied
before caching, so where in the ring a key sits does not matter. A row never spans
more than P + M <= S slots, so it never overwrites its own prompt.

A row's PRNG key and its t-th token's key are those of the bucketed path
(`decode.row_key_data`, folded with the row's own token count), so the same seed
gives the same samples whichever path runs, up to float rounding in the attention
sums (keys sit in another order).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.model.llama import compute_dtype
from selfimprove_jax.sampling.decode import (_CACHE_AXES, CHOOSERS, RUNNING, Choice,
                                             _constrain, cast_params, forward_step,
                                             next_tokens, prefill_prompts, row_key_data)


class SlotState(NamedTuple):
  """Carry of the continuous loop: B slots, a ring of S cache slots per row, and
  result buffers for N samples of up to M tokens (W = longest stop sequence or 1).
  An empty slot's `row` is N, which every result write drops."""
  cache: tuple             # L pairs (k [B,S,K,H], v [B,S,K,H]), ring buffers
  logits: jax.Array        # [B,V] fp32 logits for the slot's next token
  step: jax.Array          # [] int32 decode steps run; this step writes ring slot step % S
  context: jax.Array       # [B] int32 cache entries of the slot's row (prompt + generated)
  positions: jax.Array     # [B] int32 position of the next token
  key_data: jax.Array      # [B,2] uint32 the row's PRNG key data
  row: jax.Array           # [B] int32 result index of the slot's sample (N: empty)
  generated: jax.Array     # [B] int32 tokens the row has generated
  limit: jax.Array         # [B] int32 the row's new-token budget (<= M)
  recent: jax.Array        # [B,W] int32 last W tokens (-1 before any)
  free: jax.Array          # [B] bool the slot holds no running row
  tokens: jax.Array        # [N,M] int32 results by sample
  logprobs: jax.Array      # [N,M] fp32, raw model distribution
  sample_logprobs: jax.Array  # [N,M] fp32, sampling distribution
  finish: jax.Array        # [N] int32 finish code
  length: jax.Array        # [N] int32 tokens kept
  stop_len: jax.Array      # [N] int32 trailing tokens that are EOS / stop sequence


def _batch(x, mesh):
  return _constrain(x, ("batch",) + (None,) * (x.ndim - 1), mesh)


def init_slots(*, config: ModelConfig, slots: int, cache_len: int, rows: int,
               max_new: int, stop_width: int, mesh: Optional[Mesh] = None) -> SlotState:
  """All B = `slots` slots free, ring caches of `cache_len` entries, result buffers
  for `rows` samples."""
  B, S, N, M = slots, cache_len, rows, max_new
  dt = compute_dtype(config)
  shape = (B, S, config.num_kv_heads, config.head_dim)
  kv = lambda: _constrain(jnp.zeros(shape, dt), _CACHE_AXES, mesh)
  zeros_b = lambda dtype=jnp.int32: _batch(jnp.zeros((B,), dtype), mesh)
  return SlotState(
      cache=tuple((kv(), kv()) for _ in range(config.num_layers)),
      logits=_batch(jnp.zeros((B, config.vocab_size), jnp.float32), mesh),
      step=jnp.zeros((), jnp.int32), context=zeros_b(), positions=zeros_b(),
      key_data=_batch(jnp.zeros((B, 2), jnp.uint32), mesh),
      row=_batch(jnp.full((B,), N, jnp.int32), mesh), generated=zeros_b(),
      limit=zeros_b(), recent=_batch(jnp.full((B, stop_width), -1, jnp.int32), mesh),
      free=_batch(jnp.ones((B,), bool), mesh),
      tokens=_batch(jnp.zeros((N, M), jnp.int32), mesh),
      logprobs=_batch(jnp.zeros((N, M), jnp.float32), mesh),
      sample_logprobs=_batch(jnp.zeros((N, M), jnp.float32), mesh),
      finish=_batch(jnp.zeros((N,), jnp.int32), mesh),
      length=_batch(jnp.zeros((N,), jnp.int32), mesh),
      stop_len=_batch(jnp.zeros((N,), jnp.int32), mesh))


class Admission(NamedTuple):
  """What `admit` starts: R left-padded prompts and their R*group rows (traced)."""
  tokens: jax.Array        # [R,Tb] int32 prompts, left-padded
  prompt_mask: jax.Array   # [R,Tb] bool
  slot: jax.Array          # [R*group] int32 the row's slot (B for a padding row: dropped)
  row: jax.Array           # [R*group] int32 its result index
  row_prompt: jax.Array    # [R*group] int32 with row_sample: the (prompt, sample) pair
  row_sample: jax.Array    # [R*group] int32   naming its PRNG key
  row_limit: jax.Array     # [R*group] int32 its new-token budget


class Controls(NamedTuple):
  """How tokens are drawn and what ends a row, as traced arrays (new values reuse the
  compiled loop); `decode.decode` takes the same five, in this order."""
  eos_ids: jax.Array       # [E] int32
  stop_table: jax.Array    # [NS,W] int32 stop sequences, right-aligned
  stop_valid: jax.Array    # [NS,W] bool
  temperature: jax.Array   # [] fp32
  top_p: jax.Array         # [] fp32


def admit(params, state: SlotState, new: Admission, seed, *, config: ModelConfig,
          group: int, mesh: Optional[Mesh] = None, shared: int = 0) -> SlotState:
  """Prefills the R prompts of `new` (their first `shared` tokens once:
  `decode.prefill_prompts`) and starts their R*group rows in their slots; `seed` with
  a row's (prompt, sample) pair gives its PRNG key."""
  tokens, slot, row = new.tokens, new.slot, new.row
  cache, logits, lengths = prefill_prompts(params, tokens, new.prompt_mask, config=config,
                                           shared=shared)
  Tb = tokens.shape[1]
  S = state.cache[0][0].shape[1]
  # The prompt's last entry (index Tb-1 of the left-padded prefill) goes to ring slot
  # step-1: roll the zero-padded [.., S, ..] cache by step - Tb.
  shift = jnp.mod(state.step - Tb, S)

  def place(c):  # [R,Tb,K,H] -> [R*group,S,K,H]
    c = jnp.pad(jnp.repeat(c, group, axis=0), ((0, 0), (0, S - Tb), (0, 0), (0, 0)))
    return jnp.roll(c, shift, axis=1)

  new_cache = []
  for i, (k, v) in enumerate(state.cache):
    k = k.at[slot].set(place(cache["k"][i]).astype(k.dtype), mode="drop")
    v = v.at[slot].set(place(cache["v"][i]).astype(v.dtype), mode="drop")
    new_cache.append((_constrain(k, _CACHE_AXES, mesh), _constrain(v, _CACHE_AXES, mesh)))
  lengths = jnp.repeat(lengths, group)
  put = lambda buf, val: _batch(buf.at[slot].set(val.astype(buf.dtype), mode="drop"), mesh)
  M = state.tokens.shape[1]
  return state._replace(
      cache=tuple(new_cache),
      logits=put(state.logits, jnp.repeat(logits, group, axis=0)),
      context=put(state.context, lengths), positions=put(state.positions, lengths),
      key_data=put(state.key_data, row_key_data(seed, new.row_prompt, new.row_sample)),
      row=put(state.row, row), generated=put(state.generated, jnp.zeros_like(row)),
      limit=put(state.limit, jnp.minimum(new.row_limit, M)),
      recent=put(state.recent, jnp.full((row.shape[0], state.recent.shape[1]), -1)),
      free=put(state.free, jnp.zeros(row.shape, bool)))


def run(params, state: SlotState, min_free, controls: Controls, *, config: ModelConfig,
        choice: Choice, mesh: Optional[Mesh] = None) -> SlotState:
  """Decodes every occupied slot, one token per step, inside one `lax.while_loop`
  that ends once at least `min_free` slots are free or no slot is running. Returns
  the whole state (donated by the caller: the ring caches and result buffers are
  updated in place)."""
  top, layers = cast_params(params, config)
  choose = functools.partial(CHOOSERS[choice.name], choice=choice)
  B, S = state.cache[0][0].shape[:2]
  N = state.tokens.shape[0]
  ring = jnp.arange(S, dtype=jnp.int32)

  def cond(s: SlotState):
    free = s.free.sum()
    return (free < min_free) & (free < B)

  def body(s: SlotState) -> SlotState:
    active = ~s.free
    keys = jax.vmap(jax.random.fold_in)(jax.random.wrap_key_data(s.key_data), s.generated)
    nt = next_tokens(s.logits, keys, s.recent, s.generated + 1 >= s.limit, *controls,
                     choose)
    at = jnp.where(active, s.row, N)                   # free slots write nowhere
    write = lambda buf, val: buf.at[at, s.generated].set(val, mode="drop")
    ended = active & (nt.code != RUNNING)
    done_at = jnp.where(ended, s.row, N)
    end = lambda buf, val: buf.at[done_at].set(val, mode="drop")

    # This token's key goes to ring slot step % S; the row's earlier entries lie
    # 1..context slots behind it.
    write_slot = jnp.mod(s.step, S)
    behind = jnp.mod(write_slot - ring, S)                                   # [S]
    key_mask = behind[None, :] <= s.context[:, None]                         # [B,S]
    logits, cache = forward_step(top, layers, config, s.cache, nt.token, s.positions,
                                 key_mask, write_slot, mesh)
    return s._replace(
        cache=cache, logits=logits, step=s.step + 1,
        context=s.context + active, positions=s.positions + active,
        generated=s.generated + active, recent=nt.recent, free=s.free | ended,
        tokens=write(s.tokens, nt.token), logprobs=write(s.logprobs, nt.logprob),
        sample_logprobs=write(s.sample_logprobs, nt.sample_logprob),
        finish=end(s.finish, nt.code), length=end(s.length, s.generated + 1),
        stop_len=end(s.stop_len, nt.trailing))

  return jax.lax.while_loop(cond, body, state)
