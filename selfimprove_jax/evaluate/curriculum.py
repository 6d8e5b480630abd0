"""Curriculum from the ledger: move a task's difficulty so that the training pass rate
stays in a target band (default 0.3-0.7).

Learning signal is richest near the frontier: problems the model always solves or never
solves teach it nothing (the reasoning behind the pass-rate-band filter, and behind
online difficulty filtering in DAPO / Kimi k1.5). After each iteration's evaluation,
the pass rate of the prompts the ledger saw this iteration decides the next training
difficulty: above the band -> one level harder, below -> one level easier, within ->
stay. Only the training stream moves; the held-out split keeps its fixed difficulty, so
held-out scores stay comparable across iterations. Every move is returned as a record
for the loop's history.
"""

from __future__ import annotations

from typing import Optional


def ledger_pass_rate(ledger, iteration: int) -> Optional[float]:
  """Successes / attempts over the ledger's prompts last seen in `iteration` (None
  when it saw none). `ledger` is select.ledger's `Ledger`, read through its `seen`:
  only that iteration's rows (no import of the select stage)."""
  attempts, successes = ledger.seen(iteration)
  total = int(attempts.sum())
  return int(successes.sum()) / total if total else None


def step(difficulty: int, pass_rate: Optional[float], difficulty_range, *,
         min_pass_rate: float = 0.3, max_pass_rate: float = 0.7,
         step_size: int = 1) -> tuple[int, Optional[dict]]:
  """(next difficulty, the move or None). A move is
  {'from', 'to', 'pass_rate', 'reason'}; none when the pass rate is in the band, unknown,
  or the difficulty is already at the end of the range it would move towards."""
  if pass_rate is None or difficulty_range is None:
    return difficulty, None
  lo, hi = difficulty_range
  if pass_rate > max_pass_rate:
    new, why = min(hi, difficulty + step_size), f"pass rate {pass_rate:.2f} > {max_pass_rate}"
  elif pass_rate < min_pass_rate:
    new, why = max(lo, difficulty - step_size), f"pass rate {pass_rate:.2f} < {min_pass_rate}"
  else:
    return difficulty, None
  if new == difficulty:
    return difficulty, None
  return new, {"from": difficulty, "to": new, "pass_rate": round(pass_rate, 4), "reason": why}
