"""The host paths that benchmarks/host_overhead.py made faster still give what they gave:
reasoning-gym answers scored in batches get the verdicts scoring them alone gives (an
answer that hangs or raises inside a batch gets its own status), a file task's training
stream is the same problems in the same order, and the prompt stream's saved state is
the same and resumes where it stopped."""

import json
import random

import pytest

from selfimprove_jax import sandbox
from selfimprove_jax.acquire.prompts import PromptStream
from selfimprove_jax.sandbox import worker
from selfimprove_jax.tasks import get_task, verify
from selfimprove_jax.tasks import problem as problem_lib


def _count_jobs(monkeypatch) -> list:
  """Every sandbox.run_jobs call as (job, items)."""
  calls, real = [], sandbox.run_jobs

  def run_jobs(job, args_list, *a, **kw):
    calls.append((job, len(args_list)))
    return real(job, args_list, *a, **kw)

  monkeypatch.setattr(sandbox, "run_jobs", run_jobs)
  return calls


def test_reasoning_gym_batches_score_as_the_scorer_does(monkeypatch):
  import reasoning_gym
  task = get_task("reasoning_gym:leg_counting")
  problems = task.train_problems(0, 40)
  completions = [f"So:\n#### {p.reference}" if i % 3 == 0 else
                 f"#### {p.reference}1" if i % 3 == 1 else f"about {p.reference} legs"
                 for i, p in enumerate(problems)]
  calls = _count_jobs(monkeypatch)
  verdicts = verify(task, problems, completions)
  scorer = reasoning_gym.create_dataset("leg_counting", seed=0, size=1)
  expected = [float(scorer.score_answer(task.extract_answer(c, p), {
      "question": p.metadata["question"], "answer": p.reference,
      "metadata": p.metadata["rg_metadata"]})) for p, c in zip(problems, completions)]
  assert [v.reward for v in verdicts] == expected
  assert expected.count(1.0) >= 14 and min(expected) < 1.0   # wrong ones: partial credit
  assert all(v.status == "ok" for v in verdicts)
  # 40 answers in 14 sandboxed children (batches of 3), none scored alone
  assert calls == [("rg_score_many", 14), ("rg_score", 0)]


def test_an_answer_that_hangs_in_a_batch_is_scored_alone(monkeypatch):
  """n_queens evaluates the answer: `9**9**9` hangs its batch (34 answers: batches of
  3), so that batch's three answers are scored again one by one: the right one still
  scores 1, the hang times out; the other batches are not run again."""
  task = get_task("reasoning_gym:n_queens", score_timeout_s=1.0)
  p = task.train_problems(0, 1)[0]
  answers = [f"#### {p.reference}", "#### 9**9**9"] + ["#### 1", f"#### {p.reference}"] * 16
  calls = _count_jobs(monkeypatch)
  verdicts = verify(task, [p] * len(answers), answers)
  assert [v.reward for v in verdicts] == [1.0, 0.0] + [0.0, 1.0] * 16
  assert [v.status for v in verdicts] == ["ok", "timeout"] + ["ok"] * 32
  assert calls == [("rg_score_many", 12), ("rg_score", 3)]


def test_batched_scores_of_any_other_shape_are_no_result():
  shape = worker.RESULT_SHAPES["rg_score_many"]
  assert shape({"rewards": [1.0, 0, None]})
  for bad in ({"rewards": [1.5]}, {"rewards": [-0.1]}, {"rewards": ["1"]}, {"rewards": 1.0},
              {"rewards": [True]}, {"rewards": [], "extra": 1}, [1.0]):
    assert not shape(bad), bad


def test_file_task_stream_is_the_same_shuffle_per_epoch(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)})
                          + "\n" for i in range(30)))
  task = get_task(f"jsonl:{path}")
  train = task._train   # pylint: disable=protected-access
  n = len(train)
  def old(seed, index):   # the shuffle as it was made for every problem before
    epoch, pos = divmod(index, n)
    order = list(range(n))
    random.Random(problem_lib.derive_seed(seed, "jsonl", epoch)).shuffle(order)
    return train[order[pos]]

  assert task.train_problems(7, 3 * n + 5) == [old(7, i) for i in range(3 * n + 5)]
  # back and forth over more epochs (and seeds) than are kept
  for seed, index in [(7, 6 * n + 1), (7, 1), (8, 2 * n), (7, 5 * n - 1), (7, 2), (8, 3)]:
    assert task.problem(seed, index) == old(seed, index)
  assert task.train_problems(8, 5) != task.train_problems(7, 5)


@pytest.mark.parametrize("saved", [None, {"next_index": 5}])
def test_prompt_stream_state_and_resume(saved):
  task = get_task("arithmetic")
  stream = PromptStream(task, 3, saved, None)
  start = 0 if saved is None else 5
  assert stream.take(4) == [task.problem(3, i, None) for i in range(start, start + 4)]
  state = stream.state()
  assert state == {"next_index": start + 4}
  again = PromptStream(task, 3, state, None)
  assert again.take(2) == [task.problem(3, i, None) for i in range(start + 4, start + 6)]


def test_model_policy_makes_the_samples_it_made_before():
  """ModelPolicy decodes the completion's array and lists its ids and log-probs with
  tolist: the same text, Python ints and floats as decoding and converting a list."""
  import numpy as np
  from selfimprove_jax.policy import ModelPolicy
  from selfimprove_jax.sampling import Completion, SamplingParams
  from selfimprove_jax.weights import tokenizer as tokenizer_lib
  tok = tokenizer_lib.from_gguf(tokenizer_lib.smollm2_gguf_path())
  rng = np.random.default_rng(0)
  eos = tok.eos_token_id
  rows = [rng.integers(0, len(tok), 40), np.array([eos]), rng.integers(0, len(tok), 7)]
  completions = [Completion(0, j, np.append(r, eos).astype(np.int32) if j < 2 else
                            r.astype(np.int32), rng.normal(size=len(r) + (j < 2)).astype(
                                np.float32), np.zeros(len(r) + (j < 2), np.float32),
                            "eos" if j < 2 else "length", int(j < 2))
                 for j, r in enumerate(rows)]

  class Sampler:
    def generate(self, params, ids, sp, n, seed, progress):
      yield from completions

  (group,) = ModelPolicy(Sampler(), None, tok)(["Hi"], SamplingParams(), 3, 0)
  for s, c in zip(group, completions):
    assert s.completion == tok.decode([int(t) for t in c.content_tokens],
                                      skip_special_tokens=True)
    assert s.completion_tokens == [int(t) for t in c.tokens]
    assert all(type(t) is int for t in s.completion_tokens)
    assert s.logprobs == [float(x) for x in c.logprobs]
    assert all(type(x) is float for x in s.logprobs)
  assert group[1].completion == "" and len(group[0].completion) > 40
