"""The judge and its rubric (select/judge.py, select/rubric.py), driven by scripted
generations (no model)."""

import pytest

from selfimprove_jax.optimize import batches
from selfimprove_jax.records import Sample
from selfimprove_jax.select import filters as select
from selfimprove_jax.select import judge
from selfimprove_jax.select import rubric

from scripted import Scripted


# ----------------------------------------------------------------------------- judge


@pytest.mark.parametrize("text, score", [
    ("The response is correct.\nScore: 4", 0.8),
    ("**Score:** 5/5", 1.0),
    ("score = 2.5", 0.5),
    ("Score: 3 out of 10", 0.3),
    ("Score: 1\n...\nScore: 5", 1.0),      # the last statement counts
    ("3", 0.6),                            # a reply that is only a number
    ("Score: 7", None),                    # off the 0-5 scale
    ("Score: -1", None),
    ("I think it is quite good.", None),
    ("Score: five", None),
    ("", None),
    (None, None),
    ("Score: 4/0", None),
])
def test_judge_score_parsing(text, score):
  got = rubric.parse_score(text)
  assert got == pytest.approx(score) if score is not None else got is None


def test_judge_records_unparsed_agreement_and_pairs():
  records = [
      Sample(problem_id="a", prompt="q", completion="good", reward=1.0),
      Sample(problem_id="a", prompt="q", completion="bad", reward=0.0),
      Sample(problem_id="a", prompt="q", completion="garbled", reward=0.0),
      Sample(problem_id="b", prompt="q2", completion="good", reward=0.0),
  ]
  replies = {"good": "Score: 5", "bad": "Score: 1", "garbled": "blah blah"}
  gen = Scripted(lambda p, j, g: replies[p.split("Response: ")[1].split("\n")[0]])
  scored = judge.score_records(gen, records, use_as_reward=True)
  assert [r.judge_score for r in scored] == [1.0, 0.2, None, 1.0]
  assert [r.reward for r in scored] == [1.0, 0.2, 0.0, 1.0]        # unparsed -> 0
  assert [r.verifier_reward for r in scored] == [1.0, 0.0, 0.0, 0.0]
  m = judge.agreement(scored, judge_threshold=0.6, reward_threshold=1.0)
  assert m["judge_agreement"] == pytest.approx(2 / 3) and m["judge_unparsed"] == 0.25
  assert m["judge_mean_correct"] == 1.0
  pairs = batches.best_worst_pairs(scored)
  assert [(a.completion, b.completion) for a, b in pairs] == [("good", "bad")]
  cfg = type("C", (), {"judge_threshold": 0.6})
  assert [r.completion for r in select.judge(scored, cfg)] == ["good", "good"]
