"""The evaluation splits: validation (what every decision reads), test (scored every
iteration, read by nothing that decides) and fresh (new problems each iteration).

All three lie on the task's held-out side, so no training stream ever draws them
(tasks/problem.py), and they are disjoint from each other:

  validation  the first `validation_size` problems of the task's held-out split, the
              set the loop scored before the test split existed; the gate, patience,
              the curriculum and the watchers read it (the row's unprefixed pass@1...);
  test        the next `test_size` problems of the same held-out order, so a test
              split of another size leaves validation, and every decision, unchanged
              (the row's test_pass@1...); the result a run reports is the test score
              of its last accepted weights;
  fresh       `fresh_size` problems drawn anew each iteration from a seed no training
              stream uses, minus the fixed splits' problems (tasks that generate
              problems: `Task.fresh`); whether the fixed splits are being overfit.

A file task given a separate test file (the task option `test_path`) takes its test
split from that file, as given: its first `test_size` problems; validation is then the
first `validation_size` of the task's held-out side, nothing carved.

A file task whose held-out side is smaller than validation_size + test_size is carved
in proportion: validation keeps its share, the test split the rest (at least one each
when there are two problems). A generator with too few held-out problems for both
keeps validation as asked and has no test split; both cases are logged.

None of this reads the run's seed: every task draws its held-out side from a fixed seed
(tasks/problem.py), so validation and test are a function of the task, its options, the
starting difficulty and the two sizes (`SPLIT_KEYS`). A run started from another run's
weights (a chain's phase) whose keys match its parent's therefore scores the very same
problems, and its baseline row repeats the parent's numbers for those weights (same
evaluation settings); `differences` names the keys that break this. Only the fresh
split depends on the seed, by design.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

from selfimprove_jax.errors import UserError
from selfimprove_jax.tasks.problem import Problem

# The row's prefix of each split's metrics (validation's metrics carry none).
PREFIX = {"validation": "", "test": "test_", "fresh": "fresh_"}


# The config keys the fixed splits are carved from (`carve`'s arguments and the task).
SPLIT_KEYS = ("task.name", "task.options", "task.difficulty", "task.heldout_size",
              "task.test_size")


def differences(config: dict, other: dict) -> list[str]:
  """The `SPLIT_KEYS` whose values differ between two config dicts (a run's and its
  parent's saved one): [] when both carve the same validation and test splits."""
  def value(c, key):
    section, name = key.split(".")
    return json.dumps(c.get(section, {}).get(name), sort_keys=True, default=str)
  return [k for k in SPLIT_KEYS if value(config, k) != value(other, k)]


@dataclasses.dataclass(frozen=True)
class Splits:
  """The fixed evaluation splits of a run, and how many fresh problems each evaluation
  draws (0: none, or the task cannot generate them)."""
  validation: tuple
  test: tuple
  fresh_size: int = 0
  note: str = ""       # how the splits were carved, when not as asked (a log line)

  @property
  def fixed_ids(self) -> frozenset:
    return frozenset(p.id for p in self.validation + self.test)


def carve(task, validation_size: int, test_size: int, fresh_size: int,
          difficulty: Optional[int]) -> Splits:
  """The splits of `task` at `difficulty`: validation and test from its held-out split
  in order, fresh only where the task can generate new problems."""
  note = ""
  given = task.test_file_problems() if hasattr(task, "test_file_problems") else None
  if given is not None:   # a separate test file replaces the carving
    if fresh_size and not hasattr(task, "fresh"):
      note, fresh_size = f"task {task.name} cannot draw new problems: no fresh split", 0
    return Splits(tuple(task.heldout(validation_size, difficulty)),
                  tuple(given[:test_size]), fresh_size, note)
  try:
    pool = list(task.heldout(validation_size + test_size, difficulty))
  except UserError as e:
    if not test_size:
      raise
    # a generator with too few held-out problems for both: validation alone, as asked
    pool = list(task.heldout(validation_size, difficulty))
    note = f"no test split ({e})"
  n = validation_size
  if not note and len(pool) < validation_size + test_size:
    if test_size and len(pool) >= 2:   # carve in proportion: both splits keep problems
      n = min(max(1, round(len(pool) * validation_size / (validation_size + test_size))),
              len(pool) - 1)
    note = (f"the task's held-out side holds {len(pool)} problems, fewer than "
            f"task.heldout_size + task.test_size = {validation_size + test_size}: "
            f"validation {min(n, len(pool))}, test {len(pool) - min(n, len(pool))}")
  if fresh_size and not hasattr(task, "fresh"):
    note = (note + "; " if note else "") + (f"task {task.name} cannot draw new problems: "
                                            f"no fresh split")
    fresh_size = 0
  return Splits(tuple(pool[:n]), tuple(pool[n:]), fresh_size, note)


def fresh(task, splits: Splits, seed: int, difficulty: Optional[int]) -> list[Problem]:
  """This evaluation's fresh problems (`seed`: the run's seed and the iteration): new
  held-out-side problems, none of the fixed splits'."""
  if not splits.fresh_size:
    return []
  return task.fresh(splits.fresh_size, seed, splits.fixed_ids, difficulty)


def names(splits: Splits) -> list[str]:
  """The splits an evaluation scores, validation first."""
  return ["validation"] + (["test"] if splits.test else []) + (
      ["fresh"] if splits.fresh_size else [])


def prefixed(split: str, metrics: dict) -> dict:
  """A split's metrics under its row prefix."""
  return {PREFIX[split] + k: v for k, v in metrics.items()}


def result(history: Sequence[dict]) -> dict:
  """What a run reports as its result: the test score of its last accepted weights
  (the validation score where a run has no test split), with the iteration."""
  last = next((r for r in reversed(history) if r.get("accepted")), None)
  if last is None:
    return {}
  split = "test" if "test_pass@1" in last else "validation"
  return {"split": split, "iteration": last["iteration"],
          "pass@1": last[PREFIX[split] + "pass@1"],
          "validation_pass@1": last["pass@1"]}
