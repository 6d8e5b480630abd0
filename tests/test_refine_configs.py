"""The issue-7 configs each complete one tiny iteration (model swapped for the tiny
preset), and the loop records what each feature adds: judge agreement, self-instruct
counts, curriculum moves, refined targets and per-strategy held-out scores."""

import json
import os

import pytest

from selfimprove_jax.records import read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["model=tiny", "loop.iterations=1", "loop.prompts_per_iteration=4",
         "loop.samples_per_prompt=2", "task.heldout_size=4", "sampling.max_new_tokens=8",
         "evaluate.max_new_tokens=8", "evaluate.maj_k=2", "train.max_seq_len=128",
         "train.batch_size=8", "log.progress=false", "log.plot=false",
         "log.tensorboard=false", "refine.n=2", "refine.critique_tokens=8",
         "judge.max_new_tokens=8", "self_instruct.proposals=4",
         "self_instruct.max_new_tokens=8"]


def _run(name, tmp_path, *extra):
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  config = load_config(os.path.join(ROOT, "configs", name), SMALL + list(extra))
  state = loop.run(config, str(tmp_path), log=lambda *_: None)
  assert state["iteration"] == 1 and len(state["history"]) == 2
  return state


def test_self_rewarding_dpo_one_tiny_iteration(tmp_path):
  state = _run("self_rewarding_dpo.py", tmp_path)
  row = state["history"][1]
  assert 0.0 <= row["judge_unparsed"] <= 1.0          # logged every iteration
  assert "judge_agreement" in row
  recs = [s.to_json() for s in read_records(str(tmp_path / "records/iter_0001/acquire.parquet"))]
  # every sample judged (an unparsed judgment has a reply and no score)
  assert len(recs) == 8 and all("judge_reply" in r for r in recs)


def test_self_instruct_sft_one_tiny_iteration_with_curriculum(tmp_path):
  state = _run("self_instruct_sft.py", tmp_path)
  row = state["history"][1]
  assert row["self_instruct_proposed"] == 4
  rows = [json.loads(l) for l in open(tmp_path / "records/iter_0001/self_instruct.jsonl")]
  assert len(rows) == 4 and all(r["status"] != "kept" or r["problem"] for r in rows)
  # a random model solves nothing: the pass rate is under the band, difficulty 2 -> 1
  assert row["difficulty"] == 2 and row["curriculum_move"]["to"] == 1
  assert state["difficulty"] == 1


def test_refine_then_train_one_tiny_iteration(tmp_path):
  state = _run("refine_then_train.py", tmp_path)
  for row in state["history"]:
    assert {"best_of_n@2", "self_consistency@2"} <= set(row)
    assert row["best_of_n@2"] >= row["pass@1"]       # candidate 0 is the greedy answer
  assert "refined" in state["history"][1]
  recs = [s.to_json() for s in read_records(str(tmp_path / "records/iter_0001/acquire.parquet"))]
  assert all("refined" in r and "vote_share" in r for r in recs)


def test_self_refine_targets_one_tiny_iteration(tmp_path):
  state = _run("refine_then_train.py", tmp_path, "acquire.refine_strategy=self_refine",
               "evaluate.strategies=self_refine", "refine.rounds=1")
  assert "self_refine@1" in state["history"][0]


def test_workdirs_written_before_new_keys_still_resume():
  """A saved config lacking keys added later (this issue's, all off by default) is
  compatible; a differing value of such a key still is not."""
  from selfimprove_jax.config import base_config, result_differences
  current = base_config().to_dict()
  saved = {k: v for k, v in current.items() if k not in ("curriculum", "self_instruct")}
  assert result_differences(saved, current) == []
  changed = base_config()
  changed.curriculum.enabled = True
  assert result_differences(saved, changed.to_dict()) == ["curriculum.enabled"]
