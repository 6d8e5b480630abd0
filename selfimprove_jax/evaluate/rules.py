"""Rules: the watchers act. Each rule maps a signal of the iteration's row over a
threshold to an action (config.evaluate.rules, comma-separated):

    SIGNAL OP THRESHOLD : ACTION          e.g.  watch_identical_groups>0.5:temperature+0.2

SIGNAL is a watcher (evaluate/watchers.py) or one of `ROW_SIGNALS`, all computed from
the training records and the validation split (never from test_ or fresh_ scores: the
test split is read by nothing that decides). OP is one of > >= < <=. ACTION is one of

    rollback            this iteration's weights are not kept
    stop                the run stops after this iteration
    harder, easier      the next iteration's training difficulty moves by curriculum.step
    temperature+X       the training sampler's temperature rises by X   (cap: 1.5)
    samples+N           samples per prompt rise by N                    (cap: 4x the config's)
    tokens+N            the training sampler's token budget rises by N  (cap: 4x the config's)
    algorithm=NAME      the next iterations train with another algorithm (e.g. grpo -> sft)
    filters=A+B         the next iterations select with these filters (e.g. correct+dedup,
                        which SFT needs where GRPO ran with pass_rate_band)

and an optional `@CAP` after temperature+X, samples+N and tokens+N replaces its cap.
What the rules changed lives in the loop state (`LoopState.adjust`, config keys ->
values) and is applied to the next iterations, so a resumed run goes on with the same
settings; every action that fired is written in the row (`rule_actions`) with its
signal and value. Validation scoring never changes (its sampling is
config.evaluate's), so validation numbers stay comparable across iterations.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Iterable, Optional

from selfimprove_jax.errors import UserError
from selfimprove_jax.evaluate import watchers

# row keys besides the watchers that a rule may read: validation's and the training's
# (not the pseudo-label precisions: they read references a label-free run must not use)
ROW_SIGNALS = ("pass@1", "mean_reward", "sampled_reward", "train_pass_rate", "kept",
               "train_loss", "zero_advantage_groups", "ttrl_labeled_share",
               "self_play_valid_share", "self_play_mean_p")
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
# action -> the config key it adjusts (None: acts on this iteration or the difficulty)
ACTIONS = {"rollback": None, "stop": None, "harder": None, "easier": None,
           "temperature": "sampling.temperature", "samples": "loop.samples_per_prompt",
           "tokens": "sampling.max_new_tokens", "algorithm": "loop.algorithm",
           "filters": "select.filters"}
TEMPERATURE_CAP = 1.5
GROWTH_CAP = 4          # samples+N and tokens+N: at most this many times the config's

_RULE = re.compile(r"^(?P<signal>[\w@]+)\s*(?P<op>>=|<=|>|<)\s*(?P<threshold>[-+0-9.eE]+)\s*:"
                   r"\s*(?P<action>[a-z]+)\s*(?:(?P<sign>[+=])\s*(?P<arg>[\w.+]+)"
                   r"(?:\s*@\s*(?P<cap>[0-9.eE+]+))?)?$")


@dataclasses.dataclass(frozen=True)
class Rule:
  """One parsed rule."""
  text: str
  signal: str
  op: str
  threshold: float
  action: str
  arg: Optional[str] = None      # the amount (temperature, samples, tokens) or name(s)
  cap: Optional[float] = None

  def fires(self, row: dict) -> Optional[float]:
    """The signal's value when the rule fires on `row`, else None (a signal the row
    does not have, or not a finite number, never fires)."""
    value = row.get(self.signal)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      return None
    return float(value) if OPS[self.op](value, self.threshold) else None


def parse(text: str, algorithms: Iterable[str], filters: Iterable[str]) -> tuple[Rule, ...]:
  """The rules of config.evaluate.rules (`algorithms`, `filters`: the names an action
  may give); a one-line UserError names a bad one."""
  out = []
  for item in (t.strip() for t in text.split(",")):
    if not item:
      continue
    m = _RULE.match(item)
    bad = lambda why: UserError(f"evaluate.rules: {item!r} {why}")
    if m is None:
      raise bad("is not SIGNAL>THRESHOLD:ACTION (e.g. watch_identical_groups>0.5:"
                "temperature+0.2)")
    signal, action, sign, arg = m["signal"], m["action"], m["sign"], m["arg"]
    if signal.startswith(("test_", "fresh_")):
      raise bad("reads the test or fresh split, which no decision may read")
    if signal not in watchers.SIGNALS and signal not in ROW_SIGNALS:
      raise bad(f"names no signal; signals: {', '.join(watchers.SIGNALS + ROW_SIGNALS)}")
    try:
      threshold = float(m["threshold"])
    except ValueError:
      raise bad("has a threshold that is not a number") from None
    if action not in ACTIONS:
      raise bad(f"names no action; actions: rollback, stop, harder, easier, "
                f"temperature+X, samples+N, tokens+N, algorithm=NAME")
    takes = {"temperature": "+", "samples": "+", "tokens": "+", "algorithm": "=",
             "filters": "="}.get(action)
    if takes is None and sign is not None:
      raise bad(f"gives {action} an argument; it takes none")
    if takes is not None and sign != takes:
      raise bad(f"needs the form {action}{takes}{'NAME' if takes == '=' else 'AMOUNT'}")
    cap = float(m["cap"]) if m["cap"] else None
    if cap is not None and takes == "=":
      raise bad(f"gives {action}= a cap")
    if action == "algorithm" and arg not in algorithms:
      raise bad(f"names no algorithm; algorithms: {', '.join(sorted(algorithms))}")
    if action == "filters":
      unknown = [n for n in arg.split("+") if n not in filters]
      if unknown:
        raise bad(f"names no filter {unknown[0]!r}; filters: {', '.join(filters)}")
    if takes == "+":
      try:
        amount = float(arg) if action == "temperature" else int(arg)
      except ValueError:
        raise bad(f"needs a {'number' if action == 'temperature' else 'whole number'} "
                  f"after {action}+") from None
      if amount <= 0:
        raise bad(f"needs a positive amount after {action}+")
    out.append(Rule(item, signal, m["op"], threshold, action, arg, cap))
  return tuple(out)


def fired(rules: Iterable[Rule], row: dict) -> list[tuple[Rule, float]]:
  """The rules that fire on `row`, in their order, with the signal's value."""
  return [(r, v) for r in rules if (v := r.fires(row)) is not None]


def verdict(fired_rules) -> tuple[Optional[str], Optional[str]]:
  """(why roll back, why stop) of the fired rules (None: no such rule fired)."""
  why = lambda r, v: f"rule {r.text} ({r.signal} = {v:.3f})"
  back = next((why(r, v) for r, v in fired_rules if r.action == "rollback"), None)
  stop = next((why(r, v) for r, v in fired_rules if r.action == "stop"), None)
  return back, stop


def steer(fired_rules, adjust: dict, configured: dict, difficulty, difficulty_range,
          step: int) -> tuple[dict, object, list[dict]]:
  """(the next iterations' adjustments, the next difficulty, the actions for the row)
  of the fired rules. `adjust` is the loop state's (config key -> value), `configured`
  the config's value of each key a rule may adjust."""
  adjust, actions = dict(adjust), []
  for r, value in fired_rules:
    key = ACTIONS[r.action]
    before = adjust.get(key, configured.get(key)) if key else difficulty
    if r.action in ("harder", "easier"):
      if difficulty_range is None:
        continue
      lo, hi = difficulty_range
      after = min(hi, difficulty + step) if r.action == "harder" else max(lo, difficulty - step)
      difficulty = after
    elif r.action == "algorithm":
      after = r.arg
    elif r.action == "filters":
      after = r.arg.replace("+", ",")
    elif r.action == "temperature":
      cap = TEMPERATURE_CAP if r.cap is None else r.cap
      after = round(min(cap, before + float(r.arg)), 6)
    elif key:
      cap = GROWTH_CAP * configured[key] if r.cap is None else r.cap
      after = int(min(cap, before + int(r.arg)))
    else:        # rollback / stop: this iteration's decision (`verdict`)
      actions.append({"rule": r.text, "signal": r.signal, "value": value,
                      "action": r.action})
      continue
    if after == before:
      continue   # at its cap or its end already: nothing changed
    if key:
      adjust[key] = after
    actions.append({"rule": r.text, "signal": r.signal, "value": value,
                    "action": f"{key or 'difficulty'} {before} -> {after}"})
  return adjust, difficulty, actions
