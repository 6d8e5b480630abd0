"""The loop run as a user runs it, in tests: the CLI in a subprocess, and reading a
finished run's workdir (its last checkpoint and its metrics)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from selfimprove_jax.runtime.checkpoint import FAULT_ENV, Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def final_state(workdir):
  """(last iteration, its saved train state as numpy arrays)."""
  ckpt = Checkpointer(str(workdir))
  last = ckpt.steps()[-1]
  arrays = jax.tree.map(np.asarray, ckpt.restore_arrays(last))
  ckpt.close()
  return last, arrays


def results(row: dict) -> dict:
  """A history row without its wall-clock `seconds` and peak memory
  (`peak_rss_*`): measurements of the machine, not results."""
  return {k: v for k, v in row.items() if k != "seconds" and not k.startswith("peak_rss")}


def metrics(workdir):
  """metrics.jsonl rows, each as `results` keeps it."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [results(json.loads(line)) for line in f]


def run_env(cache_dir, fault=None):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)   # later runs reuse compilations
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["HF_HUB_OFFLINE"] = "1"
  env.pop(FAULT_ENV, None)
  if fault:
    env[FAULT_ENV] = fault
  return env


def run_cli(workdir, cache_dir, *overrides, fault=None):
  cmd = [sys.executable, "-m", "selfimprove_jax.cli", "run", "--config", TINY,
         "--workdir", str(workdir), *overrides]
  return subprocess.run(cmd, env=run_env(cache_dir, fault), capture_output=True, text=True,
                        timeout=600)


def assert_same_state(a, b):
  la, sa = a
  lb, sb = b
  assert la == lb
  for x, y in zip(jax.tree.leaves(sa["params"]), jax.tree.leaves(sb["params"])):
    np.testing.assert_array_equal(x, y)
