"""The closed loop end to end on the tiny preset: artifacts, the accept/roll-back gate,
configs, a workdir as a model. Interruptions and damage: test_resume.py; bad input:
test_bad_input.py."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from selfimprove_jax.runtime.checkpoint import Checkpointer
from run_files import (ROOT, TINY, assert_same_state, final_state, metrics, run_cli,
                       run_env)


def test_end_to_end_artifacts(reference):
  workdir, out = reference
  for name in ("manifest.json", "metrics.jsonl", "summary.json", "heldout.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  for k in (1, 2):
    d = os.path.join(workdir, "records", f"iter_{k:04d}")
    assert {"acquire.parquet", "select.parquet", "stages.json"} <= set(os.listdir(d))
  rows = metrics(workdir)
  assert [r["iteration"] for r in rows] == [0, 1, 2]
  assert "pass@1" in rows[0] and "maj@2" in rows[0]
  manifest = json.load(open(os.path.join(workdir, "manifest.json")))
  assert set(manifest["checkpoints"]) == {"0", "1", "2"}
  assert manifest["checkpoints"]["1"]["records"]["acquire"]
  assert "iter  pass@1" in out.stdout   # the summary table
  # every optimizer step's metrics, numbered across the run, as the rows count them
  with open(os.path.join(workdir, "steps.jsonl")) as f:
    steps = [json.loads(line) for line in f]
  assert [x["global_step"] for x in steps] == list(range(1, len(steps) + 1))
  assert [sum(x["iteration"] == k for x in steps) for k in (1, 2)] == [
      r["optimizer_steps"] for r in rows[1:]]
  assert {"loss", "grad_norm", "update_norm", "param_norm", "learning_rate",
          "tokens"} <= set(steps[0])
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["task"]["heldout_size"] == 8


def test_rerun_of_finished_run_does_no_new_work(reference, cache_dir):
  workdir, _ = reference
  before = final_state(workdir)
  mtime = os.path.getmtime(os.path.join(workdir, "manifest.json"))
  out = run_cli(workdir, cache_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resuming" in out.stdout and "acquire" not in out.stdout
  assert os.path.getmtime(os.path.join(workdir, "manifest.json")) == mtime
  assert_same_state(before, final_state(workdir))


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
  """A config that can be seen to train on nothing is refused at start-up (no prompt
  fits train.max_seq_len), before anything is written; an iteration whose filters keep
  nothing (the random tiny model is never right) trains on nothing and is not accepted."""
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  from selfimprove_jax.errors import UserError
  config = load_config(TINY, ["loop.iterations=1", "train.max_seq_len=4", "log.plot=false"])
  with pytest.raises(UserError, match=r"^train.max_seq_len=4 leaves no room to train: the "
                     r"shortest of the first 16 training prompts is \d+ tokens"):
    loop.run(config, str(tmp_path / "refused"), log=lambda *_: None)
  assert not os.path.exists(tmp_path / "refused" / "checkpoints")
  config = load_config(TINY, ["loop.iterations=1", "select.filters=correct",
                              "log.plot=false"])
  state = loop.run(config, str(tmp_path / "run"), log=lambda *_: None)
  row = state["history"][1]
  assert row["accepted"] is False and "trained on nothing" in row["reason"], row
  assert row["kept"] == 0


def test_incompatible_workdir_is_refused_and_untouched(reference, cache_dir):
  workdir, _ = reference
  manifest = open(os.path.join(workdir, "manifest.json")).read()
  out = run_cli(workdir, cache_dir, "--config.seed=7")
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if "error" in l]
  assert len(lines) == 1 and "different config" in lines[0] and "seed" in lines[0]
  assert open(os.path.join(workdir, "manifest.json")).read() == manifest


def test_every_config_file_loads():
  from selfimprove_jax.config import load_config
  names = [f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")]
  assert "quickstart.py" in names and "tiny.py" in names
  for name in names:
    config = load_config(os.path.join(ROOT, "configs", name))
    doc = open(os.path.join(ROOT, "configs", name)).read()
    # 0 iterations: an evaluation-only config (its baseline row), which must say so
    assert config.loop.iterations >= 1 or "baseline evaluation only" in doc, name
    assert "Command:" in doc and "Runtime:" in doc and "Hardware:" in doc, name


@pytest.mark.parametrize("name", ["grpo_countdown.py", "star_reasoning_gym.py",
                                  "grpo_arithmetic.py", "dpo_arithmetic.py",
                                  "label_free_sft.py", "ttrl.py"])
def test_config_runs_one_tiny_iteration(name, tmp_path):
  """Each experiment config completes one iteration with its model swapped for tiny."""
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  config = load_config(os.path.join(ROOT, "configs", name), [
      "model=tiny", "loop.iterations=1", "loop.prompts_per_iteration=4",
      "loop.samples_per_prompt=2", "loop.rl_steps=1", "task.heldout_size=4",
      "sampling.max_new_tokens=8", "evaluate.max_new_tokens=8", "evaluate.maj_k=2",
      "train.max_seq_len=128", "train.batch_size=8", "select.filters=dedup",
      "optim.micro_batch_size=0",   # the CPU configs accumulate micro-batches of 4 rows,
                                    # which do not split over the 8 test devices
      "log.progress=false", "log.plot=false"])
  state = loop.run(config, str(tmp_path), log=lambda *_: None)
  assert state["iteration"] == 1
  assert len(state["history"]) == 2
  row = state["history"][1]
  # the loss's own step metrics reach the row (averaged over the iteration's steps)
  if config.loop.algorithm == "grpo":
    assert 0.0 <= row["zero_advantage_groups"] <= 1.0
    assert {"train_reward", "train_entropy", "train_kl"} <= set(row)
  if config.loop.algorithm == "dpo" and row["optimizer_steps"]:
    assert 0.0 <= row["train_accuracy"] <= 1.0


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


def test_eval_of_a_run_prints_the_runs_own_numbers(reference, cache_dir):
  """`eval --model WORKDIR` scores with the run's saved config and the seed of the
  checkpoint's iteration: every held-out metric equals the run's row for it."""
  workdir, _ = reference
  rows = {r["iteration"]: r for r in metrics(workdir)}
  last = max(i for i, r in rows.items() if r["accepted"])
  cmd = [sys.executable, "-m", "selfimprove_jax.cli", "eval", "--model", str(workdir),
         "--json"]
  out = subprocess.run(cmd, env=run_env(cache_dir), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout)
  assert got["model"].endswith(f"@{last}") and (got["validation"], got["test"]) == (8, 4)
  for key in ("pass@1", "mean_reward", "maj@2", "pass@2", "sampled_reward", "test_pass@1",
              "test_mean_reward"):
    assert got[key] == rows[last][key], key
  # a flag overrides one setting; --task_option sets a task option
  cmd += ["--k", "1", "--task_option", "operators=+", "--n", "3"]
  out = subprocess.run(cmd, env=run_env(cache_dir), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout)
  assert got["validation"] == 3 and "maj@2" not in got


def test_optimizer_state_continues_across_iterations_when_asked(cache_dir, tmp_path):
  """optim.continue_state: the checkpoint holds the optimizer state and its step counts
  every iteration's updates; by default a checkpoint holds the weights only."""
  fresh, cont = tmp_path / "fresh", tmp_path / "continue"
  for workdir, extra in ((fresh, []), (cont, ["--config.optim.continue_state=true"])):
    out = run_cli(workdir, cache_dir, *extra)
    assert out.returncode == 0, out.stderr[-3000:]
  rows = metrics(cont)
  steps = sum(r["optimizer_steps"] for r in rows[1:] if r["accepted"])
  _, state = final_state(cont)
  assert set(state) == {"params", "opt_state", "step", "rng"}
  assert int(state["step"]) == steps and steps >= 2
  _, state = final_state(fresh)
  assert set(state) == {"params"}


def test_decisions_and_validation_ignore_the_test_split(tmp_path):
  """The same run with a test split of another size (and none) makes the same
  decisions with the same validation numbers: nothing that decides reads the test
  split. Its weights end the same too."""
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  runs = {}
  for n in (0, 2, 4):
    config = load_config(TINY, [f"task.test_size={n}", "log.tensorboard=false",
                                "log.plot=false"])
    runs[n] = loop.run(config, str(tmp_path / str(n)), log=lambda *_: None)["history"]
  def decided(history):
    return [{k: v for k, v in r.items() if not k.startswith("test_")
             and k != "seconds" and not k.startswith("peak_rss")} for r in history]
  assert decided(runs[2]) == decided(runs[4]) == decided(runs[0])
  assert "test_pass@1" in runs[4][1] and "test_pass@1" not in runs[0][1]
  assert_same_state(final_state(tmp_path / "2"), final_state(tmp_path / "4"))


def test_files_users_own_are_never_touched(tmp_path):
  """A directory of the user's is refused as a workdir (and left as it was) unless
  adopted, and adopted only when none of its files has a run file's name; folders and
  symlinks under checkpoints/ that the run did not write are moved aside, never
  deleted or pruned; a workdir named with '@', a space and non-ASCII letters works."""
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  from selfimprove_jax.errors import UserError
  from selfimprove_jax.weights.run_dir import parse_run_spec

  def config(iterations):
    return load_config(TINY, [f"loop.iterations={iterations}", "log.tensorboard=false",
                              "log.plot=false"])

  def files(d):
    return {os.path.relpath(os.path.join(r, n), d): open(os.path.join(r, n), "rb").read()
            for r, _, ns in os.walk(d) for n in ns}

  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("my notes")
  (mine / "manifest.json").write_text('{"my": "own manifest"}')
  (mine / "metrics.jsonl").write_text('{"loss": 1}\n')
  before = files(mine)
  with pytest.raises(UserError, match=r"not empty and not a run directory \(it holds "
                     r"manifest.json, metrics.jsonl, notes.txt\).*--adopt_workdir"):
    loop.run(config(1), str(mine), log=lambda *_: None)
  with pytest.raises(UserError, match=r"--adopt_workdir: .*manifest.json is not this run's"):
    loop.run(config(1), str(mine), log=lambda *_: None, adopt_workdir=True)
  assert files(mine) == before                     # nothing written, nothing replaced

  run = tmp_path / "exp@1 ü"                       # '@', a space, non-ASCII
  run.mkdir()
  (run / "notes.txt").write_text("my notes")
  loop.run(config(1), str(run), log=lambda *_: None, adopt_workdir=True)
  assert (run / "notes.txt").read_text() == "my notes"
  assert parse_run_spec(str(run)) == (str(run), None)
  assert parse_run_spec(f"{run}@1") == (str(run), 1)
  os.makedirs(run / "checkpoints" / "2")           # a user's folder where iteration 2 goes
  (run / "checkpoints" / "2" / "data.txt").write_text("mine")
  os.makedirs(run / "checkpoints" / "7")           # and one pruning must leave alone
  (run / "checkpoints" / "7" / "data.txt").write_text("mine too")
  lines = []
  state = loop.run(config(3), str(run), log=lines.append)
  assert [r["iteration"] for r in state["history"]] == [0, 1, 2, 3]
  assert (run / "checkpoints" / "moved-aside-2" / "data.txt").read_text() == "mine"
  assert (run / "checkpoints" / "7" / "data.txt").read_text() == "mine too"
  assert any("is not a checkpoint this run wrote" in l and "moved-aside-2" in l
             for l in lines), lines
  assert os.path.isfile(run / "checkpoints" / "2" / "_CHECKPOINT_METADATA")
  # a symlink where the next checkpoint goes is moved aside too (not followed)
  os.symlink(run / "checkpoints" / "7", run / "checkpoints" / "4")
  state = loop.run(config(4), str(run), log=lines.append)
  assert state["history"][-1]["iteration"] == 4
  assert os.path.islink(run / "checkpoints" / "moved-aside-4")
  assert (run / "checkpoints" / "7" / "data.txt").read_text() == "mine too"
  # eval's settings come from the checkpoint it loads: a corrupt newest one is passed over
  from selfimprove_jax.runtime.checkpoint import Checkpointer
  from selfimprove_jax.weights.run_dir import saved_config
  ckpt = Checkpointer(str(run), read_only=True, log=lambda _: None)
  good = ckpt.latest_good(only_accepted=True)
  ckpt.close()
  with open(run / "checkpoints" / str(good) / "meta" / "metadata", "wb") as f:
    f.write(b"\0" * 64)
  assert saved_config(str(run))["loop"]["iterations"] in (1, 3)   # an earlier one's
