"""Optimize: how each paradigm turns one round's selected samples into optimizer batches.

An `Algorithm` is the whole difference between paradigms as far as the loop is
concerned: how a round's samples are made (by default `acquire.acquire_round`: the
task's problems, sampled and verified; self-play proposes its own), which loss the
train step uses, how many acquire -> update rounds one iteration has (on-policy RL
samples again after every update; expert iteration and DPO sample once), how selected
samples become fixed-shape host batches, and whether the loss needs reference
log-probs, what it asks of a config (`check`, called before set-up) and the settings
of its own sections (`settings`). A new paradigm is a module giving those functions
(`paradigms/`: self-play, SPIN, label-free RL) and an entry in `ALGORITHMS`; how
samples become batches is in batches.py.

The optimizer settings the loop derives from the config (the loss name, the schedule's
total steps) are computed here, in `optimizer_config`, and nowhere else; the user's
config is never written to.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import ml_collections

from selfimprove_jax.acquire import rounds as acquire_lib
from selfimprove_jax.config import names
from selfimprove_jax.errors import UserError
from selfimprove_jax.optimize import batches as batches_lib
from selfimprove_jax.optimize.batches import dpo_batches, rl_batches, sft_batches
from selfimprove_jax.optimize.config import POLICY_GRADIENT_LOSSES
from selfimprove_jax.paradigms import common, self_play, spin, ttrl
from selfimprove_jax.records import Sample, group_by_problem

# (selected samples of one round, its settings, seed) -> host batches
BatchFn = Callable[[Sequence[Sample], batches_lib.Settings, int], list]
# (the round's context, its problems) -> scored samples (acquire.acquire_round's form)
AcquireFn = Callable[[acquire_lib.Round, Sequence], list]


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A paradigm, as the loop sees it."""
  name: str
  batches: BatchFn
  loss: Optional[str] = None        # the train step's loss; None: the GRPO family's choice
                                    # in config.optim.loss (grpo | rloo | dr_grpo)
  acquire: AcquireFn = acquire_lib.acquire_round   # how a round's samples are made
  rows_per_example: int = 1         # DPO: a (chosen, rejected) pair is two rows
  on_policy: bool = False           # True: rl_steps acquire -> update rounds per iteration
  reference: str = "kl"             # reference log-probs: 'always' | 'kl' (when
                                    # optim.kl_coef > 0) | 'never'
  # (an iteration's acquired samples, the reward threshold) -> the paradigm's own
  # metrics for its row
  metrics: Callable[[Sequence[Sample], float], dict] = lambda samples, threshold: {}
  # config -> None, or a one-line UserError for what the paradigm cannot do
  check: Callable[[Any], None] = lambda config: None
  # config -> the settings of the paradigm's own sections (acquire.Round.paradigm)
  settings: Callable[[Any], Any] = lambda config: None
  # what its acquire reads of the run's earlier rounds (acquire.Round.earlier), as a
  # running summary: (the summary so far or None, a round's samples, the task) -> the
  # summary with them, a dict of numpy arrays. The loop updates it after every round
  # and saves it with each checkpoint, so no round re-reads earlier records. None:
  # the paradigm reads nothing of earlier rounds.
  remember: Optional[Callable[[Optional[dict], Sequence[Sample], Any], dict]] = None

  def loss_name(self, config) -> str:
    if self.loss is not None:
      return self.loss
    return config.optim.loss if config.optim.loss in POLICY_GRADIENT_LOSSES else "grpo"

  def rounds(self, config) -> int:
    return config.loop.rl_steps if self.on_policy else 1

  def needs_reference(self, config) -> bool:
    return self.reference == "always" or (self.reference == "kl" and config.optim.kl_coef > 0)

  def steps_per_iteration(self, config) -> int:
    """Optimizer steps one iteration plans for (its upper bound: every sample kept)."""
    if self.on_policy:
      return config.loop.rl_steps
    rows = config.loop.prompts_per_iteration * config.loop.samples_per_prompt
    return max(1, math.ceil(rows / config.train.batch_size) * config.train.epochs)


def optimizer_config(config, algorithm: Algorithm) -> ml_collections.ConfigDict:
  """config.optim with what the loop derives: `loss` (the algorithm's) and `total_steps`
  (one iteration's planned steps; with optim.continue_state the schedule spans every
  iteration of the run)."""
  cfg = ml_collections.ConfigDict(config.optim.to_dict())
  steps = algorithm.steps_per_iteration(config)
  cfg.total_steps = max(1, steps * (config.loop.iterations if config.optim.continue_state
                                    else 1))
  cfg.loss = algorithm.loss_name(config)
  return cfg


def rl_metrics(samples: Sequence[Sample], threshold: float) -> dict:
  """The share of prompts whose G samples all got one reward: their group-relative
  advantages are zero (GRPO, Dr. GRPO and RLOO alike), so they teach nothing."""
  del threshold
  groups = group_by_problem(samples).values()
  flat = sum(len({s.reward for s in g}) == 1 for g in groups)
  return {"zero_advantage_groups": flat / max(1, len(groups))}


def check_dpo(config) -> None:
  """Verifier pairs need both right and wrong samples to pass the filters."""
  if config.loop.dpo_pairs == "verifier" and "correct" in names(config.select.filters):
    raise UserError("select.filters: 'correct' keeps only right answers, and loop.algorithm="
                    "dpo pairs right with wrong ones from the selected samples")


def check_grpo(config) -> None:
  """On-policy group-relative RL: G >= 2, and every sample from the policy itself."""
  if config.acquire.rationalize:
    raise UserError("acquire.rationalize: rationalizations are sampled from the hinted "
                    "prompt, not the policy, and loop.algorithm=grpo needs on-policy samples")
  common.check_group(config)
  common.check_no_replay(config)


ALGORITHMS = {
    "sft": Algorithm("sft", sft_batches, loss="sft", reference="never"),
    "dpo": Algorithm("dpo", dpo_batches, loss="dpo", rows_per_example=2, reference="always",
                     check=check_dpo),
    "grpo": Algorithm("grpo", rl_batches, on_policy=True, metrics=rl_metrics,
                      check=check_grpo),
    "self_play": Algorithm("self_play", self_play.self_play_batches, on_policy=True,
                           acquire=self_play.self_play_round,
                           metrics=self_play.self_play_metrics, check=self_play.check,
                           settings=self_play.settings, remember=self_play.remember),
    "spin": Algorithm("spin", spin.spin_batches, loss="dpo", rows_per_example=2,
                      reference="always", acquire=spin.spin_round, metrics=spin.spin_metrics,
                      check=spin.check),
    "ttrl": Algorithm("ttrl", rl_batches, on_policy=True, acquire=ttrl.ttrl_round,
                      metrics=ttrl.ttrl_metrics, check=ttrl.check),
}


def algorithm(config) -> Algorithm:
  """The registered paradigm `config.loop.algorithm` names, after its own checks of the
  config (one-line UserErrors, before anything is set up)."""
  name = config.loop.algorithm
  if name not in ALGORITHMS:
    raise UserError(f"loop.algorithm={name!r} is not one of {', '.join(ALGORITHMS)}")
  ALGORITHMS[name].check(config)
  return ALGORITHMS[name]
