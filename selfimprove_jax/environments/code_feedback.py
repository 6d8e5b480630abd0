"""Multi-turn code with execution feedback (RLEF proper, Gehring et al. 2024).

The model is given a `code:*` or `code_jsonl:` problem. Every model turn is a
submission: its program is run against the problem's tests in the sandbox by the task's
own verifier (tasks/code_task.py `verify_code`: the same extraction, program assembly,
limits and comparison as a single-turn sample). The step's reward is the fraction of
tests passed; all passing ends the episode. Otherwise the next user turn shows what
failed (the first failing test's call, what it returned and what was expected, or the
last lines of the error, or the limit the program hit), bounded in length, and asks for
a corrected program. The episode's reward is its last submission's fraction, so an
episode that fixes its program within max_turns scores as if it had been right at once.

A turn with no program in it is an invalid action (reward 0). A submission that hits a
sandbox limit gets the sandbox's status ('timeout', 'memory', 'error', ...), its detail
in the record, and an observation that tells the model what happened.

Failing tests are shown with their expected values, hidden tests included (as the
`execution_feedback` refinement does). A program that hard-codes the values it was shown
passes only the tests revealed to it: the prompt's examples and `failing_tests` per
earlier turn (code:* 2 + 1 x (R - 1) of 8 by default), so it cannot reach reward 1.

Options (`environment.options`): the OPTIONS table below. Why its defaults: 4
error_lines show the source line and caret of a SyntaxError, or the frame and message
of a traceback; 400 max_chars are ~120 tokens of the episode's max_tokens.
"""

from __future__ import annotations

from selfimprove_jax.environments.base import Environment, Option, Spec, Step, read_options
from selfimprove_jax.errors import UserError
from selfimprove_jax.tasks.code_task import INSTRUCTION, CodeJsonlTask, CodeTask, verify_code

OPTIONS = {
    "failing_tests": Option(int, 1, "failing tests shown per turn", low=1),
    "error_lines": Option(int, 4, "lines of the end of an error's output shown", low=1),
    "max_chars": Option(int, 400, "the feedback (failing tests or error) cut to this "
                        "many characters", low=40),
}

ASK = ("Write the corrected complete function `{name}` in a ```python code block "
       "(no input(), no printing).")
# how a sandbox status reads to the model (others: 'was stopped (<status>)')
_STOPPED = {
    "error": "failed before it returned its results",
    "timeout": "did not finish within the time limit",
    "memory": "ran out of memory",
    "output_limit": "printed more output than allowed",
    "killed": "was killed",
}


def _own_lines(detail: str) -> str:
  """An error's lines from the program's own first frame on: the sandbox harness's
  frame above it (judge.py's `exec`) tells the model nothing."""
  lines = detail.split("\n")
  first = next((i for i, line in enumerate(lines) if 'File "<solution>"' in line), 0)
  return "\n".join(lines[first:])


def _clip(text: str, limit: int) -> str:
  text = text.strip()
  return text if len(text) <= limit else text[:limit - 4].rstrip() + " ..."


class CodeFeedback(Environment):
  """One episode: submissions of one problem's program, answered with what failed."""

  def __init__(self, task, failing_tests: int, error_lines: int, max_chars: int):
    self.task = task
    self.failing_tests, self.error_lines, self.max_chars = failing_tests, error_lines, max_chars
    self.problem = None

  def reset(self, problem) -> str:
    self.problem = problem
    return problem.prompt

  def step(self, action: str, finish: str) -> Step:
    p = self.problem
    entry = p.metadata["entry_point"]
    cut = (" Your reply was cut off at its token limit: keep the program short."
           if finish == "length" else "")
    if self.task.extract_answer(action, p) is None:
      return Step(observation=f"Your reply has no Python program to run.{cut} "
                  f"{INSTRUCTION.format(name=entry)}", status="invalid",
                  detail="no Python code found in the reply")
    v = verify_code(self.task, [p], [action], self.task.limits,
                    failures=self.failing_tests, error_lines=self.error_lines)[0]
    if v.reward >= 1.0:
      return Step(reward=1.0, done=True, status=v.status, detail=v.detail, tool_call=True)
    return Step(observation=f"{self._said(v)}\n\n{ASK.format(name=entry)}{cut}",
                reward=float(v.reward), status=v.status, detail=v.detail, tool_call=True)

  def _said(self, v) -> str:
    """What failed, in words: the tests passed and the failing ones, or why the program
    did not run to its end."""
    feedback = _clip(_own_lines(v.detail), self.max_chars)
    if v.status != "ok":
      return f"Your program {_STOPPED.get(v.status, f'was stopped ({v.status})')}:\n{feedback}"
    meta = self.problem.metadata
    n = len(meta.get("tests") or meta.get("asserts") or ())
    passed = f"Your program passed {round(v.reward * n)} of {n} tests"
    if feedback.startswith((f"{meta['entry_point']}(", "failed:")):   # failing tests
      return f"{passed}. Failing:\n{feedback}"
    return f"{passed}: {feedback}"   # e.g. the function is not defined


def spec(task, options: dict, max_turns: int, max_tokens: int) -> Spec:
  """The code_feedback environment for a `code:*` or `code_jsonl:` task."""
  if not isinstance(task, (CodeTask, CodeJsonlTask)):
    raise UserError(f"plays code:* and code_jsonl: tasks, not "
                    f"{getattr(task, 'name', type(task).__name__)!r}")
  opts = read_options(OPTIONS, options)
  return Spec(name="code_feedback", make=lambda: CodeFeedback(task, **opts),
              max_turns=max_turns, max_tokens=max_tokens, observation="user",
              optimal_turns=lambda problem: 1)
