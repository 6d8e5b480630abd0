"""The gate: whether an iteration's weights are kept, and when a run stops.

Weights with a non-finite or exploding update are never accepted, whatever the held-out
score says, and neither is an iteration that trained on nothing; otherwise held-out
pass@1 may fall by at most `max_regression`. `patience` iterations without a new best
stop the run.
"""

from __future__ import annotations

import dataclasses

from selfimprove_jax.optimize.phase import Account


@dataclasses.dataclass(frozen=True)
class Settings:
  """The gate's knobs (config.evaluate)."""
  max_regression: float = 0.02     # accept unless held-out pass@1 drops more than this
  patience: int = 2                # stop after this many iterations without improvement


def decide(state, metrics: dict, selected: int, account: Account,
           settings: Settings) -> tuple[bool, str]:
  """(accepted, reason) of an iteration whose held-out scores are `metrics`, having
  selected `selected` samples and trained as `account` says; updates the loop state's
  best_pass1, no_improve and stopped (a plateau) in place."""
  p1 = metrics["pass@1"]
  if account.problem:
    accepted, reason = False, f"rolled back: {account.problem}"
  elif not account.losses or not account.loss_tokens:
    why = (f"0 optimizer steps ({selected} samples selected)" if not account.losses
           else "0 loss tokens (train.max_seq_len cuts off every completion?)")
    accepted, reason = False, f"not accepted: trained on nothing ({why})"
  elif p1 < state.best_pass1 - settings.max_regression:
    accepted, reason = False, (f"rolled back: held-out pass@1 fell from {state.best_pass1:.3f} "
                               f"to {p1:.3f}")
  else:
    accepted, reason = True, "accepted"
  if accepted and p1 > state.best_pass1:
    state.best_pass1, state.no_improve = p1, 0
  else:
    state.no_improve += 1
  if state.no_improve >= settings.patience:
    state.stopped = f"no held-out improvement for {state.no_improve} iterations"
  return accepted, reason
