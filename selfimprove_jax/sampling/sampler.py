"""`Sampler`: turns lists of token-id prompts into `Completion`s, G per prompt.

It owns the host side of sampling: validation, grouping prompts with their G samples
into units that share one prefill, sorting by length and chunking into at most
`max_batch` rows per device call, left-padding into length buckets, placing the
batch sharded over data x fsdp, and counting compilations. The device side is
`decode.py`: one jitted prefill and one jitted decode loop per (bucket, rows,
max_new_tokens, chooser, stop-table shape).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from selfimprove_jax import sharding as sharding_lib
from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.model.params import param_shardings
from selfimprove_jax.sampling import decode as decode_lib
from selfimprove_jax.sampling.params import FINISH_REASONS, Completion, SamplingParams

_FINISH_NAMES = {decode_lib.EOS: "eos", decode_lib.STOP: "stop",
                 decode_lib.LENGTH: "length"}
assert set(_FINISH_NAMES.values()) == set(FINISH_REASONS)
_OUTPUTS = ("tokens", "logprobs", "sample_logprobs", "length", "finish", "stop_len")


def _next_pow2(x: int) -> int:
  return 1 << max(0, int(x) - 1).bit_length()


def bucket_length(length: int, min_bucket: int = 32) -> int:
  """Padded prompt length from `min_bucket` on: the smaller of the next power of two
  and 1.5x the power of two below it (32, 48, 64, 96, 128, 192, ...): two shapes per
  octave, at most 1.5x padding. A 46-token chat prompt pads to 48, not 64 -- prefill
  is most of the sampling cost for short answers."""
  p = _next_pow2(length)
  three_halves = 3 * p // 4
  return max(min_bucket, three_halves if length <= three_halves and p >= 4 else p)


@dataclasses.dataclass(frozen=True)
class _Unit:
  """One prefill: prompt `prompt` shared by samples [sample_start, +count)."""
  prompt: int
  sample_start: int
  count: int


class Sampler:
  """Batched generation with a static, bucketed set of compiled functions.

  config: the model architecture (its `dtype` is the compute dtype; the KV cache
  uses it too). mesh: where params live and the batch is sharded (data x fsdp);
  default one device. eos_ids: tokens that end a completion (default the config's).
  tokenizer: only needed to encode text stop sequences. max_batch: rows per device
  call; larger requests are chunked and the last chunk padded. `num_compilations`
  counts traces of the prefill and decode functions (each one compiles once);
  `traces` lists (function, array shapes) per trace, for diagnostics and tests."""

  def __init__(self, config: ModelConfig, mesh: Optional[Mesh] = None,
               eos_ids: Optional[Sequence[int]] = None, tokenizer=None,
               max_batch: int = 256, min_bucket: int = 32, pad_id: int = 0):
    self.config = config
    self.mesh = mesh or sharding_lib.single_device_mesh()
    if eos_ids is None:
      eos_ids = config.eos_token_id
    if eos_ids is None:
      eos_ids = ()
    self.eos_ids = tuple(int(e) for e in np.atleast_1d(eos_ids))
    self.tokenizer = tokenizer
    if max_batch < 1:
      raise UserError(f"max_batch must be >= 1, got {max_batch}")
    self.max_batch = int(max_batch)
    self.min_bucket = int(min_bucket)
    self.pad_id = int(pad_id)
    self.num_compilations = 0
    self.traces: list[tuple[str, tuple]] = []
    self._param_shardings = param_shardings(config, self.mesh)
    self._prefill = jax.jit(
        self._counted(decode_lib.prefill),
        static_argnames=("config", "group", "max_new", "stop_width", "mesh"))
    # The loop state (KV cache included) is donated: its buffers become the loop's.
    self._decode = jax.jit(
        self._counted(decode_lib.decode), static_argnames=("config", "choice", "mesh"),
        donate_argnums=(1,))

  def _counted(self, fn):
    @functools.wraps(fn)
    def traced(*args, **kwargs):
      self.num_compilations += 1  # runs only when jit traces, i.e. compiles
      shapes = tuple(tuple(x.shape) for x in jax.tree.leaves(args[1:]) if hasattr(x, "shape"))
      self.traces.append((fn.__name__, shapes))
      return fn(*args, **kwargs)
    return traced

  # --------------------------------------------------------------------------- host

  def _stop_table(self, sp: SamplingParams):
    """Stop sequences as right-aligned id rows [NS,W] and their validity."""
    seqs = []
    for s in sp.stop_sequences:
      if isinstance(s, str):
        if self.tokenizer is None:
          raise UserError(f"stop sequence {s!r} is text but the sampler has no tokenizer")
        ids = tuple(self.tokenizer.encode(s, add_special_tokens=False))
        if not ids:
          raise UserError(f"stop sequence {s!r} encodes to no tokens")
        seqs.append(ids)
      else:
        seqs.append(tuple(s))
    W = max([1] + [len(s) for s in seqs])
    table = np.full((len(seqs), W), -1, np.int32)
    valid = np.zeros((len(seqs), W), bool)
    for i, s in enumerate(seqs):
      table[i, W - len(s):] = s
      valid[i, W - len(s):] = True
    return table, valid

  def _check_prompts(self, prompts):
    out = []
    V = self.config.vocab_size
    for i, p in enumerate(prompts):
      arr = np.asarray(p, dtype=np.int64).reshape(-1)
      if arr.size == 0:
        raise UserError(f"prompt {i} is empty; a prompt needs at least one token")
      if arr.min() < 0 or arr.max() >= V:
        raise UserError(f"prompt {i} has token ids outside [0, {V})")
      out.append(arr.astype(np.int32))
    return out

  def _put(self, array: np.ndarray):
    """Host array -> device, leading axis sharded over data x fsdp when it divides."""
    sh = sharding_lib.logical_sharding(("batch",) + (None,) * (array.ndim - 1),
                                       array.shape, self.mesh)
    return sharding_lib.put_from_host(array, sh)

  def _fetch(self, tree):
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)

  # --------------------------------------------------------------------------- api

  def generate(self, params, prompts: Sequence[Sequence[int]], sp: SamplingParams,
               n: int = 1, seed: int = 0, progress: bool = False) -> list[Completion]:
    """`n` completions per prompt (token-id lists), ordered by (prompt, sample).

    Samples are reproducible from (seed, prompt index, sample index) alone, whatever
    the chunking. Rows of one prompt share one prefill (up to max_batch rows)."""
    if n < 1:
      raise UserError(f"n must be >= 1, got {n}")
    if not isinstance(sp, SamplingParams):
      sp = SamplingParams.from_config(sp)
    prompts = self._check_prompts(prompts)
    if not prompts:
      return []
    table, valid = self._stop_table(sp)
    params = jax.device_put(params, self._param_shardings)  # no-op when already placed
    choice = decode_lib.make_choice(sp.is_greedy, sp.top_k, sp.top_p, self.config.vocab_size)
    consts = (jnp.asarray(self.eos_ids or (-1,), jnp.int32), jnp.asarray(table),
              jnp.asarray(valid), jnp.float32(sp.temperature or 1.0), jnp.float32(sp.top_p))

    group = min(n, self.max_batch)
    units = [_Unit(p, s, min(group, n - s)) for p in range(len(prompts))
             for s in range(0, n, group)]
    # Longest first: similar lengths share a chunk, so a chunk pads little.
    units.sort(key=lambda u: (-len(prompts[u.prompt]), u.prompt, u.sample_start))
    max_units = max(1, self.max_batch // group)
    per_call = min(max_units, _next_pow2(len(units)))
    chunks = [units[i:i + per_call] for i in range(0, len(units), per_call)]

    bar = None
    if progress:
      from tqdm.auto import tqdm
      bar = tqdm(total=len(prompts) * n, desc="sampling", unit="seq")
    results: list[Completion] = []
    pending = None
    for chunk in chunks:
      launched = self._launch(params, prompts, chunk, per_call, group, sp, choice,
                              table.shape[1], seed, consts)
      if pending is not None:  # fetch the previous chunk while this one runs
        results += self._collect(*pending, bar)
      pending = (chunk, group, launched)
    results += self._collect(*pending, bar)
    if bar is not None:
      bar.close()
    results.sort(key=lambda c: (c.prompt_index, c.sample_index))
    return results

  def _launch(self, params, prompts, chunk, per_call, group, sp, choice, stop_width, seed,
              consts):
    Tb = bucket_length(max(len(prompts[u.prompt]) for u in chunk), self.min_bucket)
    U, B = per_call, per_call * group
    tokens = np.full((U, Tb), self.pad_id, np.int32)
    mask = np.zeros((U, Tb), bool)
    row_prompt = np.zeros((B,), np.int32)
    row_sample = np.zeros((B,), np.int32)
    row_real = np.zeros((B,), bool)
    for i in range(U):
      u = chunk[i] if i < len(chunk) else chunk[0]   # padding units repeat a real one
      p = prompts[u.prompt]
      tokens[i, Tb - len(p):] = p
      mask[i, Tb - len(p):] = True
      rows = slice(i * group, (i + 1) * group)
      row_prompt[rows] = u.prompt
      row_sample[rows] = u.sample_start + np.arange(group)
      row_real[rows] = (i < len(chunk)) & (np.arange(group) < u.count)
    state = self._prefill(
        params, self._put(tokens), self._put(mask), self._put(row_prompt),
        self._put(row_sample), self._put(row_real), jnp.uint32(seed % (1 << 32)),
        config=self.config, group=group, max_new=sp.max_new_tokens, stop_width=stop_width,
        mesh=self.mesh)
    return self._decode(params, state, *consts, config=self.config, choice=choice,
                        mesh=self.mesh)

  def _collect(self, chunk, group, outputs, bar) -> list[Completion]:
    out = self._fetch({k: getattr(outputs, k) for k in _OUTPUTS})
    results = []
    for i, u in enumerate(chunk):
      for j in range(u.count):
        r = i * group + j
        n_tok = int(out["length"][r])
        results.append(Completion(
            prompt_index=u.prompt, sample_index=u.sample_start + j,
            tokens=out["tokens"][r, :n_tok].astype(np.int32),
            logprobs=out["logprobs"][r, :n_tok].astype(np.float32),
            sample_logprobs=out["sample_logprobs"][r, :n_tok].astype(np.float32),
            finish_reason=_FINISH_NAMES[int(out["finish"][r])],
            num_stop_tokens=int(out["stop_len"][r])))
    if bar is not None:
      bar.update(len(results))
    return results
