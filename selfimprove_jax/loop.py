"""The closed loop: `run(config, workdir)` — acquire, select, optimize, evaluate,
checkpoint, for each iteration, resumable from any interruption.

Iteration 0 evaluates the starting model (the baseline). Each later iteration:
  1. acquire  — G samples per training prompt from the current model, scored by the
                task's verifier (records/iter_K/acquire.jsonl);
  2. select   — the configured filters; the difficulty ledger is updated
                (records/iter_K/select.jsonl);
  3. optimize — sft (expert iteration), dpo on (right, wrong) pairs, or grpo (several
                acquire -> update steps);
  4. evaluate — held-out pass@1 / maj@k / pass@k, then decide: accept, roll back to the
                last accepted weights (held-out drop or a non-finite loss), or stop on
                a plateau;
  5. checkpoint — Orbax checkpoint of the train state and loop state; manifest with
                content hashes of the checkpoint and of the stage records.
Every random choice is derived from (config.seed, iteration, stage), so re-running an
interrupted iteration reproduces it exactly; finished stages' records are reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Optional

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from selfimprove_jax import config as config_lib
from selfimprove_jax import curriculum as curriculum_lib
from selfimprove_jax import distributed
from selfimprove_jax import judge as judge_lib
from selfimprove_jax import refine as refine_lib
from selfimprove_jax import self_instruct
from selfimprove_jax import select as select_lib
from selfimprove_jax import sharding as sharding_lib
from selfimprove_jax import stages
from selfimprove_jax.checkpoint import Checkpointer, fault_point, fault_requested
from selfimprove_jax.errors import UserError
from selfimprove_jax.files import (UnreadableFile, WorkdirLock, hash_path, read_json,
                                   write_json_atomic)
from selfimprove_jax.optimize import create_train_state, make_logprob_fn, make_train_step
from selfimprove_jax.optimize import lora as lora_lib
from selfimprove_jax.reporting import Reporter
from selfimprove_jax.sampling import SamplingParams, make_sampler
from selfimprove_jax.tasks import get_task
from selfimprove_jax.tasks.problem import Problem, derive_seed


class Preempted(Exception):
  """SIGTERM arrived: the finished stages are on disk, the run exits cleanly."""


@dataclasses.dataclass
class LoopState:
  """What a checkpoint holds besides the arrays (JSON)."""
  iteration: int = -1            # last finished iteration (0 = baseline evaluated)
  accepted_iteration: int = -1   # iteration whose weights are current
  best_pass1: float = -1.0
  no_improve: int = 0
  stopped: Optional[str] = None
  difficulty: Optional[int] = None
  data_state: Optional[dict] = None   # Grain iterator state of the training stream
  ledger: dict = dataclasses.field(default_factory=dict)
  history: list = dataclasses.field(default_factory=list)


def _seed(config, iteration: int, stage: str, step: int = 0) -> int:
  return derive_seed(config.seed, iteration, stage, step) % (2**31 - 1)


def _optim_config(config, total_steps: int, loss: str):
  cfg = ml_collections.ConfigDict(config.optim.to_dict())
  cfg.total_steps = max(1, total_steps)
  cfg.loss = loss
  return cfg


class _Signals:
  """SIGTERM and SIGINT (Ctrl-C) during the loop set a flag checked between stages
  (preemption-safe exit: finished stages are on disk). A second signal exits at once,
  with one line; before the loop starts (`starting`), the first one does."""

  NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}

  def __init__(self):
    self.stop = None       # name of the signal that asked to stop
    self.starting = True   # set-up: nothing to finish, exit at once
    self._old = {}

  def __enter__(self):
    for sig in self.NAMES:
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:   # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, _frame):
    name = self.NAMES.get(signum, str(signum))
    if self.starting or self.stop:
      # nothing half-written is at stake here: Orbax saves and record files are
      # atomic renames, and the workdir lock dies with the process
      print(f"{name}: stopped{' during start-up' if self.starting else ' at once'}; "
            f"re-run the same command to continue", file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.stop = name

  def check(self):
    # all processes stop at the same check: one that went on alone would wait forever
    # in the next collective
    if distributed.any_process(bool(self.stop)):
      raise Preempted(self.stop or "a signal on another process")

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


# ----------------------------------------------------------------------------- the loop


def _print(msg: str) -> None:
  print(msg, flush=True)   # stage lines appear as they happen, also when piped to a file


def run(config, workdir: str, override_config: bool = False, log=_print) -> dict:
  """Runs (or resumes) the loop in `workdir`; returns the final loop state as a dict."""
  config_lib.validate(config)
  _make_workdir(workdir)
  with _Signals() as signals, _lock(workdir):
    return _run(config, workdir, override_config, log, signals)


def _make_workdir(workdir: str) -> None:
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} exists and is not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"--workdir {workdir} cannot be created: {e.strerror}") from None


def _lock(workdir: str):
  """One run per workdir; process 0 holds the lock for all processes of a run."""
  return WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()


def _run(config, workdir, override_config, log, signals) -> dict:
  # heavy imports (transformers) kept local to the run
  from selfimprove_jax.weights import load, without_chat_template
  from selfimprove_jax.weights.run_dir import abstract_train_state

  # --- set up: mesh, model, task, sampler, checkpoints
  mesh = sharding_lib.make_mesh(dict(config.mesh))
  base = load(config.model, mesh=mesh, dtype=config.dtype)
  if config.prompt_format == "raw":
    base = without_chat_template(base, config.prompt_template)
  mc = base.config
  if base.tokenizer is None:
    raise UserError(f"model {config.model!r} has no tokenizer; the loop needs one")
  try:
    task = get_task(config.task.name, **config.task.options.to_dict())
  except UserError as e:
    raise UserError(f"task.name={config.task.name!r}: {e}") from None
  heldout = task.heldout(config.task.heldout_size, config.task.difficulty)
  heldout_ids = {p.id for p in heldout}
  sampler = make_sampler(base, mesh=mesh, max_batch=config.sampling.max_batch)
  judge_model = None   # (sampler, LoadedModel) of a separate judge; None = self-judging
  if config.judge.model:
    jm = load(config.judge.model, mesh=mesh, dtype=config.dtype)
    judge_model = (make_sampler(jm, mesh=mesh, max_batch=config.sampling.max_batch), jm)
  if config.curriculum.enabled and task.difficulty_range is None:
    raise UserError(f"curriculum.enabled: task {task.name} has no difficulty knob")
  ckpt = Checkpointer(workdir, is_primary=jax.process_index() == 0, log=log)
  reporter = Reporter(workdir, config, log=log)
  train_cfg = _optim_config(config, 1, _loss_name(config))
  # LoRA: the train state holds adapters (what checkpoints save); the model the
  # stages see is the base with the adapters merged in.
  lora = lora_lib.from_config(config.lora)
  initial = base.params if lora is None else lora_lib.init_lora(mc, lora, config.seed, mesh)
  model_params = lora_lib.model_params_fn(base.params, lora)
  abstract = abstract_train_state(mc, train_cfg, initial, mesh, lora)

  # --- restore, or start from the base model
  state = LoopState(difficulty=config.task.difficulty)
  train_state = create_train_state(mc, train_cfg, initial, mesh, lora)
  # process 0 picks the checkpoint (file checks could race or differ between hosts)
  latest = distributed.broadcast_json(ckpt.latest_good() if distributed.is_primary()
                                      else None)
  if latest is not None:
    train_state, meta = ckpt.restore(latest, abstract)
    _check_compatible(meta["config"], config, workdir, override_config)
    state = LoopState(**meta["loop"])
    reporter.log(f"resuming {workdir} after iteration {state.iteration}")
  # The prompt stream is indices into the task, read whole by every process: sampling
  # is one SPMD program over the global batch, so every host needs every prompt, and
  # the saved iterator state then means the same thing for any process count (a run
  # resumes on more or fewer hosts). Each process feeds devices only its share: the
  # sampler's and train step's batches are placed with `put_from_host`.
  data = grain.MapDataset.range(0, 1 << 31)
  signals.starting = False   # from here a signal stops at the next stage boundary

  try:
    # --- iteration 0: the baseline
    if state.iteration < 0:
      metrics = _evaluate(sampler, model_params(train_state.params), base.tokenizer, task,
                          heldout, config, 0, reporter, judge_model)
      state.best_pass1 = metrics["pass@1"]
      state.accepted_iteration = state.iteration = 0
      state.history.append(dict(iteration=0, **metrics, kept=0, accepted=True,
                                reason="baseline", difficulty=state.difficulty))
      _save(ckpt, 0, train_state, state, config, True, {})
      reporter.iteration(state.history[-1], state.history)

    # --- iterations 1..N
    while state.iteration < config.loop.iterations and not state.stopped:
      k = state.iteration + 1
      signals.check()
      it = iter(data.to_iter_dataset())
      if state.data_state:
        it.set_state(state.data_state)
      start_params = initial if config.loop.restart_from_base else train_state.params
      new_state, info, records_hashes = _iteration(
          k, config, task, heldout_ids, sampler, base, start_params, train_state, it,
          state, mesh, workdir, reporter, signals, judge_model, lora, model_params)
      signals.check()
      metrics = _evaluate(sampler, model_params(new_state.params), base.tokenizer, task,
                          heldout, config, k, reporter, judge_model)
      accepted, reason = _decide(state, metrics, info, config)
      next_difficulty, move = state.difficulty, None
      if config.curriculum.enabled:   # move the training difficulty toward the band
        next_difficulty, move = curriculum_lib.step(
            state.difficulty, curriculum_lib.ledger_pass_rate(info["ledger"], k),
            task.difficulty_range, min_pass_rate=config.curriculum.min_pass_rate,
            max_pass_rate=config.curriculum.max_pass_rate, step_size=config.curriculum.step)
        info["curriculum_move"] = move
        if move:
          reporter.stage(k, "curriculum", f"difficulty {move['from']} -> {move['to']} "
                         f"({move['reason']})")
      if accepted:
        train_state = new_state
        state.accepted_iteration = k
      state.iteration = k
      state.data_state = it.get_state()
      state.ledger = info.pop("ledger")
      state.history.append(dict(iteration=k, **metrics, **info, accepted=accepted,
                                reason=reason, difficulty=state.difficulty))
      state.difficulty = next_difficulty
      _save(ckpt, k, train_state, state, config, accepted, records_hashes)
      # from the loop state, not the manifest: every process must delete the same
      # checkpoints (Orbax deletes collectively) and only process 0 writes the manifest
      ckpt.prune({h["iteration"] for h in state.history if h["accepted"]} | {k})
      reporter.iteration(state.history[-1], state.history)
  except Preempted as e:
    reporter.log(f"{e}: stopping after the last finished stage; re-run the same "
                 f"command to continue from iteration {state.iteration + 1}")
    ckpt.close()
    return dataclasses.asdict(state)

  reporter.finish(state.history, state.stopped)
  ckpt.close()
  return dataclasses.asdict(state)


def _loss_name(config) -> str:
  return {"sft": "sft", "dpo": "dpo", "grpo": config.optim.loss
          if config.optim.loss in ("grpo", "rloo", "dr_grpo") else "grpo"}[config.loop.algorithm]


def _save(ckpt, k, train_state, state, config, accepted, records_hashes):
  meta = {"loop": dataclasses.asdict(state), "config": config.to_dict()}
  meta = json.loads(json.dumps(meta, default=str))
  ckpt.save(k, train_state, meta, accepted, records_hashes)


def _check_compatible(saved: dict, config, workdir: str, override: bool) -> None:
  diffs = config_lib.result_differences(saved, config.to_dict())
  if diffs and not override:
    raise UserError(f"workdir {workdir} was written with a different config "
                    f"({', '.join(diffs[:5])}{'...' if len(diffs) > 5 else ''} differ); "
                    f"use a new workdir or pass --override_config")


# ----------------------------------------------------------------------------- one iteration


def _next_problems(task, config, it, difficulty, proposed=()):
  """This step's prompts: the training stream, with up to a `self_instruct_share` of
  them replaced by the model's own proposals. Returns (problems, proposals used)."""
  P = config.loop.prompts_per_iteration
  m = min(len(proposed), round(config.acquire.self_instruct_share * P))
  idx = [next(it) for _ in range(P - m)]
  return [task.problem(config.seed, i, difficulty) for i in idx] + list(proposed[:m]), m


def _acquire_stage(sampler, params, tok, task, problems, sp, G, seed, k, config, judge_model):
  """Samples (stages.acquire), then the configured extras on those records: judge
  scores (judge.py) and a refinement strategy's training targets (refine.py)."""
  records = stages.acquire(sampler, params, tok, task, problems, sp, G, seed, k,
                           config.log.progress)
  generate = refine_lib.model_generate(sampler, params, tok)
  judge_gen = _judge_generate(judge_model, generate)
  if judge_lib.needed(config):
    records = judge_lib.score_records(judge_gen, records, samples=config.judge.samples,
                                      max_new_tokens=config.judge.max_new_tokens,
                                      seed=seed + 1, use_as_reward=config.judge.use_as_reward)
  if config.acquire.refine_strategy:
    ctx = refine_lib.Context(generate, task, problems, judge=judge_gen)
    records = refine_lib.refine_records(
        config.acquire.refine_strategy, records, problems, ctx,
        refine_lib.StrategyConfig.from_config(config, sp), seed + 2,
        config.acquire.min_vote_share)
  return records


def _judge_generate(judge_model, generate):
  """The judge's generate function: a separate judge model's, else the model's own."""
  if judge_model is None:
    return generate
  judge_sampler, jm = judge_model
  return refine_lib.model_generate(judge_sampler, jm.params, jm.tokenizer)


def _self_instruct_stage(sampler, params, tok, task, config, k, difficulty):
  """The model's proposed problems for iteration k (self_instruct.py), as rows."""
  si = config.self_instruct
  seeds = task.train_problems(_seed(config, k, "self_instruct_seeds"),
                              max(2 * si.examples, 8), difficulty)
  heldout = task.heldout(config.task.heldout_size, config.task.difficulty)
  sp = SamplingParams(temperature=config.sampling.temperature, top_k=config.sampling.top_k,
                      top_p=config.sampling.top_p, max_new_tokens=si.max_new_tokens)
  _, rows = self_instruct.propose(
      refine_lib.model_generate(sampler, params, tok), task, seeds, heldout,
      num_proposals=si.proposals, num_examples=si.examples, sample=sp,
      seed=_seed(config, k, "self_instruct"), ngram=si.ngram, max_overlap=si.max_overlap,
      votes=si.votes, min_vote_share=si.min_vote_share, difficulty=difficulty)
  return rows


def _acquire_cached(path_dir, name, fn, iteration, log):
  """Runs a stage unless its records are on disk with the hash recorded for them.
  Process 0 looks and broadcasts what it found, so all processes sample or none."""
  path = os.path.join(path_dir, f"{name}.jsonl")
  index_path = os.path.join(path_dir, "stages.json")
  found = None
  if distributed.is_primary():
    index = _read_stage_index(index_path, log)
    if name in index and os.path.exists(path):
      try:
        if hash_path(path, root=path_dir) == index[name]:
          found = [stages.read_records(path), index[name]]
      except (UnreadableFile, ValueError) as e:   # unreadable: sample again
        log(f"{path}: {e}; running the stage again")
  found = distributed.broadcast_json(found)
  if found is not None:
    return found[0], found[1], True
  records = fn()
  fault_point(name, iteration)   # crash tests: killed after sampling, before the records land
  digest = _write_records(path, records)
  if distributed.is_primary():
    index = _read_stage_index(index_path, lambda _: None)
    index[name] = digest
    write_json_atomic(index_path, index)
  return records, digest, False


def _read_stage_index(path: str, log) -> dict:
  """records/iter_K/stages.json (stage name -> records hash); a corrupt one means no
  stage is cached: the stages run again and the index is rewritten."""
  try:
    index = read_json(path, {})
  except UnreadableFile as e:
    log(f"{e}; its stages will run again")
    return {}
  if not isinstance(index, dict) or not all(isinstance(v, str) for v in index.values()):
    log(f"{path} is not a stage index; its stages will run again")
    return {}
  return index


def _write_records(path, records) -> str:
  """Process 0 writes (every process holds the same records); all return the hash."""
  if distributed.is_primary():
    return stages.write_records(path, records)
  return stages.records_digest(path, records)


def _iteration(k, config, task, heldout_ids, sampler, base, start_params, train_state, it,
               state, mesh, workdir, reporter, signals, judge_model=None, lora=None,
               model_params=lambda p: p):
  """Acquire -> select -> optimize for iteration k; returns (new train state, info,
  record hashes). With `lora`, params in train states are adapters, `model_params`
  merges them into the base, and the reference is the base itself."""
  mc, tok = base.config, base.tokenizer
  rec_dir = os.path.join(workdir, "records", f"iter_{k:04d}")
  sp = SamplingParams(temperature=config.sampling.temperature, top_k=config.sampling.top_k,
                      top_p=config.sampling.top_p,
                      stop_sequences=tuple(config.sampling.stop_sequences),
                      max_new_tokens=config.sampling.max_new_tokens)
  G = config.loop.samples_per_prompt
  algo = config.loop.algorithm
  steps = config.loop.rl_steps if algo == "grpo" else 1
  hashes, all_acquired, all_selected = {}, [], []
  t0 = time.time()

  # --- acquire + select (grpo: one batch per RL step, all sampled up front from the
  # current policy would be off-policy, so each RL step samples after the update)
  params = start_params
  loss = "sft" if algo == "sft" else ("dpo" if algo == "dpo" else _loss_name(config))
  n_batches = _planned_steps(config, steps)
  cfg = _optim_config(config, n_batches, loss)
  ts = create_train_state(mc, cfg, params, mesh, lora)
  train_step = make_train_step(mc.replace(remat=config.remat), cfg, mesh, lora)
  ref_params = start_params if lora is None else base.params
  ref_fn = make_logprob_fn(mc, mesh, config.optim.logprob_chunk)
  losses, nonfinite, loss_tokens = [], None, 0
  ledger = state.ledger
  proposed, extra_info = [], {}
  if config.acquire.self_instruct_share > 0:   # self-instruct: the model's own problems
    rows, hashes["self_instruct"], _ = _acquire_cached(
        rec_dir, "self_instruct", lambda: _self_instruct_stage(
            sampler, model_params(train_state.params), tok, task, config, k,
            state.difficulty),
        k, reporter.log)
    proposed = [Problem.from_json(r["problem"]) for r in rows if r["status"] == "kept"]
    extra_info = self_instruct.summarize(rows)
    reporter.stage(k, "self_instruct", ", ".join(
        f"{n.removeprefix('self_instruct_')} {c}" for n, c in extra_info.items()))
  for s in range(steps):
    problems, used = _next_problems(task, config, it, state.difficulty, proposed)
    proposed = proposed[used:]
    name = "acquire" if steps == 1 else f"acquire_{s}"
    acquired, h, cached = _acquire_cached(
        rec_dir, name, lambda: _acquire_stage(
            sampler, model_params(ts.params if algo == "grpo" else train_state.params), tok,
            task, problems, sp, G, _seed(config, k, "acquire", s), k, config, judge_model),
        k, reporter.log)
    hashes[name] = h
    reporter.stage(k, name, f"{len(acquired)} samples, train pass rate "
                   f"{select_lib.pass_rate(acquired, config.select.reward_threshold):.2f}"
                   + (" (from disk)" if cached else ""))
    signals.check()
    ledger = select_lib.update_ledger(ledger, acquired, k, config.select.reward_threshold)
    selected, counts = select_lib.apply_filters(acquired, config.select)
    leaked = [r for r in selected if r["problem_id"] in heldout_ids or task.is_heldout(r["problem_id"])]
    if leaked:   # never train on held-out prompts, whatever a filter let through
      selected = [r for r in selected if r not in leaked]
    sname = "select" if steps == 1 else f"select_{s}"
    hashes[sname] = _write_records(os.path.join(rec_dir, f"{sname}.jsonl"), selected)
    all_acquired += acquired
    all_selected += selected
    reporter.stage(k, sname, ", ".join(f"{n} {c}" for n, c in counts.items()))

    # --- optimize
    if algo == "sft":
      batches = stages.sft_batches(selected, config.train.batch_size, config.train.max_seq_len,
                                   config.train.epochs, _seed(config, k, "batches"))
    elif algo == "dpo":
      pairs = (judge_lib.best_worst_pairs(acquired) if config.loop.dpo_pairs == "judge" else
               stages.dpo_pairs(acquired, config.select.reward_threshold,
                                _seed(config, k, "pairs")))
      batches = stages.dpo_batches(pairs, config.train.batch_size, config.train.max_seq_len,
                                   config.train.epochs, _seed(config, k, "batches"))
    else:
      rows = config.loop.prompts_per_iteration * G
      batches = [stages.rl_batch(selected, rows, config.train.max_seq_len)] if selected else []
    needs_ref = algo == "dpo" or (algo == "grpo" and config.optim.kl_coef > 0)
    for b in reporter.progress(batches, f"iter {k} optimize"):
      b = _place(_pad_to_shards(b, mesh, 2 if algo == "dpo" else 1), mesh)
      if needs_ref:
        b["ref_logprobs"] = ref_fn(ref_params, b["tokens"], b["input_mask"])
      ts, m = train_step(ts, b) if lora is None else train_step(ts, b, base.params)
      m = jax.device_get(m)
      nonfinite = _update_problem(m, config.optim.max_update_ratio, int(ts.step))
      if nonfinite:
        break
      losses.append(float(m["loss"]))
      loss_tokens += int(m["loss_tokens"])
      fault_point("optimize", k)
    if nonfinite:
      break
    signals.check()
  if fault_requested("nan_update", k):   # crash tests: a NaN in the last update
    ts = ts.replace(params=jax.tree.map(lambda x: x * jnp.nan, ts.params))
  # The step's metrics check every update; this checks the weights that would be
  # kept, whatever happened to them after the last step's metrics were taken.
  if not nonfinite and not bool(_all_finite(ts.params)):
    nonfinite = "non-finite values in the updated weights"

  info = {"kept": len(all_selected), "acquired": len(all_acquired),
          "train_pass_rate": select_lib.pass_rate(all_acquired, config.select.reward_threshold),
          "train_loss": float(np.mean(losses[-max(1, len(losses) // max(1, config.train.epochs)):]))
          if losses else float("nan"),
          "optimizer_steps": len(losses), "loss_tokens": loss_tokens,
          "nonfinite": nonfinite, "ledger": ledger,
          "seconds": round(time.time() - t0, 1), **extra_info,
          **judge_lib.agreement(all_acquired, config.select.judge_threshold,
                                config.select.reward_threshold)}
  if config.acquire.refine_strategy:
    targets = [r for r in all_acquired if r.get("refined")]
    info["refined"] = len(targets)
    info["refined_precision"] = (select_lib.pass_rate(targets, config.select.reward_threshold)
                                 if targets else float("nan"))
  return ts, info, hashes


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _update_problem(m: dict, max_update_ratio: float, step: int) -> Optional[str]:
  """Why optimizer step `step` (its metrics `m`) must not be kept, or None."""
  if not all(math.isfinite(m[key]) for key in ("loss", "grad_norm", "update_norm",
                                               "param_norm")):
    return f"non-finite loss, gradient or weights at optimizer step {step}"
  ratio = m["update_norm"] / max(m["prev_param_norm"], 1e-12)
  if max_update_ratio and ratio > max_update_ratio:
    return (f"exploding update at optimizer step {step} (||update|| / ||weights|| = "
            f"{ratio:.3g} > optim.max_update_ratio={max_update_ratio})")
  return None


def _planned_steps(config, rl_steps: int) -> int:
  if config.loop.algorithm == "grpo":
    return rl_steps
  rows = config.loop.prompts_per_iteration * config.loop.samples_per_prompt
  return max(1, math.ceil(rows / config.train.batch_size) * config.train.epochs)


def _place(batch: dict, mesh) -> dict:
  """Host batch -> global arrays split over data x fsdp; each process transfers only
  the rows of its own devices (every process holds the same host batch)."""
  sh = sharding_lib.batch_sharding(mesh, 1)
  return {key: sharding_lib.put_from_host(x, sh) for key, x in batch.items()}


def _pad_to_shards(batch: dict, mesh, unit: int) -> dict:
  """Pads rows with empty ones (loss_mask 0) so the batch splits over data x fsdp."""
  n = mesh.shape["data"] * mesh.shape["fsdp"] * unit
  B = batch["tokens"].shape[0]
  extra = (-B) % n
  if not extra:
    return batch
  out = {}
  for key, x in batch.items():
    pad = np.zeros((extra,) + x.shape[1:], x.dtype)
    if key == "group_ids":
      pad = np.arange(extra, dtype=x.dtype) + x.max() + 1
    out[key] = np.concatenate([x, pad])
  return out


# ----------------------------------------------------------------------------- evaluate


def _evaluate(sampler, params, tok, task, heldout, config, k, reporter,
              judge_model=None) -> dict:
  sample = SamplingParams(temperature=config.sampling.temperature, top_k=config.sampling.top_k,
                          top_p=config.sampling.top_p,
                          stop_sequences=tuple(config.sampling.stop_sequences),
                          max_new_tokens=config.evaluate.max_new_tokens)
  metrics = stages.evaluate_heldout(sampler, params, tok, task, heldout, k=config.evaluate.maj_k,
                                    sample=sample, seed=_seed(config, k, "evaluate"),
                                    progress=config.log.progress)
  if config.evaluate.strategies:   # inference compute's value, beside greedy
    generate = refine_lib.model_generate(sampler, params, tok)
    ctx = refine_lib.Context(generate, task, heldout,
                             judge=_judge_generate(judge_model, generate))
    metrics.update(refine_lib.heldout_metrics(
        ctx, config.evaluate.strategies, refine_lib.StrategyConfig.from_config(config, sample),
        _seed(config, k, "evaluate_strategies")))
  reporter.stage(k, "evaluate", ", ".join(f"{n} {v:.3f}" for n, v in metrics.items()))
  return metrics


def _decide(state: LoopState, metrics: dict, info: dict, config) -> tuple[bool, str]:
  """Accept, roll back, and stop on plateau (updates `state` in place). Weights with a
  non-finite or exploding update are never accepted, whatever the held-out score
  says, and neither is an iteration that trained on nothing."""
  p1 = metrics["pass@1"]
  if info["nonfinite"]:
    accepted, reason = False, f"rolled back: {info['nonfinite']}"
  elif not info["optimizer_steps"] or not info["loss_tokens"]:
    why = (f"0 optimizer steps ({info['kept']} samples selected)"
           if not info["optimizer_steps"] else
           "0 loss tokens (train.max_seq_len cuts off every completion?)")
    accepted, reason = False, f"not accepted: trained on nothing ({why})"
  elif p1 < state.best_pass1 - config.evaluate.max_regression:
    accepted, reason = False, (f"rolled back: held-out pass@1 fell from {state.best_pass1:.3f} "
                               f"to {p1:.3f}")
  else:
    accepted, reason = True, "accepted"
  if accepted and p1 > state.best_pass1:
    state.best_pass1, state.no_improve = p1, 0
  else:
    state.no_improve += 1
  if state.no_improve >= config.evaluate.patience:
    state.stopped = f"no held-out improvement for {state.no_improve} iterations"
  return accepted, reason
