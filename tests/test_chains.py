"""Chains (selfimprove_jax/chains.py): a tiny two-phase chain of configs/tiny.py (expert
iteration for 1 iteration, then 2 more at a higher learning rate from its kept weights)
run by one command; killed with SIGKILL in its second phase and resumed, it ends as the
uninterrupted chain does, and both name their parent run and iteration in every row,
the summary and `eval`. Bad parents get one line."""

import json
import os

import numpy as np
import pytest

from run_files import TINY, assert_same_state, final_state, metrics, run_cli
from selfimprove_jax.records import read_jsonl

# the second phase: tiny at a higher learning rate, from the first phase's kept weights
CHAIN = ("--config.model=parent", f"--config.parent.config={TINY}",
         '--config.parent.overrides=("loop.iterations=1",)',
         "--config.optim.learning_rate=3e-3", "--config.log.plot=false")
PARENT_FIELDS = ("parent_run", "parent_path", "parent_iteration")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, cache_dir):
  """An uninterrupted two-phase chain (through the CLI)."""
  workdir = tmp_path_factory.mktemp("chain")
  out = run_cli(workdir, cache_dir, *CHAIN)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out


def _without_paths(rows):
  """Rows without the parent's path (each chain's own workdir), checked on their own."""
  return [{k: v for k, v in r.items() if k not in ("parent_run", "parent_path")} for r in rows]


def _assert_provenance(workdir):
  """Every row of the second phase, and its summary, name the first phase's workdir and
  the iteration whose weights it started from (its last accepted: 1)."""
  parent = os.path.join(str(workdir), "parent")
  want = {"parent_run": parent, "parent_path": os.path.abspath(parent), "parent_iteration": 1}
  rows = metrics(workdir)
  assert len(rows) == 3 and all({k: r[k] for k in PARENT_FIELDS} == want for r in rows)
  assert not any(k in r for r in metrics(parent) for k in PARENT_FIELDS)   # from tiny
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["parent"] == want


def test_chain_resumes_bit_identically_after_sigkill_in_its_second_phase(chain, cache_dir,
                                                                          tmp_path):
  ref, ref_out = chain
  _assert_provenance(ref)
  # the second phase trained: its final weights are not its parent's
  assert final_state(ref)[0] == 2 and final_state(os.path.join(ref, "parent"))[0] == 1
  assert not all(np.array_equal(a, b) for a, b in zip(
      *(jax_leaves(final_state(w)[1]["params"]) for w in (ref, os.path.join(ref, "parent")))))
  # killed while optimizing the second phase's iteration 2 (the first phase has one)
  killed = run_cli(tmp_path, cache_dir, *CHAIN, fault="optimize@2")
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert os.path.exists(os.path.join(tmp_path, "parent", "summary.json"))
  assert len(metrics(tmp_path)) == 2 and not os.path.exists(os.path.join(tmp_path,
                                                                         "summary.json"))
  resumed = run_cli(tmp_path, cache_dir, *CHAIN)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming {tmp_path} after iteration 1" in resumed.stdout
  assert metrics(os.path.join(tmp_path, "parent")) == metrics(os.path.join(ref, "parent"))
  assert _without_paths(metrics(tmp_path)) == _without_paths(metrics(ref))
  assert_same_state(final_state(tmp_path), final_state(ref))
  _assert_provenance(tmp_path)


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_the_parents_test_split_is_the_childs(chain):
  """Same task and split sizes: the second phase scores the very problems its parent
  scored, and its baseline (the parent's kept weights) repeats the parent's test
  results for them answer by answer; the start-up line says so."""
  ref, out = chain
  parent = os.path.join(ref, "parent")
  assert "its validation and test splits are this run's" in out.stdout
  for split in ("validation", "test"):
    mine = read_jsonl(os.path.join(ref, "records", "iter_0000", f"eval_{split}.jsonl"))
    theirs = read_jsonl(os.path.join(parent, "records", "iter_0001", f"eval_{split}.jsonl"))
    assert [r["problem_id"] for r in mine] == [r["problem_id"] for r in theirs]
  mine = read_jsonl(os.path.join(ref, "records", "iter_0000", "eval_test.jsonl"))
  theirs = read_jsonl(os.path.join(parent, "records", "iter_0001", "eval_test.jsonl"))
  assert [r["completion"] for r in mine] == [r["completion"] for r in theirs]
  assert metrics(ref)[0]["test_pass@1"] == metrics(parent)[1]["test_pass@1"]


def test_eval_shows_the_parent(chain):
  from selfimprove_jax.evaluate import command
  ref, _ = chain
  flags = {name: None for name in command.FLAG_KEYS}
  out = command.evaluate_model(f"{ref}@2", flags, {}, progress=False)
  assert out["parent"] == f"{os.path.join(ref, 'parent')}@1"
  assert out["parent_path"] == os.path.abspath(os.path.join(ref, "parent"))
  assert out["test_pass@1"] == metrics(ref)[2]["test_pass@1"]
  assert "parent" not in command.evaluate_model(f"{os.path.join(ref, 'parent')}@1", flags,
                                                {}, progress=False)


def test_a_split_that_differs_from_the_parents_is_named(chain, cache_dir, tmp_path):
  """Another test split size: the splits are not the parent's, one start-up line says
  which keys differ; the chain still runs (a chain may change task on purpose)."""
  ref, _ = chain
  import shutil
  shutil.copytree(os.path.join(ref, "parent"), os.path.join(tmp_path, "parent"))
  out = run_cli(tmp_path, cache_dir, *CHAIN, "--config.task.test_size=3",
                "--config.loop.iterations=0")
  assert out.returncode == 0, out.stderr[-3000:]
  line = next(l for l in out.stdout.splitlines() if l.startswith("starting from run"))
  assert "task.test_size differ" in line and "do not compare" in line


def _error_line(capsys, argv):
  from selfimprove_jax import cli
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("selfimprove-jax run: error: "), err
  return err[0]


@pytest.mark.parametrize("case", ["missing_run", "not_a_run", "parent_dir_not_a_run",
                                  "parent_without_config", "missing_parent_config"])
def test_a_bad_parent_is_one_line(case, tmp_path, capsys):
  junk = tmp_path / "junk"
  junk.mkdir()
  (junk / "notes.txt").write_text("not a run\n")
  workdir = tmp_path / "w"
  run = ["run", "--config", TINY, "--workdir", str(workdir)]
  argv, named = {
      "missing_run": (run + [f"--config.model={tmp_path}/nope@1"], f"{tmp_path}/nope"),
      "not_a_run": (run + [f"--config.model={junk}@1"], str(junk)),
      # the chain's first phase would write into a directory that is not a run's
      "parent_dir_not_a_run": (run + list(CHAIN), str(workdir / "parent")),
      "parent_without_config": (run + ["--config.model=parent"], "parent.config"),
      "missing_parent_config": (run + list(CHAIN[:1]) + ["--config.parent.config=nope.py"],
                                "nope.py"),
  }[case]
  if case == "parent_dir_not_a_run":
    (workdir / "parent").mkdir(parents=True)
    (workdir / "parent" / "notes.txt").write_text("mine\n")
  line = _error_line(capsys, argv)
  assert named in line, line
  assert not os.path.exists(workdir / "manifest.json")
