"""The per-prompt difficulty ledger: for every training prompt the run has sampled,
its attempts, its successes and the last iteration that saw it.

It has one row per prompt ever seen, so it grows with the run (N iterations x P
prompts); it is kept as arrays, not as a dict of dicts. The loop saves them beside
each checkpoint (`arrays`, in `checkpoints/K/loop_state.npz`: runtime/checkpoint.py)
instead of in the checkpoint's JSON metadata; an update touches only the rows of the
prompts it is given (an index maps ids to rows, arrays grow by doubling), and the
curriculum reads the attempts and successes of one iteration's rows (`seen`). Rows are
in first-seen order, as the dict it replaces had them (`from_dict` reads that form,
from the metadata of checkpoints written before).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from selfimprove_jax.records import Sample, group_by_problem

COLUMNS = ("attempts", "successes", "last_seen")


class Ledger:
  """Attempts, successes and last iteration seen per problem id (see the module
  docstring). Mutable: `update` changes it in place."""

  def __init__(self, ids: Sequence[str] = (), attempts=(), successes=(), last_seen=()):
    self.ids = list(ids)
    self._row = {pid: i for i, pid in enumerate(self.ids)}
    self._encoded = np.zeros(0, "S1")   # ids[:len(_encoded)] as UTF-8, for `arrays`
    if len(self._row) != len(self.ids):
      raise ValueError("ledger: a problem id appears twice")
    self._cols = {name: np.asarray(values, np.int64).copy()
                  for name, values in zip(COLUMNS, (attempts, successes, last_seen))}
    if any(len(c) != len(self.ids) for c in self._cols.values()):
      raise ValueError("ledger: its columns and ids differ in length")

  def __len__(self) -> int:
    return len(self.ids)

  def column(self, name: str) -> np.ndarray:
    """One column (`COLUMNS`) of the rows in use, row i for `ids[i]` (a view)."""
    return self._cols[name][:len(self.ids)]

  def update(self, records: Sequence[Sample], iteration: int, threshold: float) -> None:
    """Adds one round's samples: per problem, its attempts (samples) and successes
    (reward >= threshold); its last iteration seen becomes `iteration`."""
    groups = group_by_problem(records)
    rows = [self._row_of(pid) for pid in groups]
    a, s, seen = (self._cols[c] for c in COLUMNS)
    for r, group in zip(rows, groups.values()):
      a[r] += len(group)
      s[r] += sum(x.reward >= threshold for x in group)
      seen[r] = iteration

  def _row_of(self, pid: str) -> int:
    row = self._row.get(pid)
    if row is None:
      row = self._row[pid] = len(self.ids)
      self.ids.append(pid)
      if row == len(self._cols["attempts"]):   # full: double the capacity
        self._cols = {name: np.concatenate([c, np.zeros(max(16, len(c)), np.int64)])
                      for name, c in self._cols.items()}
      self._cols["attempts"][row] = self._cols["successes"][row] = 0
      self._cols["last_seen"][row] = -1
    return row

  def seen(self, iteration: int) -> tuple[np.ndarray, np.ndarray]:
    """(attempts, successes) of the problems last seen in `iteration`: all their
    attempts so far, earlier iterations' included."""
    mask = self.column("last_seen") == iteration
    return self.column("attempts")[mask], self.column("successes")[mask]

  def entry(self, pid: str) -> dict:
    """{'attempts', 'successes', 'last_seen'} of one problem id (KeyError if unseen)."""
    row = self._row[pid]
    return {name: int(self._cols[name][row]) for name in COLUMNS}

  # ------------------------------------------------------------------ stored forms

  def arrays(self) -> dict[str, np.ndarray]:
    """The ledger as arrays (what a checkpoint stores): the ids as UTF-8 bytes and one
    int64 array per column."""
    new = self.ids[len(self._encoded):]
    if new:   # each id is encoded once, at the first save after it was seen
      self._encoded = np.concatenate(
          [self._encoded, np.array([pid.encode("utf-8") for pid in new], dtype=np.bytes_)])
    return {"ids": self._encoded.copy(),
            **{name: self.column(name).copy() for name in COLUMNS}}

  @classmethod
  def from_arrays(cls, arrays: dict) -> "Ledger":
    """The ledger `arrays` stored; ValueError when they do not hold one."""
    missing = [n for n in ("ids", *COLUMNS) if n not in arrays]
    if missing:
      raise ValueError(f"ledger: no {', '.join(missing)} array")
    encoded = np.asarray(arrays["ids"])
    ledger = cls([bytes(b).decode("utf-8") for b in encoded.tolist()],
                 *(arrays[name] for name in COLUMNS))
    ledger._encoded = encoded.astype(np.bytes_)
    return ledger

  def to_dict(self) -> dict:
    """{problem id: {'attempts', 'successes', 'last_seen'}} in first-seen order."""
    return {pid: self.entry(pid) for pid in self.ids}

  @classmethod
  def from_dict(cls, ledger: dict) -> "Ledger":
    """The form checkpoints held in their JSON metadata before (`to_dict`'s)."""
    return cls(list(ledger), *([int(e[name]) for e in ledger.values()] for name in COLUMNS))

  def __eq__(self, other) -> bool:
    return (isinstance(other, Ledger) and self.ids == other.ids
            and all(np.array_equal(self.column(n), other.column(n)) for n in COLUMNS))

  def __repr__(self) -> str:
    return f"Ledger({len(self)} problems)"
