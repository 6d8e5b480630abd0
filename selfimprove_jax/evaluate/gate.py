"""The gate: whether an iteration's weights are kept, and when a run stops.

Weights with a non-finite or exploding update are never accepted, whatever the
validation score says, and neither is an iteration that trained on nothing nor one a
watcher's rule rolls back (evaluate/rules.py); otherwise validation pass@1 may fall by
at most `max_regression`. `patience` iterations without a new best, or a rule's stop,
stop the run. Only validation and the training records decide: never the test split.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from selfimprove_jax.optimize.phase import Account


@dataclasses.dataclass(frozen=True)
class Settings:
  """The gate's knobs (config.evaluate)."""
  max_regression: float = 0.02     # accept unless held-out pass@1 drops more than this
  patience: int = 2                # stop after this many iterations without improvement


def decide(state, metrics: dict, selected: int, account: Account, settings: Settings,
           rules: tuple[Optional[str], Optional[str]] = (None, None)) -> tuple[bool, str]:
  """(accepted, reason) of an iteration whose validation scores are `metrics`, having
  selected `selected` samples and trained as `account` says, with `rules` the
  watchers' (why roll back, why stop; None: no such rule fired); updates the loop
  state's best_pass1, no_improve and stopped in place."""
  p1 = metrics["pass@1"]
  rollback, stop = rules
  if account.problem:
    accepted, reason = False, f"rolled back: {account.problem}"
  elif not account.losses or not account.loss_tokens:
    why = (f"0 optimizer steps ({selected} samples selected)" if not account.losses
           else "0 loss tokens (train.max_seq_len cuts off every completion?)")
    accepted, reason = False, f"not accepted: trained on nothing ({why})"
  elif p1 < state.best_pass1 - settings.max_regression:
    accepted, reason = False, (f"rolled back: validation pass@1 fell from "
                               f"{state.best_pass1:.3f} to {p1:.3f}")
  elif rollback:
    accepted, reason = False, f"rolled back: {rollback}"
  else:
    accepted, reason = True, "accepted"
  if accepted and p1 > state.best_pass1:
    state.best_pass1, state.no_improve = p1, 0
  else:
    state.no_improve += 1
  if stop:
    state.stopped = stop
  elif state.no_improve >= settings.patience:
    state.stopped = f"no validation improvement for {state.no_improve} iterations"
  return accepted, reason
