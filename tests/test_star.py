"""STaR's rationalization and label-free (self-consistency) training, driven by scripted
models: what is trained on never contains the hint, a rationale that misses the answer
is dropped, and label-free selection reads no reference."""

import json
import math
import re

import numpy as np
import pytest

from selfimprove_jax import loop
from selfimprove_jax.config import load_config
from selfimprove_jax.paradigms import registry as algorithms
from selfimprove_jax.records import Sample, read_records
from selfimprove_jax.refine import targets as refine_targets
from selfimprove_jax.refine.strategies import Context, StrategyConfig
from selfimprove_jax.sampling import encode_prompts
from selfimprove_jax.tasks import get_task

from run_files import TINY
from scripted import Scripted, tokenized

TASK = get_task("arithmetic")   # the tiny config's task
HINT = re.compile(r"Hint: the answer is (-?\d+)")
QUIET = ["loop.iterations=1", "log.tensorboard=false", "log.plot=false"]


def _with_model(monkeypatch, reply):
  """Every model call of the loop (acquire, rationalize, evaluate) goes to `reply`."""
  from selfimprove_jax.weights import load
  tokenizer = load("tiny").tokenizer
  gen = tokenized(reply, tokenizer)
  monkeypatch.setattr(loop.Setup, "generate", lambda self, trained: gen)
  return tokenizer


def _spy_batches(monkeypatch, name):
  seen = []
  algo = algorithms.ALGORITHMS[name]
  def spy(samples, config, seed):
    batches = algo.batches(samples, config, seed)
    seen.extend(batches)
    return batches
  monkeypatch.setitem(algorithms.ALGORITHMS, name,
                      algorithms.dataclasses.replace(algo, batches=spy))
  return seen


def _answer(prompt):
  return TASK.parse_problem(prompt.split("\n\nHint:")[0]).reference


# ----------------------------------------------------------------------------- STaR


def test_rationalize_records_keeps_only_hinted_answers_that_reach_the_reference():
  problems = TASK.heldout(4, 2)
  solved, right, wrong, cites = problems
  recs = [Sample(problem_id=p.id, prompt=p.prompt, prompt_tokens=[1, 2], completion="#### 0",
                 reward=1.0 if p is solved else 0.0, sample_index=j)
          for p in problems for j in range(2)]
  def reply(prompt, j, greedy):
    ref = HINT.search(prompt).group(1)
    if prompt.startswith(right.prompt):
      return f"{ref}"
    if prompt.startswith(cites.prompt):
      return f"The hint says {ref}."
    return "#### 1"                       # misses the answer
  gen = Scripted(reply)
  added = refine_targets.rationalize_records(recs, problems, Context(gen, TASK, problems),
                                             StrategyConfig(), seed=0, threshold=1.0)
  # one batched call, for the three failed problems only; the solved one is not asked
  assert len(gen.calls) == 1 and len(gen.calls[0][0]) == 3
  assert all("Hint: the answer is" in p for p in gen.calls[0][0])
  assert [a.problem_id for a in added] == [right.id]
  a = added[0]
  assert a.rationalized and a.reward == 1.0 and a.sample_index == 2
  assert a.prompt == right.prompt and a.prompt_tokens == [1, 2]     # the original prompt
  assert Sample.from_json(a.to_json()) == a


def test_star_trains_on_rationalizations_without_the_hint(monkeypatch, tmp_path):
  """The model answers every plain prompt wrongly except problems whose answer is a
  multiple of 3; given the hint it reaches even answers only. Kept: the right answers
  and the rationalizations of failed problems with even answers; the trained rows hold
  the original prompts' tokens, never the hint."""
  def reply(prompt, j):
    if "Hint:" in prompt:
      ans = int(HINT.search(prompt).group(1))
      return f"#### {ans if ans % 2 == 0 else ans + 1}"
    ans = int(_answer(prompt))
    return f"#### {ans if ans % 3 == 0 else ans + 7}"
  tokenizer = _with_model(monkeypatch, reply)
  seen = _spy_batches(monkeypatch, "sft")
  config = load_config(TINY, QUIET + ["acquire.rationalize=true",
                                      "select.filters=correct,dedup,max_length"])
  state = loop.run(config, str(tmp_path), log=lambda *_: None)
  rec = tmp_path / "records" / "iter_0001"
  acquired = read_records(str(rec / "acquire.parquet"))
  selected = read_records(str(rec / "select.parquet"))
  rational = [s for s in acquired if s.rationalized]
  failed = {s.problem_id: int(_answer(s.prompt)) for s in acquired
            if int(_answer(s.prompt)) % 3 != 0}
  assert rational and any(a % 2 for a in failed.values())       # both kinds occur
  # one per failed problem with an even answer; an odd one's rationale missed it
  assert sorted(s.problem_id for s in rational) == sorted(
      pid for pid, a in failed.items() if a % 2 == 0)
  assert all(s.reward == 1.0 for s in rational)
  assert {s.problem_id for s in selected} == {s.problem_id for s in acquired
                                              if s.reward == 1.0}
  for s in selected:
    assert "Hint" not in s.prompt and "Hint" not in tokenizer.decode(s.prompt_tokens)
    assert s.prompt_tokens == encode_prompts(tokenizer, [s.prompt])[0]
  rows = [b["tokens"][i][b["input_mask"][i] == 1] for b in seen
          for i in range(len(b["tokens"])) if b["loss_mask"][i].any()]
  assert len(rows) == len(selected) * config.train.epochs
  assert not any("Hint" in tokenizer.decode(r.tolist()) for r in rows)
  assert state["history"][1]["rationalized"] == len(rational)


# ----------------------------------------------------------------------------- label-free


class _Unlabeled:
  """A training problem without a reference: reading it fails like a missing field."""

  def __init__(self, p):
    self.id, self.prompt, self.difficulty, self.metadata = p.id, p.prompt, p.difficulty, {}

  @property
  def reference(self):
    raise AttributeError("this problem has no reference answer")


class _UnlabeledTask:
  """The arithmetic task whose training problems have no references; every problem
  the verifier scores is logged."""

  def __init__(self):
    self._task = TASK
    self.scored = []

  def __getattr__(self, name):
    return getattr(self._task, name)

  def problem(self, seed, index, difficulty=None):
    return _Unlabeled(self._task.problem(seed, index, difficulty))

  def score(self, problem, completion):
    self.scored.append(problem.id)
    return self._task.score(problem, completion)


def _majority_reply(wrong_majority):
  """4 samples per prompt: the right answer twice and two different wrong ones (the
  right one is the majority at share 0.5), or, for problems `wrong_majority` picks,
  one wrong answer three times."""
  def reply(prompt, j):
    ans = int(_answer(prompt))
    if wrong_majority(ans):
      return f"#### {ans + 1 if j < 3 else ans}"
    return f"#### {[ans, ans + 5, ans, ans + 9][j]}"
  return reply


LABEL_FREE = QUIET + ["acquire.label_free=true", "acquire.refine_strategy=self_consistency",
                      "acquire.min_vote_share=0.5", "loop.samples_per_prompt=4",
                      "select.filters=refined,dedup,max_length"]


def test_label_free_reads_no_reference_when_choosing_training_data(monkeypatch, tmp_path):
  task = _UnlabeledTask()
  monkeypatch.setattr(loop, "get_task", lambda name, **options: task)
  _with_model(monkeypatch, _majority_reply(lambda a: False))
  config = load_config(TINY, LABEL_FREE)
  state = loop.run(config, str(tmp_path), log=lambda *_: None)
  row = state["history"][1]
  assert row["optimizer_steps"] > 0 and row["loss_tokens"] > 0       # it trained
  # the verifier scored held-out problems only (evaluation), never a training sample
  # (validation's and the test split's problems: the next ones of the held-out order)
  heldout = {p.id for p in TASK.heldout(config.task.heldout_size + config.task.test_size,
                                        config.task.difficulty)}
  assert task.scored and set(task.scored) <= heldout
  rec = tmp_path / "records" / "iter_0001"
  selected = read_records(str(rec / "select.parquet"))
  distinct = {s.problem_id for s in read_records(str(rec / "acquire.parquet"))}
  assert sorted(s.problem_id for s in selected) == sorted(distinct)   # one majority each
  assert all(s.reference is None and s.verifier_status == "unverified" for s in selected)
  assert all(s.majority_answer == _answer(s.prompt) for s in selected)
  # nothing to check the labels against: counted, not checked
  assert row["pseudo_labels"] == len(distinct) and row["pseudo_labels_checked"] == 0
  assert math.isnan(row["pseudo_label_precision"])
  assert "refined_precision" not in row


def test_label_free_reports_pseudo_label_precision(monkeypatch, tmp_path):
  """With references available (read only after selection): problems with an odd
  answer get a wrong majority, and the precision is the share of even answers."""
  _with_model(monkeypatch, _majority_reply(lambda a: a % 2 == 1))
  config = load_config(TINY, LABEL_FREE)
  state = loop.run(config, str(tmp_path), log=lambda *_: None)
  row = state["history"][1]
  acquired = read_records(str(tmp_path / "records" / "iter_0001" / "acquire.parquet"))
  answers = {s.problem_id: int(_answer(s.prompt)) for s in acquired}
  even = sum(a % 2 == 0 for a in answers.values())
  assert 0 < even < len(answers)
  assert row["pseudo_labels"] == row["pseudo_labels_checked"] == len(answers)
  assert row["pseudo_labels_right"] == even
  assert row["pseudo_label_precision"] == pytest.approx(even / len(answers))
  # the reward is the agreement with the majority, right or wrong
  for s in acquired:
    assert s.reward == float(s.completion == f"#### {s.majority_answer}")
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert rows[1]["pseudo_label_precision"] == row["pseudo_label_precision"]
  assert np.isfinite(row["train_loss"])
