"""The closed loop: `run(config, workdir)`, resumable from any interruption.

Iteration 0 evaluates the starting model (the baseline). Each later iteration:
  acquire   G samples per training prompt from the current model, scored by the task's
            verifier, with judge scores / refinement targets where configured
            (acquire.py; records/iter_K/acquire.jsonl);
  select    the configured filters and the difficulty ledger (select.py); held-out
            prompts never pass (records/iter_K/select.jsonl);
  optimize  the algorithm's batches through the train step (algorithms.py); on-policy
            RL repeats acquire -> select -> optimize loop.rl_steps times;
  evaluate  held-out pass@1 / maj@k / pass@k (evaluation.py);
  decide    accept, roll back to the last accepted weights (held-out drop, a
            non-finite or exploding update, nothing trained on), stop on a plateau,
            move the curriculum's difficulty;
  checkpoint Orbax checkpoint and a manifest with content hashes of it and of the
            stage records (checkpoint.py).
Every random choice is derived from (config.seed, iteration, stage), so re-running an
interrupted iteration reproduces it exactly; finished stages' records are reused
(stage_cache.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np

from selfimprove_jax import acquire as acquire_lib
from selfimprove_jax import config as config_lib
from selfimprove_jax import curriculum as curriculum_lib
from selfimprove_jax import distributed
from selfimprove_jax import evaluation
from selfimprove_jax import judge as judge_lib
from selfimprove_jax import memory as memory_lib
from selfimprove_jax import self_instruct
from selfimprove_jax import select as select_lib
from selfimprove_jax import sharding as sharding_lib
from selfimprove_jax import stage_cache
from selfimprove_jax.algorithms import ALGORITHMS, Algorithm, optimizer_config
from selfimprove_jax.checkpoint import Checkpointer, fault_point, fault_requested
from selfimprove_jax.errors import UserError
from selfimprove_jax.files import WorkdirLock
from selfimprove_jax.optimize import (abstract_train_state, create_train_state,
                                      make_logprob_fn, make_train_step, with_horizon)
from selfimprove_jax.model import lora as lora_lib
from selfimprove_jax.policy import GenerateFn, model_generate
from selfimprove_jax.records import Sample, pass_rate, read_records
from selfimprove_jax.reporting import Reporter
from selfimprove_jax.sampling import make_sampler
from selfimprove_jax.tasks import get_task
from selfimprove_jax.tasks.problem import Problem


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
  data_state: Optional[dict] = None   # Grain iterator state of the training prompt stream
  ledger: dict = dataclasses.field(default_factory=dict)
  history: list = dataclasses.field(default_factory=list)


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


# size: the loop itself, one banner per stage (the table of contents of a run)
def _run(config, workdir, override_config, log, signals) -> dict:
  # --- set up: mesh, model, task, sampler, step functions, checkpoints
  s = _set_up(config, workdir, log)
  # --- restore, or start from the base model
  state, kept = _restore(s, override_config)
  s = _release_base(s)
  signals.starting = False   # from here a signal stops at the next stage boundary
  try:
    # --- iteration 0: the baseline
    if state.iteration < 0:
      metrics = _evaluate(s, kept.params, 0)
      state.best_pass1 = metrics["pass@1"]
      state.accepted_iteration = state.iteration = 0
      state.history.append(dict(iteration=0, **metrics, kept=0, accepted=True,
                                reason="baseline", difficulty=state.difficulty))
      _checkpoint(s, state, kept, True, {})

    # --- iterations 1..N
    while state.iteration < config.loop.iterations and not state.stopped:
      k = state.iteration + 1
      signals.check()
      it = Iteration(k, _iteration_dir(os.path.join(workdir, "records"), k), state.ledger)
      prompts = PromptStream(s.task, config.seed, state.data_state, state.difficulty)
      prompts.add_proposals(_self_instruct(s, kept.params, state.difficulty, it))
      # the state this iteration's updates change; off-policy algorithms make it after
      # sampling, so the optimizer state and the sampler's cache are never held together
      train = None
      for r in range(s.algorithm.rounds(config)):
        if train is None and s.algorithm.on_policy:
          train, kept = _train_start(s, kept)
        # --- acquire: samples of the current policy, scored by the verifier
        problems = prompts.take(config.loop.prompts_per_iteration,
                                config.acquire.self_instruct_share)
        with _peak_memory(it, "acquire"):
          acquired = _acquire(s, (kept if train is None else train).params, problems, r, it)
        signals.check()
        # --- select: the filters and the ledger; never a held-out prompt
        selected = _select(s, acquired, problems, r, it)
        # --- optimize: the algorithm's batches through the train step
        if train is None:
          train, kept = _train_start(s, kept)
        with _peak_memory(it, "optimize"):
          train = _optimize(s, train, _reference(s, kept), selected + _replay(s, state, it),
                            it)
        if it.problem:
          break
        signals.check()
      trained = _kept(s, _final_check(train, it))   # the optimizer state is done with
      del train
      signals.check()

      # --- evaluate
      with _peak_memory(it, "evaluate"):
        metrics = _evaluate(s, trained.params, k)
      # --- decide: accept or roll back, stop on a plateau, move the difficulty
      accepted, reason = _decide(state, metrics, it, config)
      row = dict(iteration=k, **metrics, **it.summary(config, s.algorithm), accepted=accepted,
                 reason=reason, difficulty=state.difficulty)
      next_difficulty = _curriculum(s, state, it, row)
      if accepted:
        kept = trained
        state.accepted_iteration = k
      del trained
      if kept is None:   # rolled back, and the kept weights were handed to the train state
        kept = _reread_kept(s, state.accepted_iteration)
      state.iteration, state.data_state, state.ledger = k, prompts.state(), it.ledger
      state.history.append(row)
      state.difficulty = next_difficulty
      # --- checkpoint
      _checkpoint(s, state, kept, accepted, it.hashes)
  except Preempted as e:
    s.reporter.log(f"{e}: stopping after the last finished stage; re-run the same "
                   f"command to continue from iteration {state.iteration + 1}")
    s.ckpt.close()
    return dataclasses.asdict(state)

  s.reporter.finish(state.history, state.stopped)
  s.ckpt.close()
  return dataclasses.asdict(state)


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


# ----------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Setup:
  """What a run builds once, before its first iteration."""
  config: Any
  base: Any                      # weights.LoadedModel: the base model
  task: Any
  heldout: list                  # the held-out problems every evaluation scores
  sampler: Any
  judge: Optional[GenerateFn]    # a separate judge model; None: the model judges itself
  ckpt: Checkpointer
  reporter: Reporter
  mesh: Any
  lora: Any                      # LoraConfig, or None: train states hold full weights
  initial: Any                   # what iteration 1 trains: the base weights or new adapters
                                 # (None once nothing reads them: `_release_base`)
  shapes: Any                    # ShapeDtypeStructs (with shardings) of `initial`
  algorithm: Algorithm
  optim: Any                     # config.optim with the derived loss and total steps
  train_step: Callable           # built once per run (jitted, state donated)
  ref_logprobs: Callable         # reference log-probs for DPO and KL

  def generate(self, trained) -> GenerateFn:
    """The model with trained weights (adapters merged into the base) as a GenerateFn."""
    return model_generate(self.sampler, self.model_params(trained), self.base.tokenizer,
                          self.config.log.progress)

  def model_params(self, trained):
    return lora_lib.model_params_fn(self.base.params, self.lora)(trained)

  def seed(self, k: int, stage: str, step: int = 0) -> int:
    return config_lib.stage_seed(self.config, k, stage, step)


def _set_up(config, workdir: str, log) -> Setup:
  # heavy imports (transformers) kept local to the run
  from selfimprove_jax.weights import load, without_chat_template
  mesh = sharding_lib.make_mesh(dict(config.mesh))
  base = load(config.model, mesh=mesh, dtype=config.dtype)
  if config.prompt_format == "raw":
    base = without_chat_template(base, config.prompt_template)
  if base.tokenizer is None:
    raise UserError(f"model {config.model!r} has no tokenizer; the loop needs one")
  try:
    task = get_task(config.task.name, **config.task.options.to_dict())
  except UserError as e:
    raise UserError(f"task.name={config.task.name!r}: {e}") from None
  if config.curriculum.enabled and task.difficulty_range is None:
    raise UserError(f"curriculum.enabled: task {task.name} has no difficulty knob")
  sampler = make_sampler(base, mesh=mesh, max_batch=config.sampling.max_batch)
  judge = None
  if config.judge.model:
    jm = load(config.judge.model, mesh=mesh, dtype=config.dtype)
    judge = model_generate(make_sampler(jm, mesh=mesh, max_batch=config.sampling.max_batch),
                           jm.params, jm.tokenizer)
  algorithm = ALGORITHMS[config.loop.algorithm]
  optim = optimizer_config(config, algorithm)
  # LoRA: train states hold adapters (what checkpoints save); the stages see the base
  # with the adapters merged in, and the base is the DPO / KL reference.
  lora = lora_lib.from_config(config.lora)
  mc = base.config
  initial = base.params if lora is None else lora_lib.init_lora(mc, lora, config.seed, mesh)
  return Setup(
      config, base, task, task.heldout(config.task.heldout_size, config.task.difficulty),
      sampler, judge, Checkpointer(workdir, is_primary=jax.process_index() == 0, log=log),
      Reporter(workdir, config, log=log), mesh, lora, initial, _shapes(initial), algorithm,
      optim,
      make_train_step(mc.replace(remat=config.remat), optim, mesh, lora),
      make_logprob_fn(mc, mesh, config.optim.logprob_chunk))


def _restore(s: Setup, override_config: bool):
  """(loop state, kept train state): the newest checkpoint that verifies, else the
  start. A fresh-optimizer run keeps (and saves) weights only; with
  optim.continue_state the whole train state."""
  config = s.config
  state = LoopState(difficulty=config.task.difficulty)
  continuing = config.optim.continue_state
  kept = create_train_state(s.base.config, s.optim, s.initial, s.mesh, s.lora)
  # process 0 picks the checkpoint (file checks could race or differ between hosts)
  latest = distributed.broadcast_json(s.ckpt.latest_good() if distributed.is_primary()
                                      else None)
  if latest is not None:
    if continuing:
      kept, meta = s.ckpt.restore(latest, abstract_train_state(
          s.base.config, s.optim, s.initial, s.mesh, s.lora))
    else:
      params, meta = s.ckpt.restore_params(latest, s.shapes)
      kept = kept.replace(params=params)
    _check_compatible(meta["config"], config, s.ckpt.workdir, override_config)
    state = LoopState(**meta["loop"])
    s.reporter.log(f"resuming {s.ckpt.workdir} after iteration {state.iteration}")
  return state, _kept(s, kept)


def _shapes(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


def _check_compatible(saved: dict, config, workdir: str, override: bool) -> None:
  diffs = config_lib.result_differences(saved, config.to_dict())
  if diffs and not override:
    raise UserError(f"workdir {workdir} was written with a different config "
                    f"({', '.join(diffs[:5])}{'...' if len(diffs) > 5 else ''} differ); "
                    f"use a new workdir or pass --override_config")


# ----------------------------------------------------------------------------- one iteration


class PromptStream:
  """The training prompts: a Grain dataset of the task's problems (index -> problem at
  the iteration's difficulty), iterated from the position the loop state saved; its
  iterator state after the iteration goes back into the loop state.

  Every process reads the whole stream: sampling is one SPMD program over the global
  batch, so every host needs every prompt, and the saved position then means the same
  thing for any process count (a run resumes on more or fewer hosts)."""

  def __init__(self, task, seed: int, saved: Optional[dict], difficulty):
    ds = grain.MapDataset.range(0, 1 << 31).map(
        lambda i: task.problem(seed, int(i), difficulty))
    self._it = iter(ds.to_iter_dataset())
    if saved:
      self._it.set_state(saved)
    self._proposals: list[Problem] = []

  def add_proposals(self, problems: list[Problem]) -> None:
    """Problems the model proposed (self-instruct), mixed in by `take`."""
    self._proposals += problems

  def take(self, n: int, proposal_share: float = 0.0) -> list[Problem]:
    """n problems: the stream's, with up to `proposal_share` of them the proposals'."""
    m = min(len(self._proposals), round(proposal_share * n))
    problems = [next(self._it) for _ in range(n - m)] + self._proposals[:m]
    self._proposals = self._proposals[m:]
    return problems

  def state(self) -> dict:
    return self._it.get_state()


@dataclasses.dataclass
class Iteration:
  """One iteration's running account: what was sampled, kept and trained on."""
  k: int
  rec_dir: str                    # records/iter_K
  ledger: dict                    # the difficulty ledger, updated by each select
  hashes: dict = dataclasses.field(default_factory=dict)   # stage -> records hash
  acquired: list = dataclasses.field(default_factory=list)
  selected: list = dataclasses.field(default_factory=list)
  losses: list = dataclasses.field(default_factory=list)
  loss_tokens: int = 0
  step_metrics: dict = dataclasses.field(default_factory=dict)   # the loss's own, per step
  problem: Optional[str] = None   # why these weights must not be kept
  extra: dict = dataclasses.field(default_factory=dict)    # stage summaries for the row
  started: float = dataclasses.field(default_factory=time.time)

  def stage_name(self, stage: str, r: int, rounds: int) -> str:
    return stage if rounds == 1 else f"{stage}_{r}"

  def summary(self, config, algorithm: Algorithm) -> dict:
    """The iteration's fields of its history row (the algorithm adds its own)."""
    thr = config.select.reward_threshold
    last = self.losses[-max(1, len(self.losses) // max(1, config.train.epochs)):]
    row = {"kept": len(self.selected), "acquired": len(self.acquired),
           "train_pass_rate": pass_rate(self.acquired, thr),
           "train_loss": float(np.mean(last)) if self.losses else float("nan"),
           "optimizer_steps": len(self.losses), "loss_tokens": self.loss_tokens,
           "nonfinite": self.problem, "seconds": round(time.time() - self.started, 1),
           **{f"train_{n}": float(np.mean(v)) for n, v in self.step_metrics.items()},
           **self.extra, **algorithm.metrics(self.acquired, config),
           **acquire_lib.summary(self.acquired, config),
           **judge_lib.agreement(self.acquired, config.select.judge_threshold, thr)}
    return row

  def add_counts(self, counts: dict) -> None:
    """Adds a round's counts to the row's (summed over an iteration's rounds)."""
    for name, n in counts.items():
      self.extra[name] = self.extra.get(name, 0) + n


def _self_instruct(s: Setup, params, difficulty, it: Iteration) -> list[Problem]:
  """The model's proposed problems for this iteration (self_instruct.py); [] when the
  config mixes in none."""
  config = s.config
  if config.acquire.self_instruct_share <= 0:
    return []
  settings = self_instruct.Settings.from_config(config)
  seeds = s.task.train_problems(s.seed(it.k, "self_instruct_seeds"),
                                max(2 * settings.examples, 8), difficulty)
  rows, it.hashes["self_instruct"], _ = stage_cache.cached(
      it.rec_dir, "self_instruct",
      lambda: self_instruct.propose(s.generate(params), s.task, seeds, s.heldout, settings,
                                    s.seed(it.k, "self_instruct"), difficulty)[1],
      it.k, s.reporter.log, samples=False)
  it.extra.update(self_instruct.summarize(rows))
  s.reporter.stage(it.k, "self_instruct", ", ".join(
      f"{n.removeprefix('self_instruct_')} {c}" for n, c in it.extra.items()))
  return [Problem.from_json(r["problem"]) for r in rows if r["status"] == "kept"]


def _iteration_dir(records_root: str, k: int) -> str:
  """records/iter_K: iteration K's stage files."""
  return os.path.join(records_root, f"iter_{k:04d}")


def _stage_records(it: Iteration, k: int, stage: str) -> list[Sample]:
  """Iteration k's records of `stage` as on disk (every round's file, `stage_R`)."""
  folder = _iteration_dir(os.path.dirname(it.rec_dir), k)
  return [x for path in sorted(glob.glob(os.path.join(folder, f"{stage}*.jsonl")))
          for x in read_records(path)]


def _replay(s: Setup, state: LoopState, it: Iteration) -> list[Sample]:
  """select.replay: the selected samples of the last accepted iterations (their
  records on disk), minus those this iteration selected again (same prompt and
  completion)."""
  n = s.config.select.replay
  accepted = [row["iteration"] for row in state.history
              if row["accepted"] and 0 < row["iteration"] < it.k][-n:] if n else []
  seen = {(x.prompt, x.completion) for x in it.selected}
  out = []
  for x in (x for k in accepted for x in _stage_records(it, k, "select")):
    if (x.prompt, x.completion) not in seen:
      seen.add((x.prompt, x.completion))
      out.append(x)
  if out:
    it.add_counts({"replayed": len(out)})
  return out


def _earlier_samples(it: Iteration) -> list[Sample]:
  """What earlier iterations acquired (their records on disk, so a resumed run sees
  the same), for the rounds that measure novelty against it."""
  return [x for k in range(1, it.k) for x in _stage_records(it, k, "acquire")]


def _acquire(s: Setup, params, problems, r: int, it: Iteration) -> list[Sample]:
  name = it.stage_name("acquire", r, s.algorithm.rounds(s.config))
  round_ = acquire_lib.Round(s.generate(params), s.judge, s.task, s.heldout,
                             acquire_lib.Settings.from_config(s.config),
                             s.seed(it.k, "acquire", r), it.k, s.config,
                             lambda: _earlier_samples(it) + it.acquired)
  samples, it.hashes[name], cached = stage_cache.cached(
      it.rec_dir, name, lambda: s.algorithm.acquire(round_, problems), it.k, s.reporter.log)
  it.acquired += samples
  s.reporter.stage(it.k, name, f"{len(samples)} samples, train pass rate "
                   f"{pass_rate(samples, s.config.select.reward_threshold):.2f}"
                   + (" (from disk)" if cached else ""))
  return samples


def _select(s: Setup, acquired: list[Sample], problems, r: int,
            it: Iteration) -> list[Sample]:
  cfg = s.config.select
  it.ledger = select_lib.update_ledger(it.ledger, acquired, it.k, cfg.reward_threshold)
  selected, counts = select_lib.apply_filters(acquired, cfg)
  # never train on held-out prompts, whatever a filter let through
  heldout = {p.id for p in s.heldout}
  selected = [x for x in selected
              if x.problem_id not in heldout and not s.task.is_heldout(x.problem_id)]
  name = it.stage_name("select", r, s.algorithm.rounds(s.config))
  it.hashes[name] = stage_cache.write(os.path.join(it.rec_dir, f"{name}.jsonl"), selected)
  it.selected += selected
  s.reporter.stage(it.k, name, ", ".join(f"{n} {c}" for n, c in counts.items()))
  if s.config.acquire.label_free:
    # checked only now, for the metrics: choosing the data above read no reference
    it.add_counts(evaluation.check_pseudo_labels(s.task, problems, acquired))
    right, checked = it.extra["pseudo_labels_right"], it.extra["pseudo_labels_checked"]
    it.extra["pseudo_label_precision"] = right / checked if checked else float("nan")
  return selected


def _train_start(s: Setup, kept):
  """(the train state an iteration starts from, what stays of `kept`). With
  optim.continue_state a copy of the kept state (its optimizer and schedule go on);
  else a fresh optimizer on the kept weights, or on the start weights with
  loop.restart_from_base (ReST-EM). A copy, because the train step donates its state
  and a rollback needs the kept one; but when nothing reads the kept weights during the
  iteration (`_holds_kept`), the train state takes over their buffers and `kept`
  becomes None: one copy of the weights fewer, and a rollback re-reads them from
  their checkpoint (`_reread_kept`)."""
  if s.config.optim.continue_state:
    return jax.tree.map(jnp.copy, kept), kept
  hold = _holds_kept(s)
  restart = s.config.loop.restart_from_base
  start = s.initial if restart else kept.params
  train = create_train_state(s.base.config, s.optim, start, s.mesh, s.lora,
                             donate=not hold and not restart)
  return train, (kept if hold else None)


def _holds_kept(s: Setup) -> bool:
  """Whether the kept weights stay in memory while an iteration trains: the DPO / KL
  reference is them, LoRA's adapters are small, a continued optimizer state is
  copied. Otherwise their checkpoint is the copy a rollback needs."""
  return (s.config.optim.continue_state or s.lora is not None
          or s.algorithm.needs_reference(s.config))


def _reread_kept(s: Setup, iteration: int):
  """The kept weights of a rolled-back iteration, read back from their checkpoint."""
  params, _ = s.ckpt.restore_params(iteration, s.shapes)
  return _kept(s, create_train_state(s.base.config, s.optim, params, s.mesh, s.lora,
                                     donate=True))


def _release_base(s: Setup) -> Setup:
  """Drops the base weights when nothing reads them after start-up (no LoRA, no
  loop.restart_from_base): the kept weights are the only copy the loop needs."""
  if s.lora is not None or s.config.loop.restart_from_base:
    return s
  return dataclasses.replace(s, base=dataclasses.replace(s.base, params=None), initial=None)


def _reference(s: Setup, kept):
  """The DPO / KL reference weights: the iteration's start (LoRA: the base itself);
  None when the loss needs none."""
  if not s.algorithm.needs_reference(s.config):
    return None
  if s.lora is not None:
    return s.base.params
  return s.initial if s.config.loop.restart_from_base else kept.params


@contextlib.contextmanager
def _peak_memory(it: Iteration, stage: str):
  """The row's `peak_rss_<stage>_gb`: the process's peak resident memory during the
  stage (`memory.stage`: the C heap's free pages handed back first; the largest over an
  iteration's rounds), where Linux can reset the peak; and `peak_rss_gb`, the
  process's peak since it started (start-up included)."""
  log: list = []
  with memory_lib.stage(stage, log):
    yield
  m = log[-1]
  if m.peak_is_per_stage:
    key = f"peak_rss_{stage}_gb"
    it.extra[key] = max(it.extra.get(key, 0.0), round(m.host_peak / 1e9, 2))
    it.extra["peak_rss_gb"] = round(memory_lib.process_peak_rss() / 1e9, 2)


def _kept(s: Setup, train):
  """What an accepted iteration leaves for the next: without optim.continue_state the
  optimizer state is dropped (the next iteration starts a fresh one)."""
  return train if s.config.optim.continue_state else train.replace(opt_state=None)


def _optimize(s: Setup, train, ref_params, selected: list[Sample], it: Iteration):
  """The algorithm's batches of the selected samples through the train step; stops at
  the first update that must not be kept (`_update_problem`)."""
  batches = s.algorithm.batches(selected, s.config, s.seed(it.k, "batches"))
  o = s.config.optim
  if not o.continue_state and o.schedule_horizon == "batches" and s.algorithm.rounds(
      s.config) == 1:
    # a fresh schedule spans the steps this iteration takes, not the planned bound
    # (every sample kept), which a filtered iteration never comes near
    train = with_horizon(train, len(batches))
  rows = s.algorithm.rows_per_example
  for b in s.reporter.progress(batches, f"iter {it.k} optimize"):
    b = _place(_pad_to_shards(b, s.mesh, rows), s.mesh)
    if s.algorithm.needs_reference(s.config):
      b["ref_logprobs"] = s.ref_logprobs(ref_params, b["tokens"], b["input_mask"])
    train, m = _train_step(s, train, b)
    it.problem = _update_problem(m, s.config.optim.max_update_ratio, int(train.step))
    if it.problem:
      break
    it.losses.append(float(m["loss"]))
    it.loss_tokens += int(m["loss_tokens"])
    for name in sorted(set(m) - _STEP_GUARDS):   # e.g. GRPO's kl and entropy, DPO's accuracy
      it.step_metrics.setdefault(name, []).append(float(m[name]))
    fault_point("optimize", it.k)
  return train


def _train_step(s: Setup, train, b: dict):
  """One train step and its metrics on the host. Running out of memory there (an XLA
  error, reported when the metrics are fetched) becomes a one-line error naming the
  settings that make the step smaller; the run resumes from its last checkpoint."""
  try:
    train, m = (s.train_step(train, b) if s.lora is None else
                s.train_step(train, b, s.base.params))
    return train, jax.device_get(m)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    rows, T = b["tokens"].shape
    raise UserError(
        f"the train step on {rows} rows x {T} tokens ran out of memory "
        f"({str(e).splitlines()[0][:100]}); make it smaller with optim.micro_batch_size, "
        f"optim.logprob_chunk, remat=true or train.max_seq_len (benchmarks/RESULTS.md, "
        f"'Memory of one iteration')") from None


# train step metrics the row reports otherwise (loss, loss_tokens) or that only guard
# the update (_update_problem); the loss's own metrics are averaged into the row
_STEP_GUARDS = frozenset(("loss", "loss_tokens", "tokens", "grad_norm", "update_norm",
                          "param_norm", "prev_param_norm", "learning_rate"))


def _final_check(train, it: Iteration):
  """The step's metrics checked every update; this checks the weights that would be
  kept, whatever happened to them after the last step's metrics were taken."""
  if fault_requested("nan_update", it.k):   # crash tests: a NaN in the last update
    train = train.replace(params=jax.tree.map(lambda x: x * jnp.nan, train.params))
  if not it.problem and not bool(_all_finite(train.params)):
    it.problem = "non-finite values in the updated weights"
  return train


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


# -------------------------------------------------------------------------- evaluate, decide, save


def _evaluate(s: Setup, trained, k: int) -> dict:
  metrics = evaluation.evaluate(s.generate(trained), s.task, s.heldout,
                                evaluation.Settings.from_config(s.config),
                                s.seed(k, "evaluate"), judge=s.judge)
  s.reporter.stage(k, "evaluate", ", ".join(f"{n} {v:.3f}" for n, v in metrics.items()))
  return metrics


def _decide(state: LoopState, metrics: dict, it: Iteration, config) -> tuple[bool, str]:
  """Accept, roll back, and stop on plateau (updates `state` in place). Weights with a
  non-finite or exploding update are never accepted, whatever the held-out score
  says, and neither is an iteration that trained on nothing."""
  p1 = metrics["pass@1"]
  if it.problem:
    accepted, reason = False, f"rolled back: {it.problem}"
  elif not it.losses or not it.loss_tokens:
    why = (f"0 optimizer steps ({len(it.selected)} samples selected)" if not it.losses else
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


def _curriculum(s: Setup, state: LoopState, it: Iteration, row: dict):
  """The next iteration's difficulty: moved toward the pass-rate band when the
  curriculum is on (the move goes into the row)."""
  c = s.config.curriculum
  if not c.enabled:
    return state.difficulty
  difficulty, row["curriculum_move"] = curriculum_lib.step(
      state.difficulty, curriculum_lib.ledger_pass_rate(it.ledger, it.k),
      s.task.difficulty_range, min_pass_rate=c.min_pass_rate,
      max_pass_rate=c.max_pass_rate, step_size=c.step)
  if move := row["curriculum_move"]:
    s.reporter.stage(it.k, "curriculum", f"difficulty {move['from']} -> {move['to']} "
                     f"({move['reason']})")
  return difficulty


def _checkpoint(s: Setup, state: LoopState, kept, accepted: bool, hashes: dict) -> None:
  """Saves iteration `state.iteration` (weights, and the optimizer state when it
  continues across iterations), prunes, and reports the row."""
  meta = json.loads(json.dumps({"loop": dataclasses.asdict(state),
                                "config": s.config.to_dict()}, default=str))
  arrays = kept if s.config.optim.continue_state else {"params": kept.params}
  k = state.iteration
  s.ckpt.save(k, arrays, meta, accepted, hashes)
  # from the loop state, not the manifest: every process must delete the same
  # checkpoints (Orbax deletes collectively) and only process 0 writes the manifest
  s.ckpt.prune({h["iteration"] for h in state.history if h["accepted"]} | {k})
  s.reporter.iteration(state.history[-1], state.history)
