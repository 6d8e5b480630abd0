"""Tasks with verifiers: where prompts come from and how completions are scored.

`get_task(spec, **options)` builds one by name:
  arithmetic                  add/sub/mul of n-digit integers, difficulty levels 1-8
  countdown                   reach a target from numbers with + - * /, levels 1-5
  guess_number                find a hidden number in [1, N] told higher / lower, a
                              game for the guess_number environment; N by level 1-7
  reasoning_gym:<generator>   any reasoning-gym generator, scored by its score_answer
  jsonl:<path>                a user's {"prompt", "answer"} lines, exact or numeric match
  code:<family>               write a Python function (list_ops, string_ops); the
                              sandbox runs hidden tests, reward = fraction passed
  code_jsonl:<path>           a user's MBPP/HumanEval-style problems with their tests
The file tasks read public layouts as they are (GSM8K, MATH, MATH-500, chat prompts,
HumanEval, MBPP; .jsonl, .jsonl.gz, .parquet; options format=, prompt_field=,
answer_field=, test_path=): layouts.py.
Every task follows the `Task` protocol of `problem.py` (deterministic training streams,
a disjoint fixed held-out split, a declared answer extraction, `score` in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Optional, Sequence

from selfimprove_jax.errors import UserError
from selfimprove_jax.tasks.arithmetic import ArithmeticTask
from selfimprove_jax.tasks.code_task import CodeJsonlTask, CodeTask
from selfimprove_jax.tasks.countdown import CountdownTask
from selfimprove_jax.tasks.guess_number import GuessNumberTask
from selfimprove_jax.tasks.jsonl_task import JsonlTask
from selfimprove_jax.tasks.problem import Problem, Task, Verdict, make_problem, problem_id
from selfimprove_jax.tasks.reasoning_gym_task import ReasoningGymTask

# Plain task names -> constructors; prefixed specs ("family:argument") -> constructors
# taking the argument first.
TASKS: dict[str, Callable[..., Task]] = {
    "arithmetic": ArithmeticTask,
    "countdown": CountdownTask,
    "guess_number": GuessNumberTask,
}
TASK_FAMILIES: dict[str, Callable[..., Task]] = {
    "reasoning_gym": ReasoningGymTask,
    "jsonl": JsonlTask,
    "code": CodeTask,
    "code_jsonl": CodeJsonlTask,
}
_ARGUMENT = {"reasoning_gym": "generator", "code": "family"}


def _verify_here(task: Task, problems: Sequence[Problem],
                 completions: Sequence[str]) -> list[Verdict]:
  if hasattr(task, "verify_batch"):
    return list(task.verify_batch(list(problems), list(completions)))
  return [Verdict(float(task.score(p, c))) for p, c in zip(problems, completions)]


def verify(task: Task, problems: Sequence[Problem], completions: Sequence[str],
           truncated: Optional[Sequence[bool]] = None) -> list[Verdict]:
  """One Verdict per (problem, completion): the task's `verify_batch` where it has one
  (sandboxed verifiers check the whole batch in parallel), else its `score`.

  `truncated[i]`: completion i was cut off at its token budget (Sample.finish_reason
  'length'). A task that reads answers by the answers.py policy has `finished_part`,
  and such a completion is judged by what it finished stating (its closed marked
  answer, answers.finished_part), never by a fallback: its last number may be an
  operand it was restating when the budget ran out. Tasks without it (code: the tests
  judge the program) get the text as it is.

  In a run of several processes only process 0 verifies and the others receive its
  verdicts: a sandboxed check ends on a wall clock, and two hosts must never disagree
  on a reward (their selections, batches and decisions would differ). Every process
  therefore calls this at the same points, as it does all of the loop's steps."""
  cut = getattr(task, "finished_part", None)   # optional, like verify_batch
  if truncated is not None and cut is not None:
    completions = [cut(c) if t else c for c, t in zip(completions, truncated)]
  jax = sys.modules.get("jax")     # tasks never import jax; a run has already
  if jax is None or jax.process_count() == 1:
    return _verify_here(task, problems, completions)
  from selfimprove_jax.runtime import distributed
  mine = ([dataclasses.asdict(v) for v in _verify_here(task, problems, completions)]
          if distributed.is_primary() else None)
  return [Verdict(**v) for v in distributed.broadcast_json(mine)]


def task_specs() -> list[str]:
  """The accepted spec forms, for help texts and error messages."""
  return sorted(TASKS) + [f"{k}:<{_ARGUMENT.get(k, 'path')}>" for k in sorted(TASK_FAMILIES)]


def get_task(spec: str, **options: Any) -> Task:
  """The task named by `spec`, built with `options` (e.g. difficulty=2, operators="+-").

  Raises UserError for an unknown spec or option, listing what exists."""
  family, sep, argument = str(spec).partition(":")
  if not sep and family in TASKS:
    factory, args = TASKS[family], ()
  elif sep and family in TASK_FAMILIES and argument:
    factory, args = TASK_FAMILIES[family], (argument,)
  else:
    raise UserError(f"unknown task {spec!r}; available: {', '.join(task_specs())}")
  try:
    return factory(*args, **options)
  except TypeError as e:
    raise UserError(f"task {spec}: bad options {sorted(options)}: {e}") from None


__all__ = ["Problem", "Task", "Verdict", "get_task", "verify", "make_problem", "problem_id", "task_specs",
           "TASKS", "TASK_FAMILIES", "ArithmeticTask", "CodeJsonlTask", "CodeTask",
           "CountdownTask", "GuessNumberTask", "JsonlTask",
           "ReasoningGymTask"]
