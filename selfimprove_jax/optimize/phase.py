"""The optimize phase: the one owner of the weights during an iteration.

`Weights` holds the kept train state (the last accepted weights) from one iteration to
the next, and during an iteration the train state its updates change. It decides, in
one place, what the loop would otherwise thread through a handful of handles:
  - the train state an iteration starts from (a copy of the kept state with
    optim.continue_state, else a fresh optimizer on the kept weights, or on the start
    weights with loop.restart_from_base: ReST-EM);
  - donation: when nothing reads the kept weights while an iteration trains (no DPO /
    KL reference, no LoRA, no continued optimizer state), the train state takes over
    their buffers (one copy of the weights fewer) and a rollback re-reads them from
    their checkpoint;
  - the DPO / KL reference (the iteration's start weights; LoRA: the base);
  - the per-update guard (non-finite loss or weights, an exploding update) and the
    final check of the weights that would be kept;
  - accept (the trained weights become the kept ones) or roll back.
The loop asks it for the weights to sample and evaluate with; it never holds one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from selfimprove_jax.errors import UserError
from selfimprove_jax.model import lora as lora_lib
from selfimprove_jax.optimize import batches as batches_lib
from selfimprove_jax.runtime.checkpoint import fault_point, fault_requested
from selfimprove_jax.optimize.state import (TrainState, abstract_train_state,
                                            create_train_state, with_horizon)


@dataclasses.dataclass(frozen=True)
class Settings:
  """How an iteration trains (config.optim, config.loop and the algorithm's needs)."""
  continue_state: bool = False      # the optimizer state goes on across iterations
  restart_from_base: bool = False   # every iteration starts from the start weights
  needs_reference: bool = False     # the loss reads reference log-probs (DPO, KL)
  rows_per_example: int = 1         # DPO: a (chosen, rejected) pair is two rows
  fresh_horizon: bool = False       # a fresh schedule spans the steps taken, not planned
  max_update_ratio: float = 0.0     # ||update|| / ||weights|| above this: not kept (0: off)


@dataclasses.dataclass
class Account:
  """What one iteration's updates did, for its row and its decision."""
  losses: list = dataclasses.field(default_factory=list)
  loss_tokens: int = 0
  step_metrics: dict = dataclasses.field(default_factory=dict)   # the loss's own, per step
  problem: Optional[str] = None     # why these weights must not be kept
  steps: list = dataclasses.field(default_factory=list)   # every step's metrics (steps.jsonl)

  def row(self, epochs: int) -> dict:
    """The row's optimizer fields: the last epoch's mean loss, steps, loss tokens, and
    the loss's own metrics averaged over the steps."""
    last = self.losses[-max(1, len(self.losses) // max(1, epochs)):]
    return {"train_loss": float(np.mean(last)) if self.losses else float("nan"),
            "optimizer_steps": len(self.losses), "loss_tokens": self.loss_tokens,
            "nonfinite": self.problem,
            **{f"train_{n}": float(np.mean(v)) for n, v in self.step_metrics.items()}}


# train step metrics the row reports otherwise (loss, loss_tokens) or that only guard
# the update (`update_problem`); the loss's own metrics are averaged into the row
_STEP_GUARDS = frozenset(("loss", "loss_tokens", "tokens", "grad_norm", "update_norm",
                          "param_norm", "prev_param_norm", "learning_rate"))


@dataclasses.dataclass(frozen=True)
class Training:
  """What training the model takes, built once per run: its config, the optimizer's
  (config.optim with the derived loss and total steps), the mesh, LoRA (None: full
  weights), the jitted train step (state donated) and the reference log-probs."""
  model_config: Any
  optim: Any
  mesh: Any
  lora: Optional[lora_lib.LoraConfig]
  train_step: Callable
  ref_logprobs: Callable


class Weights:
  """The kept weights, and during an iteration the train state and what it became."""

  def __init__(self, settings: Settings, training: Training, base_params, seed: int,
               reread: Callable[[int, Any], Any]):
    """`reread(k, shapes)`: iteration k's kept weights from its checkpoint."""
    self.settings, self._t = settings, training
    self._lora = training.lora
    self._base = base_params          # None once nothing reads it (`release_base`)
    # what iteration 1 trains: the base weights, or new adapters with LoRA
    self._initial = (base_params if self._lora is None else
                     lora_lib.init_lora(training.model_config, self._lora, seed, training.mesh))
    self.shapes = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self._initial)
    self._reread = reread
    # adapters merged into the base by one jitted function, built once (identity without
    # LoRA; the base stays alive with LoRA, `release_base`)
    self._merged = lora_lib.model_params_fn(base_params, self._lora)
    self._kept: Optional[TrainState] = None      # None only while the train state owns it
    self._train: Optional[TrainState] = None
    self._trained: Optional[TrainState] = None
    self.account = Account()

  def use(self, settings: Settings, training: Training) -> None:
    """Train the next iterations as `settings` and with `training`'s step functions
    (the watchers' rules may switch the algorithm or change its schedule)."""
    if training.lora != self._lora or training.model_config != self._t.model_config:
      raise ValueError("another model or LoRA set-up cannot train the same weights")
    self.settings, self._t = settings, training

  # ------------------------------------------------------------------ the kept weights

  def fresh(self) -> TrainState:
    """A train state on the start weights (what a run with no checkpoint keeps)."""
    return self._state(self._initial)

  def abstract(self) -> TrainState:
    """The shapes (with shardings) of a whole train state, as checkpoints hold it."""
    t = self._t
    return abstract_train_state(t.model_config, t.optim, self._initial, t.mesh, self._lora)

  def keep(self, state: TrainState) -> None:
    """`state` (restored, or fresh) becomes the kept one."""
    self._kept = self._without_optimizer(state)

  def release_base(self) -> None:
    """Drops the base weights when nothing reads them after start-up (no LoRA, no
    loop.restart_from_base): the kept weights are the only copy the loop needs."""
    if self._lora is None and not self.settings.restart_from_base:
      self._base = self._initial = None

  @property
  def kept(self) -> TrainState:
    return self._kept

  def saved(self):
    """What a checkpoint holds: the kept train state when its optimizer goes on, else
    its weights."""
    return self._kept if self.settings.continue_state else {"params": self._kept.params}

  def model_params(self, params):
    """Weights as the model takes them (LoRA: the adapters merged into the base)."""
    return self._merged(params)

  # ------------------------------------------------------------------ one iteration

  def begin(self) -> None:
    """A new iteration: nothing trained yet."""
    self.account = Account()

  def policy(self):
    """The weights the current policy samples with: the train state's once it exists
    (on-policy rounds), else the kept ones."""
    return (self._kept if self._train is None else self._train).params

  def start(self) -> None:
    """Makes the iteration's train state, once (see the module docstring)."""
    if self._train is not None:
      return
    st = self.settings
    if st.continue_state:
      self._train = jax.tree.map(jnp.copy, self._kept)
      return
    hold = self._holds_kept()
    start = self._initial if st.restart_from_base else self._kept.params
    t = self._t
    self._train = create_train_state(t.model_config, t.optim, start, t.mesh, self._lora,
                                     donate=not hold and not st.restart_from_base)
    if not hold:
      self._kept = None   # its buffers are the train state's now (or no longer read)

  def update(self, host_batches: list, iteration: int,
             progress: Callable[[Iterable, str], Iterable]) -> None:
    """The host batches through the train step; stops at the first update that must
    not be kept (`update_problem`)."""
    self.start()
    train = self._train
    if self.settings.fresh_horizon:
      # a fresh schedule spans the steps this iteration takes, not the planned bound
      # (every sample kept), which a filtered iteration never comes near
      train = with_horizon(train, len(host_batches))
    ref = self._reference()
    ref_fn = None if ref is None else (lambda t, m: self._t.ref_logprobs(ref, t, m))
    a = self.account
    self._train = None   # the step donates it: only `train` refers to the live state
    for b in progress(host_batches, f"iter {iteration} optimize"):
      b = batches_lib.device_ready(b, self._t.mesh, self.settings.rows_per_example, ref_fn)
      train, m = self._step(train, b)
      a.steps.append({"step": int(train.step), **{n: float(m[n]) for n in sorted(m)}})
      a.problem = update_problem(m, self.settings.max_update_ratio, int(train.step))
      if a.problem:
        break
      a.losses.append(float(m["loss"]))
      a.loss_tokens += int(m["loss_tokens"])
      for name in sorted(set(m) - _STEP_GUARDS):   # e.g. GRPO's kl and entropy, DPO's accuracy
        a.step_metrics.setdefault(name, []).append(float(m[name]))
      fault_point("optimize", iteration)
    self._train = train

  def finish(self, iteration: int):
    """Ends the iteration's training: checks the weights that would be kept (whatever
    happened to them after the last step's metrics were taken) and drops the optimizer
    state unless it goes on; returns the trained weights to evaluate."""
    self.start()   # an iteration that selected nothing still has (untrained) weights
    train, self._train = self._train, None
    if fault_requested("nan_update", iteration):   # crash tests: a NaN in the last update
      train = train.replace(params=jax.tree.map(lambda x: x * jnp.nan, train.params))
    if not self.account.problem and not bool(_all_finite(train.params)):
      self.account.problem = "non-finite values in the updated weights"
    self._trained = self._without_optimizer(train)
    return self._trained.params

  def settle(self, accepted: bool, accepted_iteration: int) -> None:
    """Accepted: the trained weights are kept. Else the kept ones stay, read back from
    the checkpoint of `accepted_iteration` when the train state had taken them over."""
    trained, self._trained = self._trained, None
    if accepted:
      self._kept = trained
    del trained
    if self._kept is None:
      params = self._reread(accepted_iteration, self.shapes)
      self._kept = self._state(params, donate=True)

  # ------------------------------------------------------------------ internals

  def _state(self, params, donate: bool = False) -> TrainState:
    t = self._t
    return self._without_optimizer(create_train_state(
        t.model_config, t.optim, params, t.mesh, self._lora, donate=donate))

  def _without_optimizer(self, state: TrainState) -> TrainState:
    """Without optim.continue_state the optimizer state is dropped between iterations
    (the next one starts a fresh one)."""
    return state if self.settings.continue_state else state.replace(opt_state=None)

  def _holds_kept(self) -> bool:
    """Whether the kept weights stay in memory while an iteration trains: the DPO / KL
    reference is them, LoRA's adapters are small, a continued optimizer state is
    copied. Otherwise their checkpoint is the copy a rollback needs."""
    st = self.settings
    return st.continue_state or self._lora is not None or st.needs_reference

  def _reference(self):
    """The DPO / KL reference weights: the iteration's start (LoRA: the base itself);
    None when the loss needs none."""
    if not self.settings.needs_reference:
      return None
    if self._lora is not None:
      return self._base
    return self._initial if self.settings.restart_from_base else self._kept.params

  def _step(self, train, b: dict):
    """One train step and its metrics on the host. Running out of memory there (an XLA
    error, reported when the metrics are fetched) becomes a one-line error naming the
    settings that make the step smaller; the run resumes from its last checkpoint."""
    try:
      step = self._t.train_step
      train, m = step(train, b) if self._lora is None else step(train, b, self._base)
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


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def update_problem(m: dict, max_update_ratio: float, step: int) -> Optional[str]:
  """Why optimizer step `step` (its metrics `m`) must not be kept, or None."""
  if not all(math.isfinite(m[key]) for key in ("loss", "grad_norm", "update_norm",
                                               "param_norm")):
    return f"non-finite loss, gradient or weights at optimizer step {step}"
  ratio = m["update_norm"] / max(m["prev_param_norm"], 1e-12)
  if max_update_ratio and ratio > max_update_ratio:
    return (f"exploding update at optimizer step {step} (||update|| / ||weights|| = "
            f"{ratio:.3g} > optim.max_update_ratio={max_update_ratio})")
  return None
