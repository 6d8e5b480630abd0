"""The closed loop: `run(config, workdir)`, resumable from any interruption.

Iteration 0 evaluates the starting model (the baseline). Each later iteration:
  acquire   G samples per training prompt from the current model, scored by the task's
            verifier, with judge scores / refinement targets where configured
            (acquire/rounds.py; records/iter_K/acquire.parquet), and the model's own
            proposed problems mixed in (acquire/self_instruct.py);
  select    the configured filters (select/filters.py) and the difficulty ledger
            (select/ledger.py);
            held-out prompts never pass (records/iter_K/select.parquet);
  optimize  the algorithm's batches (paradigms/registry.py) through the train step, by
            the one owner of the weights (optimize/phase.py); on-policy RL repeats
            acquire -> select -> optimize loop.rl_steps times;
  evaluate  pass@1 / maj@k / pass@k per problem on the validation split, greedy
            pass@1 on the test and fresh splits (evaluate/splits.py, heldout.py;
            records/iter_K/eval_<split>.jsonl), and the watchers (evaluate/watchers.py);
  decide    from validation alone: accept, roll back to the last accepted weights (a
            validation drop, a non-finite or exploding update, nothing trained on),
            stop on a plateau (evaluate/gate.py), move the curriculum's difficulty;
            the test split is read by nothing that decides;
  checkpoint Orbax checkpoint and a manifest with content hashes of it and of the
            stage records (runtime/checkpoint.py).
A run whose config.model names another run's workdir (`DIR`, `DIR@K`, or 'parent': the
parent phase that chains.py runs first) starts from that run's kept weights; the run
and iteration are resolved once, kept in the loop state, and written in every row and
the summary (weights/run_dir.py `Parent`).
Every stage reads its own settings, built once from the config (settings.py). Every
random choice is derived from (config.seed, iteration, stage), so re-running an
interrupted iteration reproduces it exactly; finished stages' records are reused
(stage_cache.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Optional

import jax
import ml_collections

from selfimprove_jax import config as config_lib
from selfimprove_jax import settings as settings_lib
from selfimprove_jax.acquire import rounds as acquire_lib
from selfimprove_jax.acquire import self_instruct
from selfimprove_jax.acquire.prompts import PromptStream
from selfimprove_jax.errors import UserError
from selfimprove_jax.evaluate import curriculum as curriculum_lib
from selfimprove_jax.evaluate import gate
from selfimprove_jax.evaluate import heldout as evaluation
from selfimprove_jax.evaluate import rules as rules_lib
from selfimprove_jax.evaluate import splits as splits_lib
from selfimprove_jax.evaluate import watchers
from selfimprove_jax.model import lora as lora_lib
from selfimprove_jax.optimize import make_logprob_fn, make_train_step
from selfimprove_jax.optimize import phase as phase_lib
from selfimprove_jax.paradigms import registry as algorithms
from selfimprove_jax.paradigms.registry import Algorithm
from selfimprove_jax.policy import GenerateFn, model_generate
from selfimprove_jax.records import Sample, pass_rate
from selfimprove_jax.runtime import distributed
from selfimprove_jax.runtime import memory as memory_lib
from selfimprove_jax.runtime import sharding as sharding_lib
from selfimprove_jax.runtime.checkpoint import (Checkpointer, fault_point, foreign_workdir,
                                                is_run_dir)
from selfimprove_jax.runtime.files import WorkdirLock
from selfimprove_jax.runtime.reporting import Reporter
from selfimprove_jax.sampling import Sampler, encode_prompts, make_sampler
from selfimprove_jax.select import filters as select_lib
from selfimprove_jax.select.ledger import Ledger
from selfimprove_jax.stage_cache import RunRecords
from selfimprove_jax.tasks import get_task
from selfimprove_jax.tasks.problem import Problem, Task

if TYPE_CHECKING:
  from selfimprove_jax.weights import LoadedModel
  from selfimprove_jax.weights.run_dir import Parent


class Preempted(Exception):
  """SIGTERM arrived: the finished stages are on disk, the run exits cleanly."""


@dataclasses.dataclass
class LoopState:
  """What a checkpoint holds besides the weights: JSON fields in its metadata
  (`to_json`), and, as arrays beside it (`arrays`, runtime/checkpoint.py's
  LOOP_ARRAYS), what grows with the run: the difficulty ledger (a row per prompt ever
  seen) and the paradigms' running summaries of earlier rounds."""
  iteration: int = -1            # last finished iteration (0 = baseline evaluated)
  accepted_iteration: int = -1   # iteration whose weights are current
  best_pass1: float = -1.0
  no_improve: int = 0
  stopped: Optional[str] = None
  difficulty: Optional[int] = None
  data_state: Optional[dict] = None   # Grain iterator state of the training prompt stream
  history: list = dataclasses.field(default_factory=list)
  adjust: dict = dataclasses.field(default_factory=dict)   # the rules' changes (config keys)
  parent: Optional[dict] = None  # the run whose kept weights this one started from (its row)
  # arrays, updated in place by the iteration (select/ledger.py; Algorithm.remember)
  ledger: Ledger = dataclasses.field(default_factory=Ledger)
  summaries: dict = dataclasses.field(default_factory=dict)   # paradigm -> {name: array}

  def to_json(self) -> dict:
    """The fields the checkpoint's metadata holds (all but the arrays)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name not in ("ledger", "summaries")}

  def arrays(self) -> dict:
    """The ledger and the summaries as named arrays (`from_checkpoint` reads them)."""
    out = {f"ledger.{n}": a for n, a in self.ledger.arrays().items()}
    out.update((f"summary.{name}.{n}", a) for name, summary in self.summaries.items()
               for n, a in summary.items())
    return out

  @classmethod
  def from_checkpoint(cls, loop: dict, arrays: dict) -> "LoopState":
    """The state a checkpoint saved: its metadata's `loop` and its arrays. A checkpoint
    from before the arrays holds the ledger in the metadata (read here, saved as
    arrays from then on) and no summaries (`_summary` makes them once)."""
    loop = dict(loop)
    old = loop.pop("ledger", None)
    ledger = (Ledger.from_dict(old) if old is not None else Ledger.from_arrays(
        {n.removeprefix("ledger."): a for n, a in arrays.items() if n.startswith("ledger.")}))
    summaries: dict = {}
    for key, a in arrays.items():
      if key.startswith("summary."):
        name, part = key.removeprefix("summary.").rsplit(".", 1)
        summaries.setdefault(name, {})[part] = a
    return cls(**loop, ledger=ledger, summaries=summaries)


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


def run(config, workdir: str, override_config: bool = False, log=_print,
        adopt_workdir: bool = False) -> dict:
  """Runs (or resumes) the loop in `workdir`; returns the final loop state as a dict,
  with `preempted` (why) when a signal stopped it before its last iteration. A
  non-empty `workdir` that is not a run's is refused unless `adopt_workdir`."""
  config_lib.validate(config)
  algorithms.algorithm(config)   # the paradigm's own checks, before anything is made
  settings_lib.rules(config)     # and the watchers' rules
  _make_workdir(workdir, adopt_workdir)
  with _Signals() as signals, _lock(workdir):
    return _run(config, workdir, override_config, log, signals)


# size: the loop itself, one banner per stage (the table of contents of a run)
def _run(config, workdir, override_config, log, signals) -> dict:
  # --- set up: mesh, model, task, sampler, step functions, checkpoints
  run_setup = s = _set_up(config, workdir, log)
  w = s.weights   # the one owner of the weights (optimize/phase.py)
  # --- restore, or start from the base model
  state = _restore(s, override_config)
  w.release_base()
  signals.starting = False   # from here a signal stops at the next stage boundary
  try:
    # --- iteration 0: the baseline
    if state.iteration < 0:
      hashes: dict = {}
      metrics, scores = _evaluate(s, w.kept.params, 0, hashes)
      state.best_pass1 = metrics["pass@1"]
      state.accepted_iteration = state.iteration = 0
      state.history.append(dict(iteration=0, **scores, kept=0, accepted=True,
                                reason="baseline", difficulty=state.difficulty,
                                **s.provenance()))
      _checkpoint(run_setup, state, True, hashes)

    # --- iterations 1..N
    while state.iteration < config.loop.iterations and not state.stopped:
      k = state.iteration + 1
      signals.check()
      # this iteration's settings: the run's, with what the watchers' rules changed
      s = _steered(run_setup, state.adjust)
      it = Iteration(k, state.ledger, state.summaries)
      w.begin()
      prompts = PromptStream(s.task, s.config.seed, state.data_state, state.difficulty)
      proposals = _self_instruct(s, w.policy(), state.difficulty, it)
      it.proposed = frozenset(p.id for p in proposals)
      prompts.add_proposals(proposals)
      for r in range(s.algorithm.rounds(s.config)):
        if s.algorithm.on_policy:   # rounds sample the weights being trained
          w.start()
        # --- acquire: samples of the current policy, scored by the verifier
        problems = prompts.take(s.config.loop.prompts_per_iteration,
                                s.config.acquire.self_instruct_share)
        with _peak_memory(it, "acquire"):
          acquired = _acquire(s, w.policy(), problems, r, it)
        _remember(s, it, acquired)
        signals.check()
        # --- select: the filters and the ledger; never a held-out prompt
        selected = _select(s, acquired, problems, r, it)
        # --- optimize: the algorithm's batches through the train step; off-policy
        # algorithms start the train state only now, so the optimizer state and the
        # sampler's cache are never held together
        w.start()
        with _peak_memory(it, "optimize"):
          batches = s.algorithm.batches(selected + _replay(s, state, it), s.stages.batches,
                                        s.seed(k, "batches"))
          w.update(batches, k, s.reporter.progress)
        if w.account.problem:
          break
        signals.check()
      trained = w.finish(k)   # the optimizer state is done with
      it.hashes["steps"] = s.records.write(k, "steps", [dict(iteration=k, **m)
                                                        for m in w.account.steps])
      signals.check()

      # --- evaluate
      with _peak_memory(it, "evaluate"):
        metrics, scores = _evaluate(s, trained, k, it.hashes)
      del trained
      # --- decide, from validation and the training records alone: the watchers'
      # rules, accept or roll back, stop on a plateau, move the difficulty
      last = next(r for r in reversed(state.history) if r["accepted"])
      row = _row(s, it, metrics, scores, last)
      fired = rules_lib.fired(s.stages.rules, row)
      accepted, reason = gate.decide(state, metrics, len(it.selected), w.account,
                                     s.stages.gate, rules_lib.verdict(fired))
      next_difficulty, move = _curriculum(s, state, it)
      state.adjust, next_difficulty, actions = _steer(run_setup, state, fired, next_difficulty, k)
      row.update(accepted=accepted, reason=reason, difficulty=state.difficulty)
      if s.config.curriculum.enabled:
        row["curriculum_move"] = move
      if s.stages.rules:
        row["rule_actions"] = actions
      if accepted:
        state.accepted_iteration = k
      w.settle(accepted, state.accepted_iteration)
      state.iteration, state.data_state = k, prompts.state()
      state.history.append(row)
      state.difficulty = next_difficulty
      # --- checkpoint
      _checkpoint(run_setup, state, accepted, it.hashes)
  except Preempted as e:
    s.reporter.log(f"{e}: stopping after the last finished stage; re-run the same "
                   f"command to continue from iteration {state.iteration + 1}")
    s.ckpt.close()
    return dict(dataclasses.asdict(state), preempted=str(e))

  s.reporter.finish(state.history, state.stopped, splits_lib.result(state.history),
                    state.parent)
  s.ckpt.close()
  return dataclasses.asdict(state)


def _make_workdir(workdir: str, adopt: bool) -> None:
  """Creates the workdir; refuses (process 0, before anything is written) a directory
  of the user's that is not a run's, unless `adopt` and none of its files has the name
  of one the run writes."""
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} exists and is not a directory")
  if jax.process_index() == 0:
    why = foreign_workdir(workdir, adopt)
    if why:
      raise UserError(why)
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
  config: ml_collections.ConfigDict
  base: "LoadedModel"            # the base model (its weights: `weights` owns them)
  task: Task
  splits: splits_lib.Splits      # validation (decisions read it), test, fresh
  sampler: Sampler
  judge: Optional[GenerateFn]    # a separate judge model; None: the model judges itself
  ckpt: Checkpointer
  reporter: Reporter
  records: RunRecords            # records/: every stage's files
  algorithm: Algorithm
  stages: settings_lib.Stages    # every stage's settings, built once
  weights: phase_lib.Weights     # the kept weights and an iteration's train state
  training: phase_lib.Training   # the step functions of the config's algorithm
  parent: Optional["Parent"]     # the run whose kept weights this one started from
  # the step functions of the rules' other algorithms and schedules, built when needed
  trainings: dict = dataclasses.field(default_factory=dict)
  # finished iterations' records, each file read once per process (an iteration's
  # records never change once it is checkpointed): stage -> {iteration: rows}
  read_back: dict = dataclasses.field(default_factory=dict)

  def generate(self, params) -> GenerateFn:
    """The model with `params` (adapters merged into the base) as a GenerateFn."""
    return model_generate(self.sampler, self.weights.model_params(params),
                          self.base.tokenizer, self.config.log.progress)

  def seed(self, k: int, stage: str, step: int = 0) -> int:
    return config_lib.stage_seed(self.config, k, stage, step)

  def provenance(self) -> dict:
    """The row's parent_* fields (none for a run from a model that is no run)."""
    return self.parent.row() if self.parent else {}


def _set_up(config, workdir: str, log) -> Setup:
  # heavy imports (transformers) kept local to the run
  from selfimprove_jax.weights import load
  algorithm = algorithms.ALGORITHMS[config.loop.algorithm]
  mesh = sharding_lib.make_mesh(dict(config.mesh))
  parent = _parent(config, workdir)
  try:
    task = get_task(config.task.name, **config.task.options.to_dict())
  except UserError as e:
    raise UserError(f"task.name={config.task.name!r}: {e}") from None
  if config.curriculum.enabled and task.difficulty_range is None:
    raise UserError(f"curriculum.enabled: task {task.name} has no difficulty knob")
  moves = [r.text for r in settings_lib.rules(config) if r.action in ("harder", "easier")]
  if moves and task.difficulty_range is None:
    raise UserError(f"evaluate.rules: {moves[0]!r}: task {task.name} has no difficulty knob")
  settings_lib.environment(config, task)   # its option errors come before the weights load
  base = load(parent.spec if parent else config.model, mesh=mesh, dtype=config.dtype,
              prompt_format=settings_lib.prompt_format(config))
  if base.tokenizer is None:
    raise UserError(f"model {config.model!r} has no tokenizer; the loop needs one")
  _check_prompts_fit(config, task, base.tokenizer)
  sampler = make_sampler(base, mesh=mesh, max_batch=config.sampling.max_batch)
  judge = None
  if config.judge.model:
    jm = load(config.judge.model, mesh=mesh, dtype=config.dtype)
    judge = model_generate(make_sampler(jm, mesh=mesh, max_batch=config.sampling.max_batch),
                           jm.params, jm.tokenizer)
  ckpt = Checkpointer(workdir, is_primary=jax.process_index() == 0, log=log)
  reporter = Reporter(workdir, tensorboard=config.log.tensorboard, plot=config.log.plot,
                      progress=config.log.progress, log=log)
  reporter.write_config(config.to_dict())
  stages = settings_lib.stages(config, algorithm, task)
  training = _training(config, algorithm, base.config, mesh)
  weights = phase_lib.Weights(stages.phase, training, base.params, config.seed,
                              reread=lambda k, shapes: ckpt.restore_params(k, shapes)[0])
  splits = splits_lib.carve(task, config.task.heldout_size, config.task.test_size,
                            config.task.fresh_size, config.task.difficulty)
  if splits.note:
    reporter.log(f"evaluation splits: {splits.note}")
  if parent:
    reporter.log(_parent_note(config, parent))
  return Setup(config, dataclasses.replace(base, params=None), task, splits, sampler, judge,
               ckpt, reporter, RunRecords(workdir), algorithm, stages, weights, training,
               parent)


def _parent(config, workdir: str) -> Optional["Parent"]:
  """The run this one starts from (weights/run_dir.py), None for a model that is no
  run: once the run has a checkpoint, the parent its loop state kept (a resumed run
  reads the weights it started from, even if the parent run went on since)."""
  from selfimprove_jax.weights import run_dir
  # 'parent': the parent phase, which chains.py runs first in WORKDIR/parent
  is_phase = config.model == config_lib.PARENT_MODEL
  spec = os.path.join(workdir, config_lib.PARENT_MODEL) if is_phase else config.model
  if run_dir.parse_run_spec(spec) is None:
    if is_phase:
      raise UserError(f"model='parent': {spec} is not a run directory (the parent phase "
                      f"runs there first: selfimprove-jax run with parent.config)")
    return None
  kept = None
  if distributed.is_primary() and is_run_dir(workdir):
    # read only, and quiet: _restore opens the checkpoints and reports what it finds
    ckpt = Checkpointer(workdir, log=lambda _: None, read_only=True)
    try:
      latest = ckpt.latest_good()
      kept = ckpt.restore_meta(latest)["loop"].get("parent") if latest is not None else None
    finally:
      ckpt.close()
  return run_dir.parent_of(spec, distributed.broadcast_json(kept))


def _parent_note(config, parent: "Parent") -> str:
  """The start-up line of a run with a parent: where its weights come from, and whether
  its validation and test splits are the parent's (evaluate/splits.py)."""
  from selfimprove_jax.weights import run_dir
  saved = run_dir.saved_config(parent.path, parent.iteration)
  differ = splits_lib.differences(config.to_dict(), saved)
  return (f"starting from run {parent.spec} ({parent.path}); " + (
      "its validation and test splits are this run's, so their scores compare"
      if not differ else f"its splits differ from this run's ({', '.join(differ)} "
      f"differ): its scores and this run's do not compare"))


def _check_prompts_fit(config, task, tokenizer, n: int = 16) -> None:
  """Refuses, before anything runs, a run that would train on nothing: a sample trains
  only on what follows its prompt within train.max_seq_len, so if none of the first `n`
  training prompts leaves room for one completion token, no iteration can train."""
  prompts = [task.problem(config.seed, i, config.task.difficulty).prompt for i in range(n)]
  shortest = min(len(ids) for ids in encode_prompts(tokenizer, prompts))
  if shortest >= config.train.max_seq_len:
    raise UserError(f"train.max_seq_len={config.train.max_seq_len} leaves no room to train: "
                    f"the shortest of the first {n} training prompts is {shortest} tokens; "
                    f"raise it above {shortest} (prompt + completion)")


def _training(config, algorithm: Algorithm, mc, mesh) -> phase_lib.Training:
  """The train step and reference log-probs of `algorithm` under `config`. LoRA: train
  states hold adapters (what checkpoints save); the stages see the base with the
  adapters merged in, and the base is the DPO / KL reference."""
  optim = algorithms.optimizer_config(config, algorithm)
  lora = lora_lib.from_config(config.lora)
  return phase_lib.Training(
      mc, optim, mesh, lora, make_train_step(mc.replace(remat=config.remat), optim, mesh, lora),
      make_logprob_fn(mc, mesh, config.optim.logprob_chunk))


def _steered(s: Setup, adjust: dict) -> Setup:
  """The setup of an iteration: the run's (`s`), with the config's keys that the
  watchers' rules changed (`adjust`, the loop state's) and the stage settings, the
  algorithm and the train step they give. Validation's scoring and the gate keep the
  run's settings, so the numbers that decide compare across iterations."""
  if not adjust:
    s.weights.use(s.stages.phase, s.training)
    return s
  config = settings_lib.steered(s.config, adjust)
  algorithm = algorithms.ALGORITHMS[config.loop.algorithm]
  stages = dataclasses.replace(settings_lib.stages(config, algorithm, s.task),
                               evaluate=s.stages.evaluate, gate=s.stages.gate)
  optim = algorithms.optimizer_config(config, algorithm)
  training = s.training
  if optim.to_dict() != s.training.optim.to_dict():   # another loss or schedule
    key = json.dumps(optim.to_dict(), sort_keys=True, default=str)
    if key not in s.trainings:
      s.trainings[key] = _training(config, algorithm, s.base.config, s.training.mesh)
    training = s.trainings[key]
  s.weights.use(stages.phase, training)
  return dataclasses.replace(s, config=config, algorithm=algorithm, stages=stages)


def _restore(s: Setup, override_config: bool) -> "LoopState":
  """The loop state of the newest checkpoint that verifies, its weights kept by
  `s.weights`; else the start. A fresh-optimizer run keeps (and saves) weights only;
  with optim.continue_state the whole train state."""
  config, w = s.config, s.weights
  state = LoopState(difficulty=config.task.difficulty,
                    parent=s.parent.row() if s.parent else None)
  kept = w.fresh()
  # process 0 picks the checkpoint (file checks could race or differ between hosts)
  latest = distributed.broadcast_json(s.ckpt.latest_good() if distributed.is_primary()
                                      else None)
  if latest is not None:
    if config.optim.continue_state:
      kept, meta = s.ckpt.restore(latest, w.abstract())
    else:
      params, meta = s.ckpt.restore_params(latest, w.shapes)
      kept = kept.replace(params=params)
    _check_compatible(meta["config"], config, s.ckpt.workdir, override_config)
    try:
      state = LoopState.from_checkpoint(meta["loop"], s.ckpt.restore_loop_arrays(latest))
    except ValueError as e:
      raise UserError(f"checkpoint {s.ckpt.step_dir(latest)}: its loop state does not "
                      f"load ({e}); move it aside to resume from the one before") from None
    s.reporter.log(f"resuming {s.ckpt.workdir} after iteration {state.iteration}")
    # metrics.jsonl is derived from the checkpoint's history: a kill between the save
    # and its rewrite, or a deleted file, loses no row
    s.reporter.rewrite(state.history, _step_rows(s, state.iteration))
  w.keep(kept)
  return state


def _check_compatible(saved: dict, config, workdir: str, override: bool) -> None:
  diffs = config_lib.result_differences(saved, config.to_dict())
  if diffs and not override:
    raise UserError(f"workdir {workdir} was written with a different config "
                    f"({', '.join(diffs[:5])}{'...' if len(diffs) > 5 else ''} differ); "
                    f"use a new workdir or pass --override_config")


# ----------------------------------------------------------------------------- one iteration


@dataclasses.dataclass
class Iteration:
  """One iteration's running account of its stages: what was sampled and kept, the
  files written, each stage's own numbers for the row (`_row` merges them once)."""
  k: int
  ledger: Ledger                  # the loop state's difficulty ledger, updated by each select
  summaries: dict                 # the loop state's paradigm summaries, updated by each acquire
  hashes: dict = dataclasses.field(default_factory=dict)   # stage -> records hash
  acquired: list = dataclasses.field(default_factory=list)
  selected: list = dataclasses.field(default_factory=list)
  problems: dict = dataclasses.field(default_factory=dict)  # id -> the rounds' problems
  proposed: frozenset = frozenset()   # ids of the problems the model proposed
  self_instruct: dict = dataclasses.field(default_factory=dict)   # its status counts
  counts: dict = dataclasses.field(default_factory=dict)   # summed over rounds
  peaks: dict = dataclasses.field(default_factory=dict)    # peak_rss_<stage>_gb
  started: float = dataclasses.field(default_factory=time.time)

  def stage_name(self, stage: str, r: int, rounds: int) -> str:
    return stage if rounds == 1 else f"{stage}_{r}"

  def add_counts(self, counts: dict) -> None:
    """Adds a round's counts to the row's (summed over an iteration's rounds)."""
    for name, n in counts.items():
      self.counts[name] = self.counts.get(name, 0) + n


def _self_instruct(s: Setup, params, difficulty, it: Iteration) -> list[Problem]:
  """The model's proposed problems for this iteration (acquire/self_instruct.py); [] when the
  config mixes in none."""
  if s.config.acquire.self_instruct_share <= 0:
    return []
  settings = s.stages.self_instruct
  seeds = s.task.train_problems(s.seed(it.k, "self_instruct_seeds"),
                                max(2 * settings.examples, 8), difficulty)
  rows, it.hashes["self_instruct"], _ = s.records.cached(
      it.k, "self_instruct",
      lambda: self_instruct.propose(s.generate(params), s.task, seeds, s.splits.validation,
                                    settings,
                                    s.seed(it.k, "self_instruct"), difficulty)[1],
      s.reporter.log, samples=False)
  it.self_instruct = self_instruct.summarize(rows)
  s.reporter.stage(it.k, "self_instruct", ", ".join(
      f"{n.removeprefix('self_instruct_')} {c}" for n, c in it.self_instruct.items()))
  return [Problem.from_json(r["problem"]) for r in rows if r["status"] == "kept"]


def _replay(s: Setup, state: LoopState, it: Iteration) -> list[Sample]:
  """select.replay: the selected samples of the last accepted iterations (their
  records on disk, each file read once: the pool keeps the last select.replay
  accepted iterations' and drops the older), minus those this iteration selected
  again (same prompt and completion)."""
  n = s.stages.select.replay
  if not n:
    return []
  accepted = list(itertools.islice((row["iteration"] for row in reversed(state.history)
                                    if row["accepted"] and 0 < row["iteration"] < it.k), n))
  seen = {(x.prompt, x.completion) for x in it.selected}
  out = []
  for x in _read_back(s, "select", accepted[::-1], s.records.read, drop_others=True):
    if (x.prompt, x.completion) not in seen:
      seen.add((x.prompt, x.completion))
      out.append(x)
  if out:
    it.add_counts({"replayed": len(out)})
  return out


def _summary(s: Setup, it: Iteration) -> Optional[dict]:
  """What the paradigm keeps of the run's earlier rounds (`Round.earlier`): its running
  summary (`Algorithm.remember`), None when it keeps none. The first round of a
  paradigm in a run without one (a checkpoint from before summaries were kept, a rule
  that switched to it) makes it from every earlier round's records, once."""
  remember = s.algorithm.remember
  if remember is None:
    return None
  if s.algorithm.name not in it.summaries:
    it.summaries[s.algorithm.name] = remember(
        None, s.records.earlier(it.k, "acquire") + it.acquired, s.task)
  return it.summaries[s.algorithm.name]


def _remember(s: Setup, it: Iteration, samples: list[Sample]) -> None:
  """Adds a round's samples to every running summary the run keeps (the loop state's,
  saved with the checkpoint), whichever paradigm made them."""
  for name, summary in it.summaries.items():
    it.summaries[name] = algorithms.ALGORITHMS[name].remember(summary, samples, s.task)


def _acquire(s: Setup, params, problems, r: int, it: Iteration) -> list[Sample]:
  name = it.stage_name("acquire", r, s.algorithm.rounds(s.config))
  # the leak screens compare with validation's texts; the task's held-out side (test and
  # fresh included) is refused by id, so the test split's size changes no decision
  round_ = acquire_lib.Round(s.generate(params), s.judge, s.task, s.splits.validation,
                             s.stages.acquire, s.seed(it.k, "acquire", r), it.k,
                             s.stages.paradigm, _summary(s, it))
  samples, it.hashes[name], cached = s.records.cached(
      it.k, name, lambda: s.algorithm.acquire(round_, problems), s.reporter.log)
  it.acquired += samples
  it.problems.update((p.id, p) for p in problems)
  s.reporter.stage(it.k, name, f"{len(samples)} samples, train pass rate "
                   f"{pass_rate(samples, s.stages.select.reward_threshold):.2f}"
                   + (" (from disk)" if cached else ""))
  return samples


def _select(s: Setup, acquired: list[Sample], problems, r: int,
            it: Iteration) -> list[Sample]:
  st = s.stages.select
  it.ledger.update(acquired, it.k, st.reward_threshold)
  selected, counts = select_lib.apply_filters(acquired, st)
  # never train on held-out prompts, whatever a filter let through
  heldout = {p.id for p in s.splits.validation}
  selected = [x for x in selected
              if x.problem_id not in heldout and not s.task.is_heldout(x.problem_id)]
  name = it.stage_name("select", r, s.algorithm.rounds(s.config))
  it.hashes[name] = s.records.write(it.k, name, selected)
  it.selected += selected
  s.reporter.stage(it.k, name, ", ".join(f"{n} {c}" for n, c in counts.items()))
  if s.stages.acquire.label_free:
    # checked only now, for the metrics: choosing the data above read no reference
    it.add_counts(evaluation.check_pseudo_labels(s.task, problems, acquired))
  return selected


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
    it.peaks[key] = max(it.peaks.get(key, 0.0), round(m.host_peak / 1e9, 2))
    it.peaks["peak_rss_gb"] = round(memory_lib.process_peak_rss() / 1e9, 2)


# -------------------------------------------------------------------------- evaluate, decide, save


def _evaluate(s: Setup, params, k: int, hashes: dict) -> tuple[dict, dict]:
  """(validation metrics, every split's metrics under its row prefix) of `params`, from
  the per-problem results of records/iter_K/eval_<split>.jsonl (reused on resume; their
  hashes go into `hashes`). Validation alone feeds decisions; the test and fresh splits
  score greedy pass@1 and mean reward."""
  by_split: dict = {}
  for split in splits_lib.names(s.splits):
    st, seed = s.stages.evaluate, s.seed(k, "evaluate")
    problems = s.splits.validation
    if split != "validation":
      st, seed = dataclasses.replace(st, maj_k=1, strategies=()), s.seed(k, f"evaluate_{split}")
      problems = s.splits.test if split == "test" else splits_lib.fresh(
          s.task, s.splits, s.seed(k, "fresh"), s.config.task.difficulty)
    if not problems:   # the task's held-out side has no fresh problems left
      continue
    rows, hashes[f"eval_{split}"], cached = s.records.cached(
        k, f"eval_{split}", lambda: evaluation.results(s.generate(params), s.task, problems,
                                                       st, seed, judge=s.judge),
        s.reporter.log, samples=False)
    by_split[split] = evaluation.summarize(rows, st)
    s.reporter.stage(k, f"evaluate {split}", ", ".join(
        f"{n} {v:.3f}" for n, v in by_split[split].items()) + (" (from disk)" if cached else ""))
  scores = {n: v for split, m in by_split.items() for n, v in splits_lib.prefixed(split, m).items()}
  return by_split["validation"], scores


def _curriculum(s: Setup, state: LoopState, it: Iteration) -> tuple[Any, Optional[dict]]:
  """(the next iteration's difficulty, the move or None): moved toward the pass-rate
  band when the curriculum is on."""
  c = s.config.curriculum
  if not c.enabled:
    return state.difficulty, None
  difficulty, move = curriculum_lib.step(
      state.difficulty, curriculum_lib.ledger_pass_rate(it.ledger, it.k),
      s.task.difficulty_range, min_pass_rate=c.min_pass_rate,
      max_pass_rate=c.max_pass_rate, step_size=c.step)
  if move:
    s.reporter.stage(it.k, "curriculum", f"difficulty {move['from']} -> {move['to']} "
                     f"({move['reason']})")
  return difficulty, move


def _row(s: Setup, it: Iteration, metrics: dict, scores: dict, last: dict) -> dict:
  """What the iteration measured, merged once from what each stage returned, with the
  watchers' signals (evaluate/watchers.py; `last`: the last accepted row); the
  decision is added to it."""
  thr = s.stages.select.reward_threshold
  counts = dict(it.counts)
  if "pseudo_labels_checked" in counts:
    checked = counts["pseudo_labels_checked"]
    counts["pseudo_label_precision"] = (counts["pseudo_labels_right"] / checked if checked
                                        else float("nan"))
  row = {"iteration": it.k, **scores, **s.provenance(), "kept": len(it.selected),
         "acquired": len(it.acquired), "train_pass_rate": pass_rate(it.acquired, thr),
         **s.weights.account.row(s.stages.batches.epochs),
         "seconds": round(time.time() - it.started, 1),
         **it.self_instruct, **counts, **it.peaks,
         **s.algorithm.metrics(it.acquired, thr),
         **acquire_lib.summary(it.acquired, s.stages.acquire),
         **watchers.iteration(
             it.acquired, it.selected,
             lambda x: s.task.extract_answer(x.completion, it.problems.get(x.problem_id)),
             it.proposed, it.counts.get("replayed", 0), metrics, last)}
  return row


def _steer(s: Setup, state: LoopState, fired: list, difficulty, k: int):
  """(the next iterations' adjustments, the next difficulty, the row's actions) of the
  rules that fired; each action gets a stage line."""
  configured = {key: s.config[key.split(".")[0]][key.split(".")[1]]
                for key in rules_lib.ACTIONS.values() if key}
  adjust, difficulty, actions = rules_lib.steer(
      fired, state.adjust, configured, difficulty, s.task.difficulty_range,
      s.config.curriculum.step)
  for a in actions:
    s.reporter.stage(k, "rules", f"{a['signal']} = {a['value']:.3f}: {a['action']} "
                     f"({a['rule']})")
  return adjust, difficulty, actions


def _checkpoint(s: Setup, state: LoopState, accepted: bool, hashes: dict) -> None:
  """Saves iteration `state.iteration` (weights, and the optimizer state when it
  continues across iterations), prunes, and reports the row."""
  meta = json.loads(json.dumps({"loop": state.to_json(),
                                "config": s.config.to_dict()}, default=str))
  k = state.iteration
  s.ckpt.save(k, s.weights.saved(), meta, accepted, hashes, state.arrays())
  # from the loop state, not the manifest: every process must delete the same
  # checkpoints (Orbax deletes collectively) and only process 0 writes the manifest
  s.ckpt.prune({h["iteration"] for h in state.history if h["accepted"]} | {k})
  fault_point("saved", k)   # crash tests: saved, its metrics.jsonl row not yet written
  s.reporter.iteration(state.history[-1], state.history, _step_rows(s, k))


def _step_rows(s: Setup, k: int) -> list:
  """Every optimizer step's record of iterations 1..k (each iteration's file read
  once per process)."""
  return _read_back(s, "steps", range(1, k + 1), s.records.rows)


def _read_back(s: Setup, stage: str, ks, read, drop_others: bool = False) -> list:
  """The records of `stage` of the finished iterations `ks`, in order, each file read
  (`read(k, stage)`) the first time it is asked for and then kept; `drop_others`
  forgets the other iterations' (a pool that moves on keeps only its own)."""
  kept = s.read_back.setdefault(stage, {})
  if drop_others:
    for j in set(kept) - set(ks):
      del kept[j]
  for j in ks:
    if j not in kept:
      kept[j] = read(j, stage)
  return [x for j in ks for x in kept[j]]
