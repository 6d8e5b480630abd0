"""Optimize: how each paradigm turns one round's selected samples into optimizer batches.

An `Algorithm` is the whole difference between paradigms as far as the loop is
concerned: how a round's samples are made (by default `acquire.acquire_round`: the
task's problems, sampled and verified; self-play proposes its own), which loss the
train step uses, how many acquire -> update rounds one iteration has (on-policy RL
samples again after every update; expert iteration and DPO sample once), how selected
samples become fixed-shape host batches, and whether the loss needs reference
log-probs. A new paradigm is a module defining one and an entry in `ALGORITHMS`.

Batches are built from the iteration's selected samples and a seed derived from
(config.seed, iteration): rebuilding them after an interruption gives the same batches,
so they need no iterator state of their own in the checkpoint.

The optimizer settings the loop derives from the config (the loss name, the schedule's
total steps) are computed here, in `optimizer_config`, and nowhere else; the user's
config is never written to.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import ml_collections
import numpy as np

from selfimprove_jax import acquire as acquire_lib
from selfimprove_jax import judge as judge_lib
from selfimprove_jax.optimize.config import POLICY_GRADIENT_LOSSES
from selfimprove_jax.records import Sample, group_by_problem

# (selected samples of one round, config, seed) -> host batches
BatchFn = Callable[[Sequence[Sample], "ml_collections.ConfigDict", int], list]
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
  # (an iteration's acquired samples, config) -> the paradigm's own metrics for its row
  metrics: Callable[[Sequence[Sample], Any], dict] = lambda samples, config: {}

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


# ----------------------------------------------------------------------------- batches


def _pad_rows(rows: list[tuple[list[int], int]], batch_size: int, max_len: int) -> dict:
  """rows of (tokens, prompt_len) -> right-padded numpy batch with a completion mask."""
  B = max(batch_size, len(rows))
  tokens = np.zeros((B, max_len), np.int32)
  input_mask = np.zeros((B, max_len), np.int32)
  loss_mask = np.zeros((B, max_len), np.int32)
  for i, (toks, plen) in enumerate(rows):
    toks = toks[:max_len]
    tokens[i, :len(toks)] = toks
    input_mask[i, :len(toks)] = 1
    loss_mask[i, plen:len(toks)] = 1
  return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask}


def _row(s: Sample) -> tuple[list[int], int]:
  return s.prompt_tokens + s.completion_tokens, len(s.prompt_tokens)


def _epochs(n: int, batch_size: int, epochs: int, seed: int):
  """Index lists of shuffled batches over `epochs` passes of n items."""
  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    order = rng.permutation(n)
    for s in range(0, n, batch_size):
      yield order[s:s + batch_size]


def sft_batches(samples: Sequence[Sample], config, seed: int) -> list[dict]:
  """Shuffled fixed-shape SFT batches over train.epochs passes; the last partial batch
  is padded with empty rows (loss_mask 0), so every batch has the same shape."""
  t = config.train
  return [_pad_rows([_row(samples[i]) for i in idx], t.batch_size, t.max_seq_len)
          for idx in _epochs(len(samples), t.batch_size, t.epochs, seed)]


def verifier_pairs(samples: Sequence[Sample], threshold: float,
                   seed: int) -> list[tuple[Sample, Sample]]:
  """(chosen, rejected) pairs from one prompt's samples: a correct and an incorrect
  completion (the verifier decides); at most one pair per prompt per distinct pair."""
  pairs = []
  for group in group_by_problem(samples).values():
    good = [s for s in group if s.reward >= threshold]
    bad = [s for s in group if s.reward < threshold]
    pairs += list(zip(good, bad))
  np.random.default_rng(seed).shuffle(pairs)
  return pairs


def dpo_batches(samples: Sequence[Sample], config, seed: int) -> list[dict]:
  """Pairs from the *selected* samples only (so the select filters and the held-out
  guard apply to DPO too): the verifier's right vs wrong, or the judge's best vs worst
  (self-rewarding, loop.dpo_pairs='judge'). Chosen at even rows, rejected at odd."""
  if config.loop.dpo_pairs == "judge":
    pairs = judge_lib.best_worst_pairs(samples)
  else:
    pairs = verifier_pairs(samples, config.select.reward_threshold, seed)
  t = config.train
  batches = []
  for idx in _epochs(len(pairs), t.batch_size, t.epochs, seed + 1):
    rows = [r for i in idx for r in (_row(pairs[i][0]), _row(pairs[i][1]))]
    batches.append(_pad_rows(rows, 2 * t.batch_size, t.max_seq_len))
  return batches


def rl_batches(samples: Sequence[Sample], config, seed: int) -> list[dict]:
  """One GRPO-family batch: every sample a row (padded to prompts x G rows, each empty
  row a group of its own), with rewards, group ids and the sampler's log-probs as
  `old_logprobs` at the completion positions."""
  if not samples:
    return []
  num_rows = config.loop.prompts_per_iteration * config.loop.samples_per_prompt
  max_len = config.train.max_seq_len
  batch = _pad_rows([_row(s) for s in samples], num_rows, max_len)
  B = batch["tokens"].shape[0]
  old = np.zeros(batch["tokens"].shape, np.float32)
  for i, s in enumerate(samples):
    plen = len(s.prompt_tokens)
    lp = s.logprobs[:max(0, max_len - plen)]
    old[i, plen:plen + len(lp)] = lp
  ids = {pid: k for k, pid in enumerate(group_by_problem(samples))}
  rewards = np.zeros((B,), np.float32)
  rewards[:len(samples)] = [s.reward for s in samples]
  group_ids = np.arange(B, dtype=np.int32) + len(ids)
  group_ids[:len(samples)] = [ids[s.problem_id] for s in samples]
  batch.update(old_logprobs=old, rewards=rewards, group_ids=group_ids)
  return [batch]


def rl_metrics(samples: Sequence[Sample], config) -> dict:
  """The share of prompts whose G samples all got one reward: their group-relative
  advantages are zero (GRPO, Dr. GRPO and RLOO alike), so they teach nothing."""
  groups = group_by_problem(samples).values()
  flat = sum(len({s.reward for s in g}) == 1 for g in groups)
  return {"zero_advantage_groups": flat / max(1, len(groups))}


ALGORITHMS = {
    "sft": Algorithm("sft", sft_batches, loss="sft", reference="never"),
    "dpo": Algorithm("dpo", dpo_batches, loss="dpo", rows_per_example=2, reference="always"),
    "grpo": Algorithm("grpo", rl_batches, on_policy=True, metrics=rl_metrics),
}
