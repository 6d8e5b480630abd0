"""Interrupted and damaged runs of configs/tiny.py resume to the result of an
uninterrupted one: SIGKILL at chosen moments (a later iteration, during a checkpoint
write), a full disk, corrupt or hostile workdir files, Ctrl-C and SIGTERM."""

import os
import shutil
import subprocess
import sys

import pytest

from run_files import TINY, assert_same_state, final_state, metrics, run_cli, run_env

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


def test_metrics_jsonl_is_rebuilt_from_the_checkpoints_history(reference, cache_dir,
                                                              tmp_path):
  """Killed just after the last iteration's checkpoint (before its metrics.jsonl row
  is written), the re-run writes the row; a deleted metrics.jsonl of a finished run
  comes back whole: both are derived from the loop state the checkpoint holds."""
  killed = run_cli(tmp_path, cache_dir, fault="saved@2")
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert len(metrics(tmp_path)) == 2          # the baseline's and iteration 1's rows
  resumed = run_cli(tmp_path, cache_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert metrics(tmp_path) == metrics(reference[0])
  os.remove(os.path.join(tmp_path, "metrics.jsonl"))
  os.remove(os.path.join(tmp_path, "steps.jsonl"))
  again = run_cli(tmp_path, cache_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert metrics(tmp_path) == metrics(reference[0])
  with open(os.path.join(tmp_path, "steps.jsonl")) as a, \
       open(os.path.join(reference[0], "steps.jsonl")) as b:
    assert a.read() == b.read()


def test_held_out_results_are_kept_per_problem_and_read_back_on_resume(reference, cache_dir,
                                                                        tmp_path):
  """records/iter_K/eval_<split>.jsonl holds one row per validation and test problem
  for every iteration (the baseline's too), in the manifest like the other stage files;
  killed while iteration 1's checkpoint is written, the resumed run reads iteration 1's
  results back instead of evaluating again, and ends as an uninterrupted run does."""
  import json
  from selfimprove_jax.records import read_jsonl
  killed = run_cli(tmp_path, cache_dir, fault="checkpoint_write@1")
  assert killed.returncode == -9, killed.stderr[-2000:]
  rows = read_jsonl(os.path.join(tmp_path, "records", "iter_0001", "eval_validation.jsonl"))
  assert len(rows) == 8 and all({"problem_id", "prompt", "completion", "answer", "reward",
                                 "samples", "majority"} <= set(r) for r in rows)
  test = read_jsonl(os.path.join(tmp_path, "records", "iter_0001", "eval_test.jsonl"))
  assert len(test) == 4 and not {r["problem_id"] for r in test} & {r["problem_id"] for r in rows}
  resumed = run_cli(tmp_path, cache_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  lines = [l for l in resumed.stdout.splitlines() if l.startswith("[iter 1] evaluate")]
  assert len(lines) == 2 and all(l.endswith("(from disk)") for l in lines), lines
  assert metrics(tmp_path) == metrics(reference[0])
  with open(os.path.join(tmp_path, "manifest.json")) as f:
    manifest = json.load(f)
  assert all({"eval_validation", "eval_test"} <= set(c["records"])
             for c in manifest["checkpoints"].values())
  for k in (0, 1, 2):
    for split in ("validation", "test"):
      assert os.path.exists(os.path.join(tmp_path, "records", f"iter_{k:04d}",
                                         f"eval_{split}.jsonl"))


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


def _start(workdir, cache_dir):
  cmd = [sys.executable, "-m", "selfimprove_jax.cli", "run", "--config", TINY,
         "--workdir", str(workdir)]
  return subprocess.Popen(cmd, env=run_env(cache_dir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, seconds=300):
  import time
  deadline = time.time() + seconds
  while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, proc.communicate()[1][-2000:]


def test_ctrl_c_stops_cleanly_and_resumes(reference, cache_dir, tmp_path):
  """Preemption: SIGINT (as SIGTERM) once iteration 1's samples are on disk; the run
  exits with status 75 (EX_TEMPFAIL: not finished, try again) at the next stage
  boundary, and re-running finishes as if uninterrupted (status 0)."""
  import signal
  proc = _start(tmp_path, cache_dir)
  _wait_for(os.path.join(tmp_path, "records", "iter_0001", "acquire.parquet"), proc)
  proc.send_signal(signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 75, stderr[-3000:]
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


def test_a_rules_temperature_change_survives_sigkill(cache_dir, tmp_path):
  """Rules that raise the training temperature and token budget after iteration 1 (the
  actions in the row, the new values in the loop state): killed in iteration 2's
  acquire, the resumed run samples with the raised settings and ends bit-identical to
  an uninterrupted run with the same rules."""
  from selfimprove_jax.records import read_records
  rule = ("--config.evaluate.rules=watch_truncated>=0:temperature+0.3,"
          "watch_truncated>=0:tokens+4")
  whole = run_cli(tmp_path / "whole", cache_dir, rule)
  assert whole.returncode == 0, whole.stderr[-3000:]
  killed = run_cli(tmp_path / "killed", cache_dir, rule, fault="acquire@2")
  assert killed.returncode == -9, killed.stderr[-2000:]
  resumed = run_cli(tmp_path / "killed", cache_dir, rule)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  rows = metrics(tmp_path / "whole")
  assert [a["action"] for a in rows[1]["rule_actions"]] == [
      "sampling.temperature 1.0 -> 1.3", "sampling.max_new_tokens 8 -> 12"]
  # iteration 2 started from the changed values, after the kill too
  assert [a["action"] for a in rows[2]["rule_actions"]] == [
      "sampling.temperature 1.3 -> 1.5", "sampling.max_new_tokens 12 -> 16"]
  assert metrics(tmp_path / "killed") == rows
  assert_same_state(final_state(tmp_path / "killed"), final_state(tmp_path / "whole"))
  acquired = lambda d, k: [(s.completion, s.logprobs, s.num_tokens) for s in read_records(
      os.path.join(d, "records", f"iter_{k:04d}", "acquire.parquet"))]
  assert acquired(tmp_path / "killed", 2) == acquired(tmp_path / "whole", 2)
  # the random model runs to its budget: 8 tokens in iteration 1, 12 in iteration 2
  assert {n for *_, n in acquired(tmp_path / "whole", 1)} == {8}
  assert {n for *_, n in acquired(tmp_path / "whole", 2)} == {12}
