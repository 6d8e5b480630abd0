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


def _garbage(path):
  with open(path, "wb") as f:
    f.write(b"\x00{not json")


# (fault, exit status of the interrupted run, damage done to the workdir before resuming)
CRASHES = [
    ("acquire", -9, None),               # iteration 1: sampled, records not yet written
    ("optimize@2", -9, "records/iter_0002/stages.json"),   # a later iteration; its stage
                                                           # index then corrupted
    ("checkpoint", -9, None),            # baseline saved by Orbax, manifest not updated
    ("checkpoint_write@2", -9, "manifest.json"),   # killed while iteration 2's checkpoint
                                                   # is written; the manifest then corrupted
    ("enospc@1", 1, None),               # disk full while saving iteration 1: one line
]


@pytest.mark.parametrize("fault, status, damage", CRASHES, ids=[c[0] for c in CRASHES])
def test_interrupted_run_resumes_to_the_same_result(fault, status, damage, reference,
                                                    cache_dir, tmp_path):
  killed = run_cli(tmp_path, cache_dir, fault=fault)
  assert killed.returncode == status, killed.stderr[-2000:]
  if status > 0:   # not killed: it said why in one line, naming the path
    err = [l for l in killed.stderr.splitlines() if "error" in l]
    assert len(err) == 1 and "No space left on device" in err[0], killed.stderr[-2000:]
    assert "checkpoints" in err[0] and "re-run" in err[0]
  if damage:
    _garbage(os.path.join(tmp_path, damage))
  resumed = run_cli(tmp_path, cache_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  if damage == "manifest.json":
    assert "rebuilt it from" in resumed.stdout
  assert metrics(tmp_path) == metrics(reference[0])
  assert_same_state(final_state(tmp_path), final_state(reference[0]))


@pytest.mark.parametrize("how", ["flip_bytes", "symlink_to_dev_zero"])
def test_bad_checkpoint_falls_back_to_previous(how, reference, cache_dir, tmp_path, capsys):
  from selfimprove_jax.weights import load
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  step_dir = os.path.join(workdir, "checkpoints", "2", "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  target = max(files, key=os.path.getsize)
  if how == "flip_bytes":
    with open(target, "r+b") as f:
      f.seek(os.path.getsize(target) // 2)
      byte = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([byte[0] ^ 0xFF]))
  else:   # hashing it would read forever
    os.remove(target)
    os.symlink("/dev/zero", target)
  # eval / generate / export: one line says which checkpoint they use instead
  assert load(str(workdir)).source.endswith("@1")
  notes = capsys.readouterr().err
  assert "falling back" in notes and f"using {workdir}@1" in notes
  out = run_cli(workdir, cache_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "falling back to an earlier one" in out.stdout + out.stderr
  assert "resuming" in out.stdout and "after iteration 1" in out.stdout
  assert metrics(workdir) == metrics(reference[0])
  assert_same_state(final_state(workdir), final_state(reference[0]))


@pytest.mark.parametrize("how", ["huge_learning_rate", "nan_in_last_update"])
def test_bad_update_is_rolled_back(how, cache_dir, tmp_path):
  """No accepted checkpoint ever holds a non-finite or exploded weight: a learning rate
  of 1e3 without clipping (finite weights, caught by the update-size check; 1e30
  overflows to inf and is caught as non-finite), and a NaN put into the weights after
  the last step's metrics were taken (caught by the final check)."""
  # (--config.remat: the loop's train step also runs with rematerialised blocks)
  args = (["--config.optim.learning_rate=1e3", "--config.optim.grad_clip_norm=0",
           "--config.remat=True"] if how == "huge_learning_rate" else [])
  out = run_cli(tmp_path, cache_dir, "--config.loop.iterations=1", *args,
                fault="nan_update@1" if how == "nan_in_last_update" else None)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = metrics(tmp_path)
  assert rows[1]["accepted"] is False and "rolled back" in rows[1]["reason"]
  assert ("exploding update" if how == "huge_learning_rate" else "non-finite") \
      in rows[1]["reason"]
  ckpt = Checkpointer(str(tmp_path))
  base = jax.tree.map(np.asarray, ckpt.restore_arrays(0))
  last = jax.tree.map(np.asarray, ckpt.restore_arrays(1))
  ckpt.close()
  for x, y in zip(jax.tree.leaves(base["params"]), jax.tree.leaves(last["params"])):
    np.testing.assert_array_equal(x, y)
    assert np.isfinite(y).all()


def test_iteration_that_trained_on_nothing_is_not_accepted(tmp_path):
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  config = load_config(TINY, ["loop.iterations=1", "train.max_seq_len=4", "log.plot=false"])
  state = loop.run(config, str(tmp_path), log=lambda *_: None)
  row = state["history"][1]
  assert row["accepted"] is False and "trained on nothing" in row["reason"], row
  assert row["loss_tokens"] == 0


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


def _start(workdir, cache_dir):
  cmd = [sys.executable, "-m", "selfimprove_jax.cli", "run", "--config", TINY,
         "--workdir", str(workdir)]
  return subprocess.Popen(cmd, env=_env(cache_dir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, seconds=300):
  import time
  deadline = time.time() + seconds
  while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, proc.communicate()[1][-2000:]


def test_ctrl_c_stops_cleanly_and_resumes(reference, cache_dir, tmp_path):
  """Preemption: SIGINT (as SIGTERM) once iteration 1's samples are on disk; the run
  exits with status 0 at the next stage boundary, and re-running finishes as if
  uninterrupted."""
  import signal
  proc = _start(tmp_path, cache_dir)
  _wait_for(os.path.join(tmp_path, "records", "iter_0001", "acquire.jsonl"), proc)
  proc.send_signal(signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert "SIGINT (Ctrl-C): stopping after the last finished stage" in stdout, stdout[-2000:]
  assert "Traceback" not in stderr
  assert len(metrics(tmp_path)) < 3            # it stopped before finishing
  resumed = run_cli(tmp_path, cache_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert metrics(tmp_path) == metrics(reference[0])
  assert_same_state(final_state(tmp_path), final_state(reference[0]))


def test_sigterm_during_start_up_is_one_line(cache_dir, tmp_path):
  import signal
  proc = _start(tmp_path, cache_dir)
  _wait_for(os.path.join(tmp_path, ".lock"), proc)   # the loop's handlers are in place
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  assert lines == ["SIGTERM: stopped during start-up; re-run the same command to "
                   "continue"], lines


def test_second_ctrl_c_exits_at_once(monkeypatch, capsys):
  """The handler itself (two real signals in a row may reach Python as one): the first
  SIGINT asks for a stop at the next stage boundary, the second exits now."""
  import signal
  from selfimprove_jax import loop
  exits = []
  monkeypatch.setattr(loop.os, "_exit", exits.append)
  signals = loop._Signals()
  signals.starting = False
  signals._handle(signal.SIGINT, None)
  assert signals.stop == "SIGINT (Ctrl-C)" and exits == []
  with pytest.raises(loop.Preempted):
    signals.check()
  signals._handle(signal.SIGINT, None)
  assert exits == [128 + signal.SIGINT]
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["SIGINT (Ctrl-C): stopped at once; re-run the same command to continue"]
