"""`Sampler`: turns lists of token-id prompts into `Completion`s, G per prompt.

It owns the host side of sampling: validation, grouping prompts with their G samples
into units that share one prefill, sorting by length, left-padding into length
buckets, placing the batch sharded over data x fsdp, counting compilations, and
choosing between two schedules (`batching`):

* "bucketed" (`decode.py`): chunks of at most `max_batch` rows, each prefilled
  together and decoded until its longest row ends. One prefill and one decode loop
  compiled per (bucket, rows, max_new_tokens, chooser, stop-table shape).
* "continuous" (`continuous.py`): `max_batch` decode slots; whenever an eighth of
  them are free, the next waiting prompts are prefilled into them. One ring-cache
  decode loop per (slots, cache length, result rows, max_new_tokens, chooser,
  stop-table shape) and one admission per prompt bucket.
* "auto" (the default) picks continuous when it can gain: more rows than slots
  (otherwise every row starts at once and the two schedules do the same steps) and
  rows that can end early (EOS ids, stop sequences or per-prompt budgets). Fixed-
  length work (EOS ignored, one budget) stays bucketed, which skips the ring mask
  and the result scatters (benchmarks/sampling.py measures both).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.model.params import param_shardings
from selfimprove_jax.runtime import sharding as sharding_lib
from selfimprove_jax.sampling import continuous as continuous_lib
from selfimprove_jax.sampling import decode as decode_lib
from selfimprove_jax.sampling.params import (FINISH_REASONS, Completion, Feed, Request,
                                             SamplingParams)

_FINISH_NAMES = {decode_lib.EOS: "eos", decode_lib.STOP: "stop",
                 decode_lib.LENGTH: "length"}
assert set(_FINISH_NAMES.values()) == set(FINISH_REASONS)
_OUTPUTS = ("tokens", "logprobs", "sample_logprobs", "length", "finish", "stop_len")
BATCHING = ("auto", "bucketed", "continuous")
# Continuous batching refills once this share of the slots is free: fewer, larger
# admissions (one host round trip and one prefill each) against slots left idle.
_REFILL_SHARE = 8


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


@dataclasses.dataclass(frozen=True, eq=False)
class _Work:
  """One `generate` call as the two schedules read it."""
  prompts: list                 # checked prompts, int32 token arrays
  units: list                   # the prefills (_Unit), longest prompt first
  group: int                    # rows per prefill at most
  n: int                        # samples per prompt
  sp: SamplingParams
  choice: decode_lib.Choice     # static: how tokens are chosen
  stop_width: int               # W of the stop table
  seed: jax.Array               # [] uint32
  controls: continuous_lib.Controls   # traced: EOS ids, stop table, temperature, top_p
  limits: np.ndarray            # [P] int32 new-token budget per prompt


class Sampler:
  """Batched generation with a static, bucketed set of compiled functions.

  config: the model architecture (its `dtype` is the compute dtype; the KV cache
  uses it too). mesh: where params live and the batch is sharded (data x fsdp);
  default one device. eos_ids: tokens that end a completion (default the config's).
  tokenizer: only needed to encode text stop sequences. max_batch: rows per device
  call (bucketed: larger requests are chunked and the last chunk padded;
  continuous: the number of decode slots). batching: "auto", "bucketed" or
  "continuous" (module docstring). share_prefix: prefill the prompts' common first
  tokens (a chat template's system prompt) once per prefill call rather than once
  per prompt (`decode.prefill_prompts`; `shared_tokens` counts the prompt tokens
  not recomputed). `num_compilations` counts traces of the prefill and decode
  functions (each one compiles once); `decode_steps` counts decode-loop iterations
  (each decodes one token for every row or slot, running or not); `traces` lists
  (function, array shapes) per trace, for diagnostics and tests."""

  # size: the sampler's settings, each a keyword with a default, and its jitted kernels
  def __init__(self, config: ModelConfig, mesh: Optional[Mesh] = None,
               eos_ids: Optional[Sequence[int]] = None, tokenizer=None,
               max_batch: int = 256, min_bucket: int = 32, pad_id: int = 0,
               batching: str = "auto", share_prefix: bool = True):
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
    if batching not in BATCHING:
      raise UserError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
    if batching == "continuous" and config.sliding_window is not None:
      raise UserError("batching='continuous' does not support sliding-window attention "
                      "(its ring cache breaks the slot = position distance the window mask "
                      "uses); use 'bucketed' or 'auto'")
    self.batching = batching
    self.min_bucket = int(min_bucket)
    self.pad_id = int(pad_id)
    # Prompts' common first tokens (a chat template's system prompt) prefilled once per
    # prefill call, not once per prompt (`decode.prefill_prompts`); sliding-window
    # models always prefill whole prompts.
    self.share_prefix = bool(share_prefix) and config.sliding_window is None
    self.shared_tokens = 0  # prompt tokens whose prefill was shared, over all calls
    self.num_compilations = 0
    self.decode_steps = 0   # decode-loop iterations run, over all calls (benchmarks)
    self.traces: list[tuple[str, tuple]] = []
    self._param_shardings = param_shardings(config, self.mesh)
    self._prefill = jax.jit(
        self._counted(decode_lib.prefill),
        static_argnames=("config", "group", "max_new", "stop_width", "mesh", "shared"))
    # The loop state (KV cache included) is donated: its buffers become the loop's.
    self._decode = jax.jit(
        self._counted(decode_lib.decode), static_argnames=("config", "choice", "mesh"),
        donate_argnums=(1,))
    self._init_slots = jax.jit(
        self._counted(continuous_lib.init_slots, shapes_from=0),
        static_argnames=("config", "slots", "cache_len", "rows", "max_new", "stop_width",
                         "mesh"))
    self._admit = jax.jit(
        self._counted(continuous_lib.admit),
        static_argnames=("config", "group", "mesh", "shared"),
        donate_argnums=(1,))
    self._run = jax.jit(
        self._counted(continuous_lib.run), static_argnames=("config", "choice", "mesh"),
        donate_argnums=(1,))

  def _counted(self, fn, shapes_from=1):
    @functools.wraps(fn)
    def traced(*args, **kwargs):
      self.num_compilations += 1  # runs only when jit traces, i.e. compiles
      shapes = tuple(tuple(x.shape) for x in jax.tree.leaves(args[shapes_from:])
                     if hasattr(x, "shape"))
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

  def _controls(self, sp: SamplingParams):
    """(static chooser, traced controls) of `sp`: how tokens are drawn and what ends a row."""
    table, valid = self._stop_table(sp)
    choice = decode_lib.make_choice(sp.is_greedy, sp.top_k, sp.top_p, self.config.vocab_size)
    controls = continuous_lib.Controls(
        eos_ids=jnp.asarray(self.eos_ids or (-1,), jnp.int32), stop_table=jnp.asarray(table),
        stop_valid=jnp.asarray(valid), temperature=jnp.float32(sp.temperature or 1.0),
        top_p=jnp.float32(sp.top_p))
    return choice, controls

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
               n: int = 1, seed: int = 0, progress: bool = False,
               max_new_per_prompt: Optional[Sequence[int]] = None) -> list[Completion]:
    """`n` completions per prompt (token-id lists), ordered by (prompt, sample).

    Samples are reproducible from (seed, prompt index, sample index) alone, whatever
    the chunking or schedule. Rows of one prompt share one prefill (up to max_batch
    rows). max_new_per_prompt: an optional new-token budget per prompt (each at most
    sp.max_new_tokens; a row that reaches it finishes with reason "length")."""
    if n < 1:
      raise UserError(f"n must be >= 1, got {n}")
    if not isinstance(sp, SamplingParams):
      sp = SamplingParams.from_config(sp)
    prompts = self._check_prompts(prompts)
    if not prompts:
      return []
    limits = self._limits(max_new_per_prompt, len(prompts), sp.max_new_tokens)
    choice, controls = self._controls(sp)   # a bad stop sequence fails here, first
    params = jax.device_put(params, self._param_shardings)  # no-op when already placed

    group = min(n, self.max_batch)
    units = [_Unit(p, s, min(group, n - s)) for p in range(len(prompts))
             for s in range(0, n, group)]
    # Longest first: similar lengths share a chunk (or an admission), so it pads little.
    units.sort(key=lambda u: (-len(prompts[u.prompt]), u.prompt, u.sample_start))
    bar = None
    if progress:
      from tqdm.auto import tqdm
      bar = tqdm(total=len(prompts) * n, desc="sampling", unit="seq")
    ragged = (bool(self.eos_ids) or controls.stop_table.shape[0] > 0
              or len(set(limits.tolist())) > 1)
    continuous = self.schedule(ragged, len(prompts) * n) == "continuous"
    run = self._generate_continuous if continuous else self._generate_bucketed
    work = _Work(prompts=prompts, units=units, group=group, n=n, sp=sp, choice=choice,
                 stop_width=controls.stop_table.shape[1], seed=jnp.uint32(seed % (1 << 32)),
                 controls=controls, limits=limits)
    results = run(params, work, bar)
    if bar is not None:
      bar.close()
    results.sort(key=lambda c: (c.prompt_index, c.sample_index))
    return results

  def schedule(self, ragged: bool, rows: int) -> str:
    """The schedule `generate` uses for `rows` rows ("auto" resolved). Sliding-window
    models (Gemma 3) stay bucketed: the continuous ring cache puts a key's slot at a
    distance from the query that is not its position distance, which the window mask
    reads."""
    if self.batching != "auto":
      return self.batching
    if self.config.sliding_window is not None:
      return "bucketed"
    return "continuous" if ragged and rows > self.max_batch else "bucketed"

  def _limits(self, per_prompt, num_prompts, max_new) -> np.ndarray:
    if per_prompt is None:
      return np.full((num_prompts,), max_new, np.int32)
    limits = np.asarray(per_prompt, np.int64).reshape(-1)
    if limits.shape[0] != num_prompts:
      raise UserError(f"max_new_per_prompt has {limits.shape[0]} entries for "
                      f"{num_prompts} prompts")
    if limits.min() < 1:
      raise UserError("max_new_per_prompt entries must be >= 1")
    return np.minimum(limits, max_new).astype(np.int32)

  # --------------------------------------------------------------------------- bucketed

  def _generate_bucketed(self, params, work: _Work, bar) -> list[Completion]:
    units, group = work.units, work.group
    max_units = max(1, self.max_batch // group)
    per_call = min(max_units, _next_pow2(len(units)))
    chunks = [units[i:i + per_call] for i in range(0, len(units), per_call)]
    results: list[Completion] = []
    pending = None
    for chunk in chunks:
      launched = self._launch(params, work, chunk, per_call)
      if pending is not None:  # fetch the previous chunk while this one runs
        results += self._collect(*pending, bar)
      pending = (chunk, group, launched)
    return results + self._collect(*pending, bar)

  def _launch(self, params, work: _Work, chunk, per_call):
    """Prefills and decodes one chunk of units (padded to `per_call`); not waited for."""
    prompts, group = work.prompts, work.group
    Tb = bucket_length(max(len(prompts[u.prompt]) for u in chunk), self.min_bucket)
    U, B = per_call, per_call * group
    tokens, mask = self._pad_prompts(prompts, chunk, U, Tb)
    shared = self._shared([prompts[u.prompt] for u in chunk], U)
    row_prompt = np.zeros((B,), np.int32)
    row_sample = np.zeros((B,), np.int32)
    row_real = np.zeros((B,), bool)
    for i in range(U):
      u = chunk[i] if i < len(chunk) else chunk[0]   # padding units repeat a real one
      rows = slice(i * group, (i + 1) * group)
      row_prompt[rows] = u.prompt
      row_sample[rows] = u.sample_start + np.arange(group)
      row_real[rows] = (i < len(chunk)) & (np.arange(group) < u.count)
    state = self._prefill(
        params, self._put(tokens), self._put(mask), self._put(row_prompt),
        self._put(row_sample), self._put(row_real), self._put(work.limits[row_prompt]),
        work.seed, config=self.config, group=group, max_new=work.sp.max_new_tokens,
        stop_width=work.stop_width, mesh=self.mesh, shared=shared)
    return self._decode(params, state, *work.controls, config=self.config,
                        choice=work.choice, mesh=self.mesh)

  def _shared(self, rows, U: int) -> int:
    """The `shared` prefill argument for these prompts (0: whole prompts), counted."""
    if not self.share_prefix or len(rows) < 2:   # one prompt: nothing to share
      return 0
    shared = decode_lib.shared_prefix(rows, self.min_bucket // 2)
    self.shared_tokens += shared * (U - 1)
    return shared

  def _pad_prompts(self, prompts, units, U, Tb):
    """Left-padded tokens [U,Tb] and mask; rows past len(units) repeat the first."""
    tokens = np.full((U, Tb), self.pad_id, np.int32)
    mask = np.zeros((U, Tb), bool)
    for i in range(U):
      p = prompts[units[i if i < len(units) else 0].prompt]
      tokens[i, Tb - len(p):] = p
      mask[i, Tb - len(p):] = True
    return tokens, mask

  # --------------------------------------------------------------------------- continuous

  def _generate_continuous(self, params, work: _Work, bar) -> list[Completion]:
    """Keeps `max_batch` slots busy: admit waiting prompts whenever a refill's worth
    of slots is free, decode until the next refill is due, repeat."""
    prompts, units, group, n = work.prompts, work.units, work.group, work.n
    rows = len(prompts) * n
    # Slots: max_batch (whole prompts' groups of them), fewer for a small request.
    slots = min(self.max_batch, _next_pow2(rows)) // group * group
    refill_units = max(1, slots // _REFILL_SHARE // group)
    refill = refill_units * group
    M = work.sp.max_new_tokens
    t_max = bucket_length(max(len(p) for p in prompts), self.min_bucket)
    N = _next_pow2(rows)     # result rows, a power of two: few compiled shapes
    state = self._init_slots(config=self.config, slots=slots, cache_len=t_max + M, rows=N,
                             max_new=M, stop_width=work.stop_width, mesh=self.mesh)
    queue = list(units)
    free = np.ones((slots,), bool)
    finished = 0
    while True:
      while queue and free.sum() >= refill:
        batch, queue = queue[:refill_units], queue[refill_units:]
        taken = np.flatnonzero(free)[:refill]
        state = self._admit_units(params, state, work, batch, refill_units, taken)
        free[taken] = False
      if not queue and free.all():
        break
      state = self._run(params, state, jnp.int32(refill if queue else slots), work.controls,
                        config=self.config, choice=work.choice, mesh=self.mesh)
      free = self._fetch(state.free).astype(bool)
      if bar is not None:
        done = rows - sum(u.count for u in queue) - int((~free).sum())
        bar.update(max(0, done - finished))
        finished = max(finished, done)
    out = self._fetch({k: getattr(state, k) for k in _OUTPUTS})
    self.decode_steps += int(state.step)
    results = []
    for u in units:
      for j in range(u.count):
        results.append(self._completion(out, u.prompt * n + u.sample_start + j, u.prompt,
                                        u.sample_start + j))
    return results

  def _admit_units(self, params, state, work: _Work, batch, R, taken):
    """Prefill `batch` (padded to R units) into the free slots `taken`."""
    prompts, group, n = work.prompts, work.group, work.n
    slots, N = state.free.shape[0], state.tokens.shape[0]   # B slots, N result rows
    Tb = bucket_length(max(len(prompts[u.prompt]) for u in batch), self.min_bucket)
    tokens, mask = self._pad_prompts(prompts, batch, R, Tb)
    shared = self._shared([prompts[u.prompt] for u in batch], R)
    slot = np.full((R * group,), slots, np.int32)       # `slots`: a dropped padding row
    row = np.full((R * group,), N, np.int32)
    row_prompt = np.zeros((R * group,), np.int32)
    row_sample = np.zeros((R * group,), np.int32)
    k = 0
    for i, u in enumerate(batch):
      for j in range(u.count):
        r = i * group + j
        slot[r], row[r] = taken[k], u.prompt * n + u.sample_start + j
        row_prompt[r], row_sample[r] = u.prompt, u.sample_start + j
        k += 1
    new = continuous_lib.Admission(
        tokens=self._put(tokens), prompt_mask=self._put(mask), slot=self._put(slot),
        row=self._put(row), row_prompt=self._put(row_prompt),
        row_sample=self._put(row_sample), row_limit=self._put(work.limits[row_prompt]))
    return self._admit(params, state, new, work.seed, config=self.config, group=group,
                       mesh=self.mesh, shared=shared)

  # --------------------------------------------------------------------------- serving

  def serve(self, params, feed: Feed, sp: SamplingParams, max_context: int, seed: int = 0,
            progress=None) -> None:
    """Continuous batching over work that appears as earlier work finishes: multi-turn
    episodes, whose next turn exists only once the environment has answered the last.

    Keeps `max_batch` slots busy: takes requests from `feed`, prefills them into free
    slots, decodes until a quarter of the running rows (at most an eighth of the slots)
    have finished, hands the finished ones to
    `feed.done` and takes more. The feed works on what it was handed (an environment
    step, a sandboxed tool call) while the next chunk decodes, and its answers are
    admitted after that chunk, so a slow tool holds back only its own episode, and the
    schedule (hence every sample) depends on the order of events, not their timing.

    A request's context is at most `max_context` tokens and its budget at most
    sp.max_new_tokens (the ring cache is sized from the two). Its tokens are reproducible
    from (seed, request.stream, request.index). `progress`: called with the number of
    requests finished after each chunk."""
    if not isinstance(sp, SamplingParams):
      sp = SamplingParams.from_config(sp)
    if max_context < 1:
      raise UserError(f"max_context must be >= 1, got {max_context}")
    choice, controls = self._controls(sp)
    params = jax.device_put(params, self._param_shardings)
    slots = _next_pow2(self.max_batch)
    if slots > self.max_batch:
      slots //= 2
    refill = max(1, slots // _REFILL_SHARE)
    M = sp.max_new_tokens
    t_max = bucket_length(max_context, self.min_bucket)
    # Results are written by slot (row = slot) and read after every chunk, before a
    # freed slot is handed on, so the buffers need only one row per slot.
    state = self._init_slots(config=self.config, slots=slots, cache_len=t_max + M, rows=slots,
                             max_new=M, stop_width=controls.stop_table.shape[1],
                             mesh=self.mesh)
    held: list = [None] * slots          # the request each slot decodes
    seed32 = jnp.uint32(seed % (1 << 32))
    while True:
      free = [i for i in range(slots) if held[i] is None]
      requests = feed.take(len(free), flush=len(free) == slots)
      if not requests and len(free) == slots:
        break
      for start in range(0, len(requests), refill):
        part, taken = requests[start:start + refill], free[start:start + refill]
        state = self._admit_requests(params, state, part, taken, refill, seed32)
        for r, slot in zip(part, taken):
          held[slot] = r
      # decode until a quarter of the running rows (at most a refill's worth) is done
      running = sum(h is not None for h in held)
      need = slots - running + max(1, min(refill, running // 4))
      state = self._run(params, state, jnp.int32(need), controls, config=self.config,
                        choice=choice, mesh=self.mesh)
      results = self._finished(state, held)
      if results:
        feed.done(results)
        if progress is not None:
          progress(len(results))
    self.decode_steps += int(state.step)

  def _finished(self, state, held: list) -> list:
    """(request, completion) of each slot whose row ended in the last chunk, in slot
    order; their slots in `held` are freed."""
    now_free = self._fetch(state.free).astype(bool)
    ended = [i for i in range(len(held)) if held[i] is not None and now_free[i]]
    if not ended:
      return []
    out = self._fetch({k: getattr(state, k) for k in _OUTPUTS})
    results = []
    for i in ended:
      r, held[i] = held[i], None
      results.append((r, self._completion(out, i, r.stream, r.index)))
    return results

  def _admit_requests(self, params, state, requests, taken, R, seed):
    """Prefill `requests` (padded to R rows) into the slots `taken`."""
    slots, M = state.free.shape[0], state.tokens.shape[1]
    room = state.cache[0][0].shape[1] - M      # the longest context the ring holds
    for r in requests:
      if not 0 < len(r.tokens) <= room or not 0 < r.max_new <= M:
        raise ValueError(f"request ({r.stream}, {r.index}): {len(r.tokens)} context tokens "
                         f"and a budget of {r.max_new} outside the {room} and {M} that "
                         f"serve(max_context=..., sp.max_new_tokens) allow")
    prompts = self._check_prompts([r.tokens for r in requests])
    Tb = bucket_length(max(len(p) for p in prompts), self.min_bucket)
    tokens = np.full((R, Tb), self.pad_id, np.int32)
    mask = np.zeros((R, Tb), bool)
    slot = np.full((R,), slots, np.int32)      # `slots`: a dropped padding row
    stream = np.zeros((R,), np.int32)
    index = np.zeros((R,), np.int32)
    limit = np.ones((R,), np.int32)
    for i in range(R):
      p = prompts[i if i < len(prompts) else 0]
      tokens[i, Tb - len(p):] = p
      mask[i, Tb - len(p):] = True
    for i, (r, s) in enumerate(zip(requests, taken)):
      slot[i], stream[i], index[i], limit[i] = s, r.stream, r.index, r.max_new
    new = continuous_lib.Admission(
        tokens=self._put(tokens), prompt_mask=self._put(mask), slot=self._put(slot),
        row=self._put(slot), row_prompt=self._put(stream), row_sample=self._put(index),
        row_limit=self._put(limit))
    return self._admit(params, state, new, seed, config=self.config, group=1, mesh=self.mesh,
                       shared=self._shared(prompts, R))

  # --------------------------------------------------------------------------- results

  def _completion(self, out, r, prompt, sample) -> Completion:
    n_tok = int(out["length"][r])
    return Completion(
        prompt_index=prompt, sample_index=sample,
        tokens=out["tokens"][r, :n_tok].astype(np.int32),
        logprobs=out["logprobs"][r, :n_tok].astype(np.float32),
        sample_logprobs=out["sample_logprobs"][r, :n_tok].astype(np.float32),
        finish_reason=_FINISH_NAMES[int(out["finish"][r])],
        num_stop_tokens=int(out["stop_len"][r]))

  def _collect(self, chunk, group, outputs, bar) -> list[Completion]:
    out = self._fetch({k: getattr(outputs, k) for k in _OUTPUTS})
    self.decode_steps += int(outputs.step)
    results = [self._completion(out, i * group + j, u.prompt, u.sample_start + j)
               for i, u in enumerate(chunk) for j in range(u.count)]
    if bar is not None:
      bar.update(len(results))
    return results
