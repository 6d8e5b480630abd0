"""Per-token log-probabilities (and entropy) with the vocabulary projection chunked
over time, so the [B, T, V] fp32 logits never exist whole.

Alignment convention (used by every loss and by the batch format): position t holds
log p(tokens[t] | tokens[:t]), the log-prob of the token *at* t. Position 0 has no
prediction and is 0; so is every padding position (input_mask 0). A `loss_mask`
therefore marks the completion tokens themselves, and the sampler's per-token
log-probs of a completion line up with its token positions.

Cost and savings of the chunking (chunk = c time positions, B rows, vocab V):
  * memory: the head activations are B*c*V*4 bytes per chunk instead of B*T*V*4 for
    the whole batch -- and again for their gradient. SmolLM2-135M at 16 x 1024 with
    V=49152: 3.2 GB of logits (+3.2 GB gradient, + softmax temporaries) whole,
    0.8 GB per 256-position chunk.
  * compute: each chunk's logits are rematerialised in the backward pass instead of
    stored, i.e. one extra [B*T, D] x [D, V] matmul (2*B*T*D*V FLOPs: 57 MFLOP of the
    1.02 GFLOP per token of a SmolLM2-135M training step at T=1024, about
    6%), and the T/c chunks run one after another. Measured on an H100 (SmolLM2-135M,
    16 x 1024, remat): 229k tokens/s with c=256 vs 259k whole (benchmarks/RESULTS.md),
    so use chunk 0 where the whole logits fit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selfimprove_jax.model import llama
from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.model.params import param_shardings


def _chunk_stats(params, config: ModelConfig, hidden, targets, with_entropy: bool):
  """hidden [B,c,D], targets [B,c] -> log p(target) [B,c] and entropy [B,c] (fp32)."""
  logits = llama.project_logits(params, config, hidden)             # [B,c,V] fp32
  lse = jax.nn.logsumexp(logits, axis=-1)
  # The target's logit by a masked sum rather than a gather: the sum fuses into one
  # pass over the logits, and its gradient is an elementwise select that fuses into
  # the softmax gradient, where a gather's is a scatter into a zeroed [B,c,V] array
  # (one more full write and read; 249k vs 239k tokens/s on the H100 benchmark).
  hit = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == targets[..., None]
  logp = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1) - lse
  if not with_entropy:
    return logp, jnp.zeros_like(logp)
  probs = jnp.exp(logits - lse[..., None])
  return logp, lse - jnp.sum(probs * logits, axis=-1)


def token_logprobs(params, config: ModelConfig, tokens, input_mask=None, chunk: int = 0,
                   return_entropy: bool = False, right_padded: bool = True):
  """log p(tokens[:, t] | tokens[:, :t]) as [B,T] fp32 (0 at t=0 and on padding).

  chunk: time positions per vocab projection (0 or >= T: one piece). With
  return_entropy, also the entropy [B,T] of the distribution that predicted each
  position (same alignment). Batches are right-padded (the batch format), which lets
  the model use fused causal attention; pass right_padded=False for left padding."""
  B, T = tokens.shape
  if input_mask is None:
    input_mask = jnp.ones((B, T), bool)
  input_mask = input_mask.astype(bool)
  hidden = llama.forward(params, config, tokens, input_mask, return_hidden=True,
                         right_padded=right_padded)                     # [B,T,D]
  # hidden[:, t] predicts tokens[:, t+1]; the last position predicts nothing (its
  # wrapped-around target is dropped by the shift below).
  targets = jnp.roll(tokens, -1, axis=1)
  stats = functools.partial(_chunk_stats, config=config, with_entropy=return_entropy)

  c = T if chunk <= 0 or chunk >= T else chunk
  if c == T:
    logp, ent = stats(params, hidden=hidden, targets=targets)
  else:
    pad = (-T) % c
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    C = (T + pad) // c
    hidden = hidden.reshape(B, C, c, -1).swapaxes(0, 1)                # [C,B,c,D]
    targets = targets.reshape(B, C, c).swapaxes(0, 1)                  # [C,B,c]
    # Without the checkpoint, autodiff through the map would keep every chunk's
    # logits as residuals -- exactly the [B,T,V] array the chunking avoids.
    one = jax.checkpoint(lambda p, h, y: stats(p, hidden=h, targets=y))
    logp, ent = jax.lax.map(lambda xs: one(params, *xs), (hidden, targets))
    logp = logp.swapaxes(0, 1).reshape(B, T + pad)[:, :T]
    ent = ent.swapaxes(0, 1).reshape(B, T + pad)[:, :T]

  shift = lambda x: jnp.where(input_mask, jnp.pad(x[:, :-1], ((0, 0), (1, 0))), 0.0)
  if return_entropy:
    return shift(logp), shift(ent)
  return shift(logp)


def make_logprob_fn(config: ModelConfig, mesh: Mesh, chunk: int = 256):
  """Jitted `fn(params, tokens, input_mask) -> logprobs [B,T]` for reference and old
  log-probs, computed once per batch by the loop. Params keep their rule-table
  sharding; the batch is split over data x fsdp."""
  batch = NamedSharding(mesh, P(("data", "fsdp")))
  fn = functools.partial(_logprobs_no_grad, config=config, chunk=chunk)
  return jax.jit(fn, in_shardings=(param_shardings(config, mesh), batch, batch),
                 out_shardings=batch)


def _logprobs_no_grad(params, tokens, input_mask, config, chunk):
  return token_logprobs(jax.lax.stop_gradient(params), config, tokens, input_mask, chunk)
