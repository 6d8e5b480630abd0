"""The `python_tool` environment: scripted turns through `step` (answers, expression and
program calls, empty and unparseable calls), hostile tool calls stopped by the sandbox
with their status recorded and shown to the model, bad options as one-line errors, and
tool-call turns through the episode runner with a tiny random model (stop sequence,
observation ids masked out)."""

import dataclasses
import os

import pytest

from selfimprove_jax import tasks
from selfimprove_jax.environments import episodes as episodes_lib
from selfimprove_jax.environments import make, python_tool
from selfimprove_jax.environments.python_tool import CLOSE, OPEN
from selfimprove_jax.errors import UserError
from selfimprove_jax.model import get_preset, init_params
from selfimprove_jax.sampling import Sampler, SamplingParams, encode_reply, encode_text
from selfimprove_jax.weights import tokenizer as tokenizer_lib

TASK = tasks.get_task("arithmetic", difficulty=6, operators="+-*")
PROBLEM = TASK.train_problems(0, 1)[0]


def _env(**options):
  spec = python_tool.spec(TASK, options, max_turns=4, max_tokens=256)
  env = spec.make()
  first = env.reset(PROBLEM)
  return spec, env, first


def _call(code, **options):
  return _env(**options)[1].step(f"Let me run it.\n{OPEN}\n{code}\n", "stop")


def test_first_observation_and_spec():
  spec, _, first = _env()
  assert first.startswith(PROBLEM.prompt) and OPEN in first
  assert spec.stop_sequences == (CLOSE,) and spec.observation == "inline"
  assert _env(few_shot=False)[2].count(OPEN) < first.count(OPEN)


def test_answers_are_graded_by_the_task():
  _, env, _ = _env()
  right = env.step(f"The answer is {PROBLEM.reference}.", "eos")
  assert (right.reward, right.done, right.tool_call, right.status) == (1.0, True, False, "ok")
  wrong = env.step(f"The answer is {int(PROBLEM.reference) + 1}.", "eos")
  assert (wrong.reward, wrong.done) == (0.0, True)


def test_expression_and_program_calls():
  s = _call(PROBLEM.metadata["expression"])
  assert (s.status, s.reward, s.done, s.tool_call) == ("ok", 0.0, False, True)
  assert s.observation == python_tool.OUTPUT.format(PROBLEM.reference)
  s = _call("x = 3\nfor i in range(3):\n  print(i * x)")
  assert s.status == "ok" and s.observation == python_tool.OUTPUT.format("0\n3\n6")
  s = _call("x = 5")                      # a program that prints nothing
  assert s.status == "ok" and s.observation == python_tool.OUTPUT.format("")


def test_empty_and_unparseable_calls_are_invalid():
  _, env, _ = _env()
  for action in (f"{OPEN}\n  \n", "no code at all"):
    s = env.step(action, "stop")
    assert (s.status, s.tool_call, s.done) == ("invalid", False, False)
    assert "no code" in s.detail and "Error" in s.observation
  s = _call("1 +* (")
  assert s.status == "invalid" and s.tool_call and "SyntaxError" in s.detail
  assert "SyntaxError" in s.observation


@pytest.mark.parametrize("code, status, words", [
    ("while True:\n  pass", "timeout", "limit"),
    ("x = bytearray(10 ** 10)", "memory", "memory"),
    ("x = [0] * (10 ** 9)", "memory", "memory"),
    ("print('a' * 10 ** 6)", "output_limit", "output"),
    ("1 / 0", "error", "ZeroDivisionError"),
    ("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)", "error",
     "OSError"),
])
def test_hostile_calls_are_stopped_and_reported(code, status, words):
  s = _call(code, timeout_s=1.0)
  assert (s.status, s.tool_call, s.done, s.reward) == (status, True, False, 0.0)
  assert words in s.detail and words in s.observation and "Error" in s.observation


def test_output_is_bounded_and_writes_stay_in_the_scratch(tmp_path):
  s = _call("'7' * 1000", max_output_chars=50)
  assert s.status == "ok" and s.observation == python_tool.OUTPUT.format("7" * 50 + " ...")
  outside = tmp_path / "pwned.txt"
  s = _call(f"open({str(outside)!r}, 'w').write('x')")
  assert s.status == "error" and "Error" in s.detail and not outside.exists()
  s = _call("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())")
  assert s.status == "ok" and s.observation == python_tool.OUTPUT.format("ok")
  assert not os.path.exists("scratch.txt")


@pytest.mark.parametrize("options, fragment", [
    ({"timeout": 1}, "environment.options.timeout=1 is not an option; the options are "
     "timeout_s, memory_mb, max_output_chars, output_bytes, observation, few_shot"),
    ({"timeout_s": 0}, "environment.options.timeout_s=0 must be a number in [0.1, 30.0]"),
    ({"timeout_s": float("nan")}, "environment.options.timeout_s=nan must be a number in"),
    ({"timeout_s": "fast"}, "environment.options.timeout_s='fast' must be a number in"),
    ({"memory_mb": 1.5}, "environment.options.memory_mb=1.5 must be an integer in [16, 4096]"),
    ({"memory_mb": True}, "environment.options.memory_mb=True must be an integer in"),
    ({"max_output_chars": 0}, "environment.options.max_output_chars=0 must be an integer in"),
    ({"observation": "system"},
     "environment.options.observation='system' must be one of inline, user"),
    ({"few_shot": 1}, "environment.options.few_shot=1 must be True or False"),
])
def test_bad_options_are_one_line_errors(options, fragment):
  with pytest.raises(UserError) as e:
    make("python_tool", TASK, max_turns=2, max_tokens=128, options=options)
  message = str(e.value)
  assert fragment in message and "python_tool" in message and "\n" not in message


def test_other_tasks_are_refused():
  with pytest.raises(UserError, match="plays the arithmetic task, not 'countdown'"):
    make("python_tool", tasks.get_task("countdown"), max_turns=2, max_tokens=128,
         options={})


class _Calls(python_tool.PythonTool):
  """Every turn the random model ends at a stop sequence becomes a real tool call, so
  the episode runs tool turns without a trained model."""

  def step(self, action, finish):
    if finish == "stop":
      action = f"{OPEN}\nprint(6 * 7)\n"
    return super().step(action, finish)


@pytest.mark.parametrize("observation", ["inline", "user"])
def test_tool_turns_through_episodes(observation):
  config = get_preset("tiny")
  params = dict(init_params(config, seed=3))
  params["embedding"] = params["embedding"] * 4.0   # peaked logits: short turns
  tokenizer = tokenizer_lib.from_gguf(tokenizer_lib.smollm2_gguf_path())
  sampler = Sampler(config, eos_ids=(2,), tokenizer=tokenizer, max_batch=4)
  spec = python_tool.spec(TASK, {"observation": observation, "few_shot": False},
                          max_turns=3, max_tokens=256)
  make_env = spec.make
  # a random model never writes the closing fence: half the vocabulary stops its turn
  spec = dataclasses.replace(
      spec, make=lambda: _Calls(TASK, make_env().limits, make_env().opts),
      stop_sequences=spec.stop_sequences + tuple((i,) for i in range(200, 49152, 2)))
  sp = SamplingParams(temperature=1.0, max_new_tokens=8)
  groups = episodes_lib.run(sampler, params, tokenizer, spec, TASK.train_problems(0, 2),
                            sp, n=2, seed=0)
  samples = [s for g in groups for s in g]
  tool_turns = [t for s in samples for t in s.turns if t["finish_reason"] == "stop"]
  assert any(t["observation_tokens"] for t in tool_turns), "no tool output was appended"
  for s in samples:
    ids, mask = [], []
    for t in s.turns:
      ids += t["tokens"] + t["observation_tokens"]
      mask += [1] * len(t["tokens"]) + [0] * len(t["observation_tokens"])
      if t["finish_reason"] == "stop" and t["observation_tokens"]:
        assert t["tool_call"] and t["status"] == "ok" and t["reward"] == 0.0
        assert t["observation"] == python_tool.OUTPUT.format("42")
        want = (encode_text(tokenizer, t["observation"]) if observation == "inline" else
                encode_reply(tokenizer, t["observation"], closed=False))
        assert t["observation_tokens"] == want
    assert s.completion_tokens == ids and s.action_mask == mask
    assert s.episode_end in ("done", "max_turns", "max_tokens")
  metrics = episodes_lib.process_metrics(samples)
  assert metrics["episode_tool_calls"] > 0 and metrics["episode_tool_errors"] == 0
