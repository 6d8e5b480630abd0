"""The closed loop end to end on the tiny preset: artifacts, resumption after SIGKILL
at several moments, checkpoint corruption, the accept/roll-back gate, bad input."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from selfimprove_jax import cli
from selfimprove_jax.checkpoint import FAULT_ENV, Checkpointer
from run_files import final_state, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _env(cache_dir, fault=None):
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
  return subprocess.run(cmd, env=_env(cache_dir, fault), capture_output=True, text=True,
                        timeout=600)


def assert_same_state(a, b):
  la, sa = a
  lb, sb = b
  assert la == lb
  for x, y in zip(jax.tree.leaves(sa["params"]), jax.tree.leaves(sb["params"])):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def cache_dir():
  """The session's persistent compilation cache (conftest), shared with subprocesses."""
  return os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
  """An uninterrupted two-iteration run of configs/tiny.py."""
  workdir = tmp_path_factory.mktemp("reference")
  out = run_cli(workdir, cache_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out


def test_end_to_end_artifacts(reference):
  workdir, out = reference
  for name in ("manifest.json", "metrics.jsonl", "summary.json", "heldout.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  for k in (1, 2):
    d = os.path.join(workdir, "records", f"iter_{k:04d}")
    assert {"acquire.jsonl", "select.jsonl", "stages.json"} <= set(os.listdir(d))
  rows = metrics(workdir)
  assert [r["iteration"] for r in rows] == [0, 1, 2]
  assert "pass@1" in rows[0] and "maj@2" in rows[0]
  manifest = json.load(open(os.path.join(workdir, "manifest.json")))
  assert set(manifest["checkpoints"]) == {"0", "1", "2"}
  assert manifest["checkpoints"]["1"]["records"]["acquire"]
  assert "iter  pass@1" in out.stdout   # the summary table


def test_rerun_of_finished_run_does_no_new_work(reference, cache_dir):
  workdir, _ = reference
  before = final_state(workdir)
  mtime = os.path.getmtime(os.path.join(workdir, "manifest.json"))
  out = run_cli(workdir, cache_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resuming" in out.stdout and "acquire" not in out.stdout
  assert os.path.getmtime(os.path.join(workdir, "manifest.json")) == mtime
  assert_same_state(before, final_state(workdir))


@pytest.mark.parametrize("fault", ["acquire", "optimize", "checkpoint"])
def test_sigkill_then_resume_equals_uninterrupted(fault, reference, cache_dir, tmp_path):
  killed = run_cli(tmp_path, cache_dir, fault=fault)
  assert killed.returncode == -9, killed.stderr[-2000:]
  resumed = run_cli(tmp_path, cache_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert metrics(tmp_path) == metrics(reference[0])
  assert_same_state(final_state(tmp_path), final_state(reference[0]))


def test_flipped_bytes_fall_back_to_previous_checkpoint(reference, cache_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  step_dir = os.path.join(workdir, "checkpoints", "2", "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    f.seek(os.path.getsize(target) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
  out = run_cli(workdir, cache_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "content hash mismatch" in out.stdout + out.stderr
  assert "resuming" in out.stdout and "after iteration 1" in out.stdout
  assert metrics(workdir) == metrics(reference[0])
  assert_same_state(final_state(workdir), final_state(reference[0]))


def test_destructive_optimizer_is_rolled_back(cache_dir, tmp_path):
  # (--config.remat: the loop's train step also runs with rematerialised blocks)
  out = run_cli(tmp_path, cache_dir, "--config.optim.learning_rate=1e30",
                "--config.optim.grad_clip_norm=0", "--config.loop.iterations=1",
                "--config.remat=True")
  assert out.returncode == 0, out.stderr[-3000:]
  rows = metrics(tmp_path)
  assert rows[1]["accepted"] is False and "rolled back" in rows[1]["reason"]
  ckpt = Checkpointer(str(tmp_path))
  base = jax.tree.map(np.asarray, ckpt.restore_arrays(0))
  last = jax.tree.map(np.asarray, ckpt.restore_arrays(1))
  ckpt.close()
  for x, y in zip(jax.tree.leaves(base["params"]), jax.tree.leaves(last["params"])):
    np.testing.assert_array_equal(x, y)


def test_incompatible_workdir_is_refused_and_untouched(reference, cache_dir):
  workdir, _ = reference
  manifest = open(os.path.join(workdir, "manifest.json")).read()
  out = run_cli(workdir, cache_dir, "--config.seed=7")
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if "error" in l]
  assert len(lines) == 1 and "different config" in lines[0] and "seed" in lines[0]
  assert open(os.path.join(workdir, "manifest.json")).read() == manifest


@pytest.mark.parametrize("override, message", [
    ("--config.task.name=no_such_task", "unknown task"),
    ("--config.select.filters=correct,shiny", "unknown select filter 'shiny'"),
    ("--config.task.name=jsonl:/nonexistent/problems.jsonl", "/nonexistent/problems.jsonl"),
    ("--config.loop.no_such_key=1", "unknown config key"),
])
def test_bad_input_is_one_line(override, message, tmp_path, capsys):
  code = cli.main(["run", "--config", TINY, "--workdir", str(tmp_path / "w"), override])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1 and message in err[0], err


def test_every_config_file_loads():
  from selfimprove_jax.config import load_config
  names = [f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")]
  assert "quickstart.py" in names and "tiny.py" in names
  for name in names:
    config = load_config(os.path.join(ROOT, "configs", name))
    assert config.loop.iterations >= 1
    doc = open(os.path.join(ROOT, "configs", name)).read()
    assert "Command:" in doc and "Runtime:" in doc and "Hardware:" in doc, name


@pytest.mark.parametrize("name", ["grpo_countdown.py", "star_reasoning_gym.py"])
def test_config_runs_one_tiny_iteration(name, tmp_path):
  """Each experiment config completes one iteration with its model swapped for tiny."""
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  config = load_config(os.path.join(ROOT, "configs", name), [
      "model=tiny", "loop.iterations=1", "loop.prompts_per_iteration=4",
      "loop.samples_per_prompt=2", "loop.rl_steps=1", "task.heldout_size=4",
      "sampling.max_new_tokens=8", "evaluate.max_new_tokens=8", "evaluate.maj_k=2",
      "train.max_seq_len=128", "train.batch_size=8", "select.filters=dedup",
      "log.progress=false", "log.plot=false"])
  state = loop.run(config, str(tmp_path), log=lambda *_: None)
  assert state["iteration"] == 1
  assert len(state["history"]) == 2


def test_workdir_loads_as_a_model(reference):
  from selfimprove_jax.weights import load
  workdir, _ = reference
  last, state = final_state(workdir)
  model = load(str(workdir))
  assert model.source.endswith(f"@{last}")
  for x, y in zip(jax.tree.leaves(model.params), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(np.asarray(x), y)
  assert load(f"{workdir}@0").source.endswith("@0")
  with pytest.raises(ValueError, match="no checkpoint for iteration 9"):
    load(f"{workdir}@9")


def test_sigterm_stops_cleanly_and_resumes(reference, cache_dir, tmp_path):
  """Preemption: SIGTERM once iteration 1's samples are on disk; the run exits with
  status 0 at the next stage boundary, and re-running finishes as if uninterrupted."""
  import signal
  import time
  cmd = [sys.executable, "-m", "selfimprove_jax.cli", "run", "--config", TINY,
         "--workdir", str(tmp_path)]
  proc = subprocess.Popen(cmd, env=_env(cache_dir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  marker = os.path.join(tmp_path, "records", "iter_0001", "acquire.jsonl")
  deadline = time.time() + 300
  while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert "SIGTERM" in stdout, stdout[-2000:]
  assert len(metrics(tmp_path)) < 3            # it stopped before finishing
  resumed = run_cli(tmp_path, cache_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert metrics(tmp_path) == metrics(reference[0])
  assert_same_state(final_state(tmp_path), final_state(reference[0]))
