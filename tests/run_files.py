"""Reading a finished run's workdir in tests: its last checkpoint and its metrics."""

import json
import os

import jax
import numpy as np

from selfimprove_jax.checkpoint import Checkpointer


def final_state(workdir):
  """(last iteration, its saved train state as numpy arrays)."""
  ckpt = Checkpointer(str(workdir))
  last = ckpt.steps()[-1]
  arrays = jax.tree.map(np.asarray, ckpt.restore_arrays(last))
  ckpt.close()
  return last, arrays


def metrics(workdir):
  """metrics.jsonl rows without their wall-clock `seconds` (not reproducible)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for r in rows:
    r.pop("seconds", None)
  return rows
