"""A run's stage records on disk (`RunRecords`, the one owner of the `records/`
layout), and finished stages reused when an interrupted iteration runs again.

records/iter_K/NAME.jsonl holds a stage's output (NAME_R for round R of an iteration
with several); records/iter_K/stages.json maps each finished stage to the hash of its
file. A stage whose file is there with its recorded
hash is read back instead of run (sampling is the slow part of an iteration, and its
result is a function of the seed anyway); a missing, corrupt or changed file means the
stage runs again. Process 0 decides and broadcasts, so all processes run a stage or
none do; only process 0 writes.
"""

from __future__ import annotations

import glob
import os
from typing import Callable

from selfimprove_jax.runtime import distributed
from selfimprove_jax.runtime.checkpoint import fault_point
from selfimprove_jax.runtime.files import UnreadableFile, hash_path, read_json, write_json_atomic
from selfimprove_jax.records import (Sample, jsonl_digest, read_jsonl, read_records,
                                     write_jsonl)

INDEX = "stages.json"


class RunRecords:
  """records/ of one run: every path, write and read of a stage's records goes here."""

  def __init__(self, workdir: str):
    self.root = os.path.join(workdir, "records")

  def iteration_dir(self, k: int) -> str:
    """records/iter_K: iteration K's stage files."""
    return os.path.join(self.root, f"iter_{k:04d}")

  def cached(self, k: int, name: str, run_stage: Callable[[], list], log,
             samples: bool = True) -> tuple[list, str, bool]:
    """`cached` for stage `name` of iteration k."""
    return cached(self.iteration_dir(k), name, run_stage, k, log, samples)

  def write(self, k: int, name: str, rows: list) -> str:
    """Writes stage `name` of iteration k (process 0); returns the file's hash."""
    return write(os.path.join(self.iteration_dir(k), f"{name}.jsonl"), rows)

  def read(self, k: int, stage: str) -> list[Sample]:
    """Iteration k's records of `stage` as on disk (every round's file, `stage_R`)."""
    folder = self.iteration_dir(k)
    return [x for path in sorted(glob.glob(os.path.join(folder, f"{stage}*.jsonl")))
            for x in read_records(path)]

  def rows(self, k: int, name: str) -> list[dict]:
    """Iteration k's plain rows of stage `name` (a file of dicts, not Samples); [] when
    there is none."""
    path = os.path.join(self.iteration_dir(k), f"{name}.jsonl")
    return read_jsonl(path) if os.path.exists(path) else []

  def earlier(self, k: int, stage: str) -> list[Sample]:
    """What iterations 1..k-1 recorded for `stage` (on disk, so a resumed run sees the
    same)."""
    return [x for j in range(1, k) for x in self.read(j, stage)]


def cached(rec_dir: str, name: str, run_stage: Callable[[], list], iteration: int, log,
           samples: bool = True) -> tuple[list, str, bool]:
  """(rows, hash, read from disk) of stage `name`: its records when they verify, else
  `run_stage()`'s, written. Rows are `Sample`s, or plain dicts with `samples=False`."""
  path = os.path.join(rec_dir, f"{name}.jsonl")
  found = None
  if distributed.is_primary():
    found = _read_verified(rec_dir, name, path, log, samples)
  found = distributed.broadcast_json(found)
  if found is not None:
    rows = [Sample.from_json(r) for r in found[0]] if samples else found[0]
    return rows, found[1], True
  rows = run_stage()
  fault_point(name, iteration)   # crash tests: killed after sampling, before the records land
  digest = write(path, rows)
  if distributed.is_primary():
    index = _read_index(os.path.join(rec_dir, INDEX), lambda _: None)
    index[name] = digest
    write_json_atomic(os.path.join(rec_dir, INDEX), index)
  return rows, digest, False


def write(path: str, rows: list) -> str:
  """Process 0 writes (every process holds the same rows); all return the hash."""
  rows = [r.to_json() if isinstance(r, Sample) else r for r in rows]
  if distributed.is_primary():
    return write_jsonl(path, rows)
  return jsonl_digest(path, rows)


def _read_verified(rec_dir: str, name: str, path: str, log, samples: bool):
  """[rows, hash] of a finished stage's file that verifies, else None."""
  index = _read_index(os.path.join(rec_dir, INDEX), log)
  if name not in index or not os.path.exists(path):
    return None
  try:
    if hash_path(path, root=rec_dir) != index[name]:
      return None
    rows = read_jsonl(path)
    if samples:
      for r in rows:
        Sample.from_json(r)   # a record this version cannot read: run the stage again
    return [rows, index[name]]
  except (UnreadableFile, ValueError, TypeError) as e:
    log(f"{path}: {e}; running the stage again")
  return None


def _read_index(path: str, log) -> dict:
  """A corrupt index means no stage is cached: they run again and it is rewritten."""
  try:
    index = read_json(path, {})
  except UnreadableFile as e:
    log(f"{e}; its stages will run again")
    return {}
  if not isinstance(index, dict) or not all(isinstance(v, str) for v in index.values()):
    log(f"{path} is not a stage index; its stages will run again")
    return {}
  return index
