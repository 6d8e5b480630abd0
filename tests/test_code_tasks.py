"""Code tasks, sandboxed reasoning-gym scoring and execution feedback: the verifiers
(reference solutions pass, wrong ones do not, hanging ones time out), the strategy on
scripted generations, and a real loop run whose model answers with hostile text."""

import dataclasses
import json
import os

import pytest

from selfimprove_jax.errors import UserError
from selfimprove_jax.records import Sample, read_records
from selfimprove_jax.refine import strategies as refine
from selfimprove_jax.refine import targets as refine_targets
from selfimprove_jax.refine.strategies import Context, StrategyConfig
from selfimprove_jax.tasks import get_task, verify

from scripted import S, Scripted


def _fenced(code: str) -> str:
  return f"Here it is:\n```python\n{code}```\n"


@pytest.mark.parametrize("family", ["list_ops", "string_ops"])
def test_code_task_verifier(family):
  task = get_task(f"code:{family}", timeout_s=1.0)
  problems = task.train_problems(0, 3, 3)
  assert problems == task.train_problems(0, 3, 3)        # deterministic stream
  heldout = {p.id for p in task.heldout(30)}
  assert not heldout & {p.id for p in task.train_problems(1, 300)}
  arg = "xs" if family == "list_ops" else "s"
  completions = [_fenced(p.reference) for p in problems] + [
      _fenced(f"def solve({arg}):\n  return {arg}\n"),
      _fenced(f"def solve({arg}):\n  while True:\n    pass\n"),
      "I do not know.",
      _fenced(f"def solve({arg}):\n  return 1 / 0\n")]
  verdicts = verify(task, problems + [problems[0]] * 4, completions)
  assert [v.reward for v in verdicts[:3]] == [1.0, 1.0, 1.0]
  assert all(v.status == "ok" and v.detail == "" for v in verdicts[:3])
  identity, hang, nothing, crash = verdicts[3:]
  assert identity.reward < 1.0 and identity.status == "ok" and "expected" in identity.detail
  assert (hang.reward, hang.status) == (0.0, "timeout")
  assert nothing.reward == 0.0 and "no Python code" in nothing.detail
  assert crash.reward == 0.0 and "ZeroDivisionError" in crash.detail
  assert task.score(problems[0], f"#### {problems[0].reference}") == 1.0   # a voted answer


def test_code_jsonl_formats_and_errors(tmp_path):
  rows = [
      {"prompt": "Add two numbers.", "entry_point": "add",
       "tests": [{"input": [1, 2], "output": 3}, {"input": [0, 0], "output": 0}]},
      {"prompt": "Reverse a string.", "entry_point": "rev",
       "test_list": ["assert rev('ab') == 'ba'", "assert rev('') == ''"]},
      {"prompt": "def double(x):\n  '''Twice x.'''\n", "entry_point": "double",
       "test": "def check(candidate):\n  assert candidate(2) == 4\n  assert candidate(0) == 0\n"},
  ]
  path = tmp_path / "code.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  task = get_task(f"code_jsonl:{path}", heldout_fraction=0.3)
  problems = {p.metadata["entry_point"]: p for p in task.heldout() + task.train_problems(0, 2)}
  assert set(problems) == {"add", "rev", "double"} and len(task.heldout()) == 1
  good = {"add": "def add(a, b):\n  return a + b\n", "rev": "def rev(s):\n  return s[::-1]\n",
          "double": "def double(x):\n  return 2 * x\n"}
  bad = {"add": "def add(a, b):\n  return a * b\n", "rev": "def rev(s):\n  return s\n",
         "double": "def double(x):\n  return x + 2\n"}
  names = sorted(good)
  v_good = verify(task, [problems[n] for n in names], [_fenced(good[n]) for n in names])
  v_bad = verify(task, [problems[n] for n in names], [_fenced(bad[n]) for n in names])
  assert [v.reward for v in v_good] == [1.0, 1.0, 1.0]
  assert [v.reward for v in v_bad] == [0.5, 0.0, 0.5]   # add(0,0) and rev('') still hold
  bad_file = tmp_path / "bad.jsonl"
  bad_file.write_text('{"prompt": "x", "entry_point": "f"}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:1: needs tests"):
    get_task(f"code_jsonl:{bad_file}")


def test_reasoning_gym_hostile_answers_score_zero_in_time():
  task = get_task("reasoning_gym:n_queens", score_timeout_s=1.0)
  p = task.train_problems(0, 1)[0]
  verdicts = verify(task, [p] * 4, [f"#### {p.reference}", "#### 9**9**9", "#### exit()",
                                    "#### __import__('os')._exit(0)"])
  assert verdicts[0].reward == 1.0
  assert [v.reward for v in verdicts[1:]] == [0.0, 0.0, 0.0]
  assert verdicts[1].status == "timeout"
  assert all(v.status != "ok" for v in verdicts[1:])


def _code_problem():
  return get_task("code:list_ops").heldout(1)[0]


def test_execution_feedback_shows_the_failure_and_takes_the_fix():
  task = get_task("code:list_ops")
  p = _code_problem()
  wrong = _fenced("def solve(xs):\n  return xs\n")

  def reply(prompt, j, greedy):
    if "It was run and checked" in prompt:
      assert "expected" in prompt          # the failing test is shown
      return _fenced(p.reference)
    return wrong

  gen = Scripted(reply)
  out = refine.run_strategy("execution_feedback", Context(gen, task, [p]), [p.prompt],
                            StrategyConfig(rounds=3), 0)[0]
  assert out.info["stopped"] == "passed" and out.info["reward"] == 1.0 and out.info["revised"]
  assert [r["reward"] < 1.0 for r in out.info["rounds"]] == [True, False]
  assert len(gen.calls) == 2                 # the answer, one fix; no call after passing
  # a model that never fixes it: R rounds, then stop
  gen = Scripted(lambda prompt, j, g: wrong)
  out = refine.run_strategy("execution_feedback", Context(gen, task, [p]), [p.prompt],
                            StrategyConfig(rounds=2), 0)[0]
  assert out.info["stopped"] == "max_rounds" and len(gen.calls) == 3
  assert len(out.info["rounds"]) == 2 and out.info["reward"] < 1.0


def test_execution_feedback_without_a_task_runs_the_code():
  def reply(prompt, j, greedy):
    if "It was run and checked" in prompt:
      assert "NameError" in prompt
      return _fenced("print(1)\n")
    return _fenced("print(undefined_name)\n")
  out = refine.run_strategy("execution_feedback", Context(Scripted(reply)), ["Print 1."],
                            StrategyConfig(rounds=2), 0)[0]
  assert out.info["stopped"] == "passed" and out.text.strip().endswith("```")


def test_execution_feedback_training_targets():
  task = get_task("code:list_ops")
  p = _code_problem()
  rec = Sample(problem_id=p.id, prompt=p.prompt, prompt_tokens=[1, 2],
               completion=_fenced("def solve(xs):\n  return []\n"), completion_tokens=[5, 0],
               logprobs=[-1.0, -1.0], reward=0.0, finish_reason="eos", num_tokens=2,
               sample_index=0, iteration=1)
  fix = S(_fenced(p.reference), -0.5, 2, [7, 0], [-0.25, -0.25])
  ctx = Context(Scripted(lambda prompt, j, g: fix), task, [p])
  out = refine_targets.refine_records("execution_feedback", [rec], [p], ctx,
                                      StrategyConfig(rounds=1), 0)
  assert [r.refined for r in out] == [False, True]
  assert out[1].reward == 1.0 and out[1].completion_tokens == [7, 0]


class _HostileTokenizer:
  """The model's tokenizer, except that every decoded completion is a hostile answer."""

  # each line ended: a reply cut off at its budget (the random tiny model's usually are)
  # is scored on the marked answers it finished (tasks/answers.py: finished_part)
  ANSWERS = ("#### 9**9**9\n", "#### exit()\n", "#### __import__('os')._exit(0)\n",
             "#### 1\n")

  def __init__(self, tokenizer):
    self._tok, self._n = tokenizer, 0

  def __getattr__(self, name):
    return getattr(self._tok, name)

  def __call__(self, *args, **kw):   # encoding: a dunder that __getattr__ does not reach
    return self._tok(*args, **kw)

  def decode(self, ids, **kw):
    self._n += 1
    return self.ANSWERS[self._n % len(self.ANSWERS)]


def test_loop_survives_hostile_scorer_answers_and_resumes(tmp_path, monkeypatch):
  """A real loop run on reasoning_gym:countdown (sympy.parse_expr scoring) whose every
  completion is hostile: each gets reward 0 in time with its reason recorded, the run
  finishes, and a resumed run (one more iteration over the same records) finishes."""
  from selfimprove_jax import config as config_lib
  from selfimprove_jax import loop, weights
  real_load = weights.load

  def load(*a, **kw):
    m = real_load(*a, **kw)
    return dataclasses.replace(m, tokenizer=_HostileTokenizer(m.tokenizer))

  monkeypatch.setattr(weights, "load", load)
  overrides = ["task.name=reasoning_gym:countdown", "task.heldout_size=4",
               "loop.iterations=1", "loop.prompts_per_iteration=4", "train.max_seq_len=192",
               "evaluate.maj_k=1", "log.tensorboard=false", "log.plot=false"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  tiny = os.path.join(root, "configs", "tiny.py")
  config = config_lib.load_config(tiny, overrides)
  config.unlock()
  config.task.options = {"score_timeout_s": 0.5}
  config.lock()
  loop.run(config, str(tmp_path))
  records = [s.to_json() for s in
             read_records(str(tmp_path / "records" / "iter_0001" / "acquire.parquet"))]
  hangs = [r for r in records if "9**9**9" in r["completion"]]
  exits = [r for r in records if "exit" in r["completion"]]
  assert hangs and exits
  assert all(r["reward"] == 0.0 and r["verifier_status"] == "timeout" for r in hangs)
  assert all(r["reward"] <= 0.01 for r in exits)    # countdown's own score for junk
  config.unlock()
  config.loop.iterations = 2
  config.lock()
  loop.run(config, str(tmp_path))                   # resumes after iteration 1
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["iteration"] for r in rows] == [0, 1, 2]
