"""A run's stage records on disk (`RunRecords`, the one owner of the `records/`
layout), and finished stages reused when an interrupted iteration runs again.

records/iter_K/NAME.parquet holds a stage's Samples, none included (NAME_R for round
R of an iteration with several; records.py says why Parquet), NAME.jsonl a stage's
plain rows (held-out results, optimizer steps, proposals); a run written before
Parquet has its Samples in NAME.jsonl, which is read the same way.
records/iter_K/stages.json maps each finished stage to the hash of its file (its name
included, so the hash also says which of the two it is). A stage whose file is there
with its recorded hash is read back instead of run (sampling is the slow part of an
iteration, and its result is a function of the seed anyway); a missing, corrupt or
changed file means the stage runs again, with one line in the log. Process 0 decides
and broadcasts, so all processes run a stage or none do; only process 0 writes.
`RunRecords.export_jsonl` writes a run's records as JSON Lines for users who want
text (`selfimprove-jax records export`).
"""

from __future__ import annotations

import glob
import os
from typing import Callable

from selfimprove_jax.errors import UserError
from selfimprove_jax.runtime import distributed
from selfimprove_jax.runtime.checkpoint import fault_point
from selfimprove_jax.runtime.files import (UnreadableFile, open_regular, read_json,
                                           write_json_atomic)
from selfimprove_jax.records import (Sample, bytes_digest, jsonl_digest, parse_jsonl,
                                     parse_records, read_jsonl, read_records,
                                     records_digest, write_jsonl, write_records)

INDEX = "stages.json"
SAMPLES, ROWS = ".parquet", ".jsonl"   # a stage file's two forms


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
    return write(self.iteration_dir(k), name, rows)

  def read(self, k: int, stage: str) -> list[Sample]:
    """Iteration k's records of `stage` as on disk (every round's file, `stage_R`)."""
    folder = self.iteration_dir(k)
    paths = [p for ext in (SAMPLES, ROWS)
             for p in glob.glob(os.path.join(folder, f"{stage}*{ext}"))]
    return [x for path in sorted(paths) for x in read_records(path)]

  def rows(self, k: int, name: str) -> list[dict]:
    """Iteration k's plain rows of stage `name` (a file of dicts, not Samples); [] when
    there is none (a stage that kept no rows wrote an empty NAME.parquet)."""
    path = os.path.join(self.iteration_dir(k), f"{name}{ROWS}")
    return read_jsonl(path) if os.path.exists(path) else []

  def earlier(self, k: int, stage: str) -> list[Sample]:
    """What iterations 1..k-1 recorded for `stage` (on disk, so a resumed run sees the
    same)."""
    return [x for j in range(1, k) for x in self.read(j, stage)]

  def export_jsonl(self, out: str) -> list[str]:
    """Writes every stage file as out/iter_K/NAME.jsonl (Samples in `Sample.to_json`'s
    form, plain rows as they are) and returns the paths written."""
    written = []
    for path in sorted(glob.glob(os.path.join(self.root, "iter_*", "*"))):
      stem, ext = os.path.splitext(os.path.basename(path))
      if ext not in (SAMPLES, ROWS):
        continue
      target = os.path.join(out, os.path.basename(os.path.dirname(path)), stem + ROWS)
      try:
        if ext == SAMPLES:
          write_records(target, read_records(path))
        else:
          write_jsonl(target, read_jsonl(path))
      except (UnreadableFile, ValueError) as e:
        raise UserError(f"{e}; nothing after it was exported") from None
      written.append(target)
    return written


def cached(rec_dir: str, name: str, run_stage: Callable[[], list], iteration: int, log,
           samples: bool = True) -> tuple[list, str, bool]:
  """(rows, hash, read from disk) of stage `name`: its records when they verify, else
  `run_stage()`'s, written. Rows are `Sample`s, or plain dicts with `samples=False`."""
  found = None
  if distributed.is_primary():
    found = _read_verified(rec_dir, name, log, samples)
  found = _share(found, samples)
  if found is not None:
    return found[0], found[1], True
  rows = run_stage()
  fault_point(name, iteration)   # crash tests: killed after sampling, before the records land
  digest = write(rec_dir, name, rows)
  if distributed.is_primary():
    index = _read_index(os.path.join(rec_dir, INDEX), lambda _: None)
    index[name] = digest
    write_json_atomic(os.path.join(rec_dir, INDEX), index)
  return rows, digest, False


def write(rec_dir: str, name: str, rows: list) -> str:
  """Writes stage `name`: plain rows as NAME.jsonl, Samples (or no rows) as NAME.parquet.
  Process 0 writes, first removing the stage's file of the other form (an older run's,
  or an earlier try's); every process holds the same rows, and all return the hash."""
  form = ROWS if rows and not isinstance(rows[0], Sample) else SAMPLES
  path = os.path.join(rec_dir, name + form)
  if not distributed.is_primary():
    return records_digest(path, rows) if form == SAMPLES else jsonl_digest(path, rows)
  other = os.path.join(rec_dir, name + (ROWS if form == SAMPLES else SAMPLES))
  if os.path.lexists(other):
    os.remove(other)
  return write_records(path, rows) if form == SAMPLES else write_jsonl(path, rows)


def _read_verified(rec_dir: str, name: str, log, samples: bool):
  """[rows, hash] of a finished stage's file that verifies, else None (with a line in
  the log when the index lists the stage but its file is gone, changed or unreadable)."""
  index = _read_index(os.path.join(rec_dir, INDEX), log)
  if name not in index:
    return None
  paths = [p for p in (os.path.join(rec_dir, name + ext) for ext in (SAMPLES, ROWS))
           if os.path.lexists(p)]
  for path in paths:
    try:
      with open_regular(path, root=rec_dir) as f:
        data = f.read()
      if bytes_digest(path, data) != index[name]:
        continue
      # a record this version cannot read (a field it does not know) raises: run again
      rows = (parse_records(data, path) if samples or path.endswith(SAMPLES)
              else parse_jsonl(data, path))
      return [rows, index[name]]
    except (UnreadableFile, ValueError, TypeError) as e:
      log(f"{path}: {e}; running the stage again")
      return None
  what = (f"{paths[0]} is not the file {INDEX} recorded (changed or cut short)" if paths
          else f"{os.path.join(rec_dir, name)}{SAMPLES} (or {ROWS}) is missing")
  log(f"{what}; running the stage again")
  return None


def _share(found, samples: bool):
  """Process 0's [rows, hash] (or None) on every process. Samples cross as JSON rows
  when there are several processes; one process keeps them as read."""
  import jax   # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return found
  if found is not None and samples:
    found = [[s.to_json() for s in found[0]], found[1]]
  found = distributed.broadcast_json(found)
  if found is not None and samples:
    found = [[Sample.from_json(r) for r in found[0]], found[1]]
  return found


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
