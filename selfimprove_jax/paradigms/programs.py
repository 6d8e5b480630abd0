"""Self-play's code family: a proposal is a program and an input, its true output comes
from running it in the sandbox, and the solver predicts that output (Absolute Zero's
deduction task, Zhao et al. 2025).

Format (what the proposer's examples show, from the `code:` task's own reference
programs and test inputs):

    ```python
    def solve(xs):
      ...
      return xs
    ```
    Call: solve([3, 1, 2])

A proposal is valid when the program defines `solve`, the call's arguments are Python
literals, and two runs of the call in the sandbox (under `LIMITS`) both return the same
value (deterministic, no error, no timeout) whose repr is at most `MAX_OUTPUT_CHARS`;
the program itself is at most `MAX_PROGRAM_CHARS`. The solver sees the program and the
call and answers the value after '####'; `OutputPrediction` scores it by value.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Optional, Sequence

from selfimprove_jax import sandbox
from selfimprove_jax.sandbox.worker import normalize
from selfimprove_jax.tasks import answers
from selfimprove_jax.tasks.code_task import ENTRY_POINT, extract_code
from selfimprove_jax.tasks.problem import Problem, make_problem

LIMITS = sandbox.Limits(timeout_s=2.0, memory_mb=256)
MAX_PROGRAM_CHARS = 1200
MAX_OUTPUT_CHARS = 200
_CALL = re.compile(rf"^\s*Call:\s*{ENTRY_POINT}\((.*)\)\s*$", re.MULTILINE)
SOLVER_PROMPT = ("What does this Python function return?\n\n```python\n{code}```\n\n"
                 "Call: {name}({args})\n\nWrite the returned value as a Python literal "
                 "after '####'.")


def show(program: str, args: Sequence) -> str:
  """A program and its call in the proposal format."""
  call = ", ".join(repr(a) for a in args)
  return f"```python\n{program.strip()}\n```\nCall: {ENTRY_POINT}({call})"


def seeds(problems: Sequence[Problem]) -> list[str]:
  """The proposer's examples: each `code:` problem's reference program with its first
  test input."""
  return [show(p.reference, p.metadata["tests"][0]["input"]) for p in problems
          if p.metadata.get("tests")]


def parse(text: Optional[str]) -> Optional[tuple[str, list]]:
  """(program, argument list) of a proposal, or None when it is not in the format."""
  if not isinstance(text, str):
    return None
  calls = _CALL.findall(text)
  code = extract_code(text.split("Call:")[0], ENTRY_POINT)
  if not calls or code is None or f"def {ENTRY_POINT}" not in code:
    return None
  if len(code) > MAX_PROGRAM_CHARS or len(calls[-1]) > MAX_OUTPUT_CHARS:
    return None
  try:   # JSON values only: what the sandbox's call job passes in unchanged
    args = json.loads(json.dumps(ast.literal_eval(f"[{calls[-1]}]")))
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return None
  return code, args


def clean(text) -> Optional[str]:
  """The proposal in canonical form (program block + call line), or None."""
  parsed = parse(text)
  return show(*parsed) if parsed else None


def execute_proposals(proposals: Sequence[str]) -> list[tuple[str, Optional[Problem]]]:
  """(verdict, solver problem or None) per proposal in the canonical form: 'invalid'
  (not in the format), 'error' / 'timeout' / ... (how the sandbox run ended),
  'nondeterministic', 'too_long', else 'valid' with the true output as reference."""
  parsed = [parse(t) for t in proposals]
  jobs = [{"source": p[0], "entry_point": ENTRY_POINT,
           "inputs": [p[1], p[1]]}
          for p in parsed if p is not None]
  results = iter(sandbox.run_jobs("call_tests", jobs, LIMITS) if jobs else [])
  return [("invalid", None) if p is None else _verdict(next(results), *p) for p in parsed]


def _verdict(r: sandbox.Result, code: str, args: list) -> tuple[str, Optional[Problem]]:
  if not r.ok:
    return r.status, None
  got = sandbox.CallTestsValue.from_value(r.value)
  if got.missing is not None or not all(c.returned for c in got.calls):
    return "error", None
  first, second = (c.value for c in got.calls)
  if first != second:
    return "nondeterministic", None
  value = _python(first)
  if value is None or len(value) > MAX_OUTPUT_CHARS:
    return "too_long", None
  prompt = SOLVER_PROMPT.format(code=code, name=ENTRY_POINT,
                                args=", ".join(repr(a) for a in args))
  return "valid", make_problem(prompt, value, 0, {"program": code, "args": args})


def _python(value) -> Optional[str]:
  """The Python literal of a normalized value (None: not a plain literal)."""
  if isinstance(value, dict) and set(value) in ({"repr"}, {"float"}):
    return None
  return repr(value)


class OutputPrediction:
  """The solver's verifier: the marked answer read as a Python literal equals the true
  output (by value, after the sandbox's normalisation); never runs the answer."""

  name = "program_output"
  procedural = False

  def extract_answer(self, completion: str, problem=None) -> Optional[str]:
    return answers.first_lines(answers.extract_marked(completion))

  def score(self, problem: Problem, completion: str) -> float:
    answer = self.extract_answer(completion)
    if answer is None or len(answer) > 10 * MAX_OUTPUT_CHARS:
      return 0.0
    try:
      got = normalize(ast.literal_eval(answer))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
      return 0.0
    return float(got == normalize(ast.literal_eval(problem.reference)))

  def is_heldout(self, pid: str) -> bool:
    return False
