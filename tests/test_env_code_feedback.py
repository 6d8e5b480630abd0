"""The code_feedback environment (environments/code_feedback.py): scripted submissions
through `step` (right, wrong, none, a syntax error, hostile programs), its options and
the tasks it refuses, and episodes of a tiny random model whose observations are user
turns with no loss."""

import dataclasses
import json

import pytest

from selfimprove_jax import environments
from selfimprove_jax.environments import episodes as episodes_lib
from selfimprove_jax.environments.code_feedback import CodeFeedback
from selfimprove_jax.errors import UserError
from selfimprove_jax.model import get_preset, init_params
from selfimprove_jax.sampling import Sampler, SamplingParams, encode_reply
from selfimprove_jax.tasks import get_task
from selfimprove_jax.tasks.code_task import CodeJsonlTask, CodeTask
from selfimprove_jax.weights import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def task():
  return CodeTask("list_ops", timeout_s=1.0, memory_mb=128)


@pytest.fixture(scope="module")
def problem(task):
  return task.problem(seed=0, index=0, difficulty=1)


def _spec(task, max_turns=3, **options):
  return environments.make("code_feedback", task, max_turns=max_turns, max_tokens=400,
                           options=options)


def _block(code):
  return f"Here it is:\n```python\n{code}\n```"


def _submit(task, problem, actions, finish="eos", **options):
  """Each action as one turn of a fresh episode; the steps."""
  env = _spec(task, **options).make()
  assert env.reset(problem) == problem.prompt
  return [env.step(a, finish) for a in actions]


def test_right_wrong_and_missing_programs(task, problem):
  right, = _submit(task, problem, [_block(problem.reference)])
  assert (right.reward, right.done, right.status, right.tool_call) == (1.0, True, "ok", True)
  # wrong on some tests: the fraction passed, and the first failing test named with
  # its input, what it returned and what was expected, in a request for a fix
  tests = problem.metadata["tests"]
  first = tests[0]
  wrong = (f"def solve(xs):\n  if xs == {first['input'][0]!r}:\n"
           f"    return {first['output']!r}\n  return [12345]")
  w, = _submit(task, problem, [_block(wrong)])
  assert not w.done and w.status == "ok" and w.tool_call
  assert w.reward == pytest.approx(1 / len(tests))
  t = tests[1]
  assert f"solve({t['input'][0]!r}) returned [12345]; expected {t['output']!r}" in w.observation
  assert f"passed 1 of {len(tests)} tests" in w.observation
  assert "corrected" in w.observation and "```python" in w.observation
  # two failing tests on request, the feedback cut to max_chars
  two, = _submit(task, problem, [_block(wrong)], failing_tests=2)
  assert two.observation.count("returned [12345]") == 2
  short, = _submit(task, problem, [_block(wrong)], max_chars=40)
  assert short.observation.count("returned") <= 1 and " ..." in short.observation
  # no program: an invalid action, reward 0, told so; the episode goes on
  none, = _submit(task, problem, ["I would sort the list."])
  assert (none.reward, none.done, none.status, none.tool_call) == (0.0, False, "invalid", False)
  assert "no Python program" in none.observation
  # a syntax error: the sandbox's 'error', the source line and message shown
  syn, = _submit(task, problem, [_block("def solve(xs)\n  return xs")])
  assert (syn.reward, syn.status) == (0.0, "error")
  assert "SyntaxError" in syn.observation and "def solve(xs)" in syn.observation
  # an error at import: the program's own frames and message, not the harness's
  err, = _submit(task, problem, [_block("def solve(xs):\n  return xs\nprint(solve(ys))")])
  assert err.status == "error" and "NameError: name 'ys' is not defined" in err.observation
  assert 'File "<solution>", line 3' in err.observation and "exec(" not in err.observation
  # a cut-off turn is still run, and the model told it was cut off
  cut, = _submit(task, problem, [_block("def solve(xs)")], finish="length")
  assert cut.status == "error" and "cut off" in cut.observation


def test_a_fix_in_a_later_turn_scores_the_episode(task, problem):
  steps = _submit(task, problem, ["no code", _block("def solve(xs):\n  return xs[:0]"),
                                  _block(problem.reference)])
  assert [s.status for s in steps] == ["invalid", "ok", "ok"]
  assert [s.done for s in steps] == [False, False, True] and steps[-1].reward == 1.0


def test_hostile_programs_hit_limits_and_cannot_forge(task, problem):
  loop, bomb, forged, exit0 = _submit(task, problem, [
      _block("def solve(xs):\n  while True:\n    pass"),
      _block("block = bytearray(10**10)\ndef solve(xs):\n  return xs"),
      # prints what a passing result would look like, then leaves before the tests
      _block("import json, os\nprint(json.dumps({'status': 'ok', 'value': {'calls': "
             "[{'returned': True, 'value': 1}] * 8}}))\nos._exit(0)"),
      _block("import os\ndef solve(xs):\n  os._exit(0)"),
  ])
  assert (loop.status, loop.reward, loop.done) == ("timeout", 0.0, False)
  assert "time limit" in loop.observation and loop.detail
  assert (bomb.status, bomb.reward) == ("memory", 0.0) and "memory" in bomb.observation
  for s in (forged, exit0):
    assert s.reward == 0.0 and not s.done and s.status == "error", s


def test_assert_style_tests_of_a_code_jsonl_file(tmp_path):
  rows = [{"prompt": f"Write add{i}(a, b) returning a + b.", "entry_point": f"add{i}",
           "test_list": [f"assert add{i}(1, 2) == 3", f"assert add{i}(2, 2) == 4"]}
          for i in range(3)]
  path = tmp_path / "code.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  task = CodeJsonlTask(str(path), timeout_s=1.0)
  p = task.train_problems(seed=0, count=1)[0]
  name = p.metadata["entry_point"]
  s, = _submit(task, p, [_block(f"def {name}(a, b):\n  return 3")])
  assert s.reward == 0.5 and f"failed: assert {name}(2, 2) == 4" in s.observation


def test_bad_options_and_refused_tasks(task):
  for options, fragment in [
      ({"failing_test": 1}, "environment.options.failing_test=1 is not an option; the "
       "options are failing_tests, error_lines, max_chars"),
      ({"failing_tests": 0}, "environment.options.failing_tests=0 must be an integer >= 1"),
      ({"max_chars": 39}, "environment.options.max_chars=39 must be an integer >= 40"),
      ({"max_chars": "400"}, "environment.options.max_chars='400' must be an integer >= 40"),
      ({"error_lines": True}, "environment.options.error_lines=True must be an integer >= 1")]:
    with pytest.raises(UserError) as e:
      _spec(task, **options)
    assert str(e.value) == f"environment.name='code_feedback': {fragment}"
  with pytest.raises(UserError, match="plays code:\\* and code_jsonl: tasks, not 'arithmetic'"):
    _spec(get_task("arithmetic"))


def test_tiny_model_episodes_observations_are_masked_user_turns(task):
  """A random model's episodes: its turns (no code: invalid) and a scripted one's
  (a wrong program, then the right one) get their observations as user turns with no
  loss, and the scripted episode ends done with reward 1."""
  config = get_preset("tiny")
  params = init_params(config, seed=3)
  tokenizer = tokenizer_lib.from_gguf(tokenizer_lib.smollm2_gguf_path())
  sampler = Sampler(config, eos_ids=(2,), tokenizer=tokenizer, max_batch=4)
  spec = _spec(task, max_turns=2)
  problems = [task.problem(seed=0, index=i, difficulty=1) for i in range(2)]

  class Scripted(CodeFeedback):   # submits a wrong program, then the reference
    def step(self, action, finish):
      self.k = getattr(self, "k", 0) + 1
      code = "def solve(xs):\n  return [0]" if self.k == 1 else self.problem.reference
      return super().step(_block(code), finish)

  make = lambda: Scripted(task, failing_tests=1, error_lines=4, max_chars=400)  # noqa: E731
  scripted = dataclasses.replace(spec, make=make)
  sp = SamplingParams(temperature=1.0, max_new_tokens=8)
  random_eps = [s for g in episodes_lib.run(sampler, params, tokenizer, spec, problems, sp,
                                            n=2, seed=0) for s in g]
  scripted_eps = [s for g in episodes_lib.run(sampler, params, tokenizer, scripted,
                                              problems, sp, n=1, seed=0) for s in g]
  for s in random_eps:
    assert len(s.turns) == 2 and s.episode_end == "max_turns" and s.reward == 0.0
    assert s.turns[0]["status"] == "invalid"
  for s in scripted_eps:
    assert [t["status"] for t in s.turns] == ["ok", "ok"] and s.episode_end == "done"
    assert s.reward == 1.0 and "returned [0]; expected" in s.turns[0]["observation"]
  for s in random_eps + scripted_eps:
    t = s.turns[0]
    ids = t["observation_tokens"]
    assert ids == encode_reply(tokenizer, t["observation"], t["finish_reason"] == "eos")
    assert "<|im_start|>user\n" in tokenizer.decode(ids)
    start = len(t["tokens"])
    assert s.completion_tokens[start:start + len(ids)] == ids
    assert s.action_mask == [1] * start + [0] * len(ids) + [1] * len(s.turns[1]["tokens"])
  metrics = episodes_lib.process_metrics(scripted_eps)
  assert metrics["episode_success"] == 1.0 and metrics["episode_turns"] == 2
