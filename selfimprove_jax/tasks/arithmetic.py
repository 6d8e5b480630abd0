"""`arithmetic`: add, subtract and multiply n-digit integers.

Prompt: "What is 23 + 45? Answer with just the number." -- the wording a new user would
try on a small instruct model (SmolLM2-135M-Instruct gets about 14% on two-digit
addition with it). Declared answer: the final number of the reply; a `####`,
`<answer>` or `\\boxed{}` marker takes precedence (see `answers.py`).

Difficulty levels (one int; each is (operand digits, operations)):

  level  digits  operations   example (operators "+-*")
    1      1        1         7 * 8
    2      2        1         23 + 45          <- quickstart, with operators="+-"
    3      3        1         512 - 128
    4      2        2         12 + 34 * 5
    5      3        2         123 - 456 + 789
    6      4        2         1234 * 5678 - 42
    7      4        3
    8      5        3

A d-digit operand is drawn uniformly from [10^(d-1), 10^d - 1] ([0, 9] for d = 1). With
one operation a subtraction is ordered so the result is never negative (negative results
roughly halve a small model's accuracy and are left to multi-operation levels, which
follow the usual precedence and may go below zero).
"""

from __future__ import annotations

import random
import re
from typing import Optional

from selfimprove_jax.errors import UserError
from selfimprove_jax.tasks import answers, expressions
from selfimprove_jax.tasks import problem as problem_lib
from selfimprove_jax.tasks.problem import Problem

LEVELS = {1: (1, 1), 2: (2, 1), 3: (3, 1), 4: (2, 2), 5: (3, 2), 6: (4, 2), 7: (4, 3),
          8: (5, 3)}
_QUESTION = re.compile(r"what is\s+(.+?)\s*\?", re.IGNORECASE | re.DOTALL)


def format_prompt(expression: str) -> str:
  """The task's prompt for an expression."""
  return f"What is {expression}? Answer with just the number."


def level_of(digits: int, operations: int) -> int:
  """Smallest level whose digits and operations cover the given ones (max level if none)."""
  for level, (d, o) in sorted(LEVELS.items()):
    if digits <= d and operations <= o:
      return level
  return max(LEVELS)


class ArithmeticTask(problem_lib.ProceduralSplits):
  """Procedural integer arithmetic with a difficulty knob (see the module docstring)."""

  procedural = True
  answer_format = ("the final number of the reply; a '####', <answer> or \\boxed{} marker "
                   "takes precedence")

  def __init__(self, difficulty: int = 2, operators: str = "+-*",
               heldout_fraction: float = problem_lib.DEFAULT_HELDOUT_FRACTION):
    self.name = "arithmetic"
    self.difficulty_range = (min(LEVELS), max(LEVELS))
    if not operators or set(operators) - set("+-*"):
      raise UserError(f"task arithmetic: operators must be a non-empty subset of '+-*', "
                      f"got {operators!r}")
    self.operators = "".join(sorted(set(operators), key="+-*".index))
    self.default_difficulty = self._level(difficulty)
    self.heldout_fraction = problem_lib.check_fraction(heldout_fraction, self.name)

  def _level(self, difficulty: Optional[int]) -> int:
    if difficulty is None:
      return self.default_difficulty
    if int(difficulty) not in LEVELS:
      raise UserError(f"task arithmetic: difficulty must be in {self.difficulty_range}, "
                      f"got {difficulty}")
    return int(difficulty)

  def _generate(self, level: int, rng: random.Random) -> Problem:
    digits, operations = LEVELS[level]
    lo, hi = (0, 9) if digits == 1 else (10 ** (digits - 1), 10 ** digits - 1)
    operands = [rng.randint(lo, hi) for _ in range(operations + 1)]
    ops = [rng.choice(self.operators) for _ in range(operations)]
    if operations == 1 and ops[0] == "-" and operands[0] < operands[1]:
      operands.reverse()
    text = str(operands[0])
    for op, x in zip(ops, operands[1:]):
      text += f" {op} {x}"
    value, _ = expressions.evaluate(text)
    prompt = format_prompt(text)
    return problem_lib.make_problem(prompt, expressions.format_value(value), level,
                                    {"expression": text})

  # a reply cut off at its token budget states only its closed marked answer (tasks.verify)
  finished_part = staticmethod(answers.finished_part)

  def extract_answer(self, completion: str,
                     problem: Optional[Problem] = None) -> Optional[str]:
    """Marked answer, else the last number in the completion."""
    return answers.extract_numeric(completion)

  def score(self, problem: Problem, completion: str) -> float:
    """1.0 when the extracted number equals the reference, else 0.0."""
    return float(answers.numbers_equal(self.extract_answer(completion), problem.reference))

  def parse_problem(self, prompt: str, canonical: bool = False) -> Optional[Problem]:
    """A `Problem` from a prompt in this task's format ("What is <expr>?"), or None;
    `canonical`: with the prompt rewritten as the task writes its own."""
    if not isinstance(prompt, str):
      return None
    m = _QUESTION.search(prompt)
    if m is None:
      return None
    text = m.group(1)
    if set(re.sub(r"[\d\s]", "", text)) - set(self.operators):
      return None  # operators this task was not asked to train on, or words
    parsed = expressions.try_evaluate(text)
    if parsed is None or len(parsed[1]) < 2:
      return None
    value, used = parsed
    digits = max(len(str(abs(x))) for x in used)
    level = level_of(digits, len(used) - 1)
    expression = " ".join(text.split())
    if canonical:
      prompt = format_prompt(expression)
    return problem_lib.make_problem(prompt, expressions.format_value(value), level,
                                    {"expression": expression})

  def can_solve(self, prompt: str) -> Optional[str]:
    """Reference answer of a "What is <expr>?" prompt, or None when it does not parse."""
    p = self.parse_problem(prompt)
    return None if p is None else p.reference
