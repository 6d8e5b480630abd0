"""`countdown`: reach a target from given numbers with + - * / (the TinyZero RL task).

Prompt: "Using the numbers [12, 3, 7], create an expression that equals 29. ..." and
the declared answer is the expression on the line after `####` (an `<answer>` or
`\\boxed{}` block is also accepted). Without any marker the last non-empty line is
used. Within the chosen text, "=" splits candidates ("12 * 3 - 7 = 29" -> "12 * 3 - 7")
and the valid candidate with the most numbers wins.

The verifier never evaluates code: the expression goes through the `ast` whitelist of
`expressions.py`, every number it uses must come from the given list (each at most as
often as it is given), and its exact rational value must equal the target. Intermediate
fractions are allowed (6 / 4 * 2 = 3), and so are unary signs. Reward is 1 or 0.

Generation guarantees solvability: the numbers are combined in a random order with
random operations (subtraction only when it stays positive, division only when exact)
and the result becomes the target; that expression is stored as the reference.

Difficulty level L uses L + 1 numbers (levels 1-5: 2 to 6 numbers).
"""

from __future__ import annotations

import fractions
import random
import re
from typing import Optional

from selfimprove_jax.errors import UserError
from selfimprove_jax.tasks import answers, expressions
from selfimprove_jax.tasks import problem as problem_lib
from selfimprove_jax.tasks.problem import Problem

MIN_LEVEL, MAX_LEVEL = 1, 5
_PROMPT = re.compile(r"numbers\s*\[([\d,\s]+)\].*?equals\s+(-?\d+)", re.IGNORECASE | re.DOTALL)
_SEGMENT = re.compile(r"[\d\s+\-*/()\u00d7\u00f7\u2212.]+")
# Beyond this many numbers the solver is too slow for a validity check; such prompts are
# refused.
MAX_SOLVER_NUMBERS = 6


def format_prompt(numbers: list[int], target: int) -> str:
  """The task's prompt for a list of numbers and a target."""
  return (f"Using the numbers {list(numbers)}, create an expression that equals {target}. "
          "You may use +, -, *, / and parentheses, and each number at most once. "
          "Write the final expression after '####'.")


def solve(numbers: list[int], target: int) -> Optional[str]:
  """An expression reaching `target` with each number used at most once, or None.

  Searches the classic countdown rules (non-negative integer intermediate values,
  exact division), which is what generation uses, so every generated puzzle is found;
  the verifier is more lenient (fractions, negatives), so a None here can rarely be a
  puzzle that only a fractional route solves. Dynamic programming over subsets: the
  values reachable from each subset, built from pairs of disjoint smaller subsets
  (6 numbers take well under a second)."""
  n = len(numbers)
  reach: dict[int, dict[int, str]] = {}
  for i, x in enumerate(numbers):
    reach[1 << i] = {x: str(x)}
    if x == target:
      return str(x)
  for mask in sorted(range(1, 1 << n), key=lambda m: bin(m).count("1")):
    if mask in reach:
      continue
    values: dict[int, str] = {}
    sub = (mask - 1) & mask
    while sub:
      rest = mask ^ sub
      if sub < rest:  # each unordered split once; the ops below cover both orders
        for a, ea in reach[sub].items():
          for b, eb in reach[rest].items():
            hi, lo, ehi, elo = (a, b, ea, eb) if a >= b else (b, a, eb, ea)
            values.setdefault(a + b, f"({ea} + {eb})")
            values.setdefault(a * b, f"({ea} * {eb})")
            values.setdefault(hi - lo, f"({ehi} - {elo})")
            if lo and hi % lo == 0:
              values.setdefault(hi // lo, f"({ehi} / {elo})")
      sub = (sub - 1) & mask
    if target in values:
      return _strip_outer(values[target])
    reach[mask] = values
  return None


def _strip_outer(e: str) -> str:
  """Drop one pair of parentheses around the whole expression, if it has one."""
  if e.startswith("(") and e.endswith(")"):
    depth = 0
    for i, c in enumerate(e):
      depth += c == "("
      depth -= c == ")"
      if depth == 0 and i < len(e) - 1:
        return e
    return e[1:-1]
  return e


def _uses_allowed(used: list[int], numbers: list[int]) -> bool:
  pool = list(numbers)
  for x in used:
    if x not in pool:
      return False
    pool.remove(x)
  return True


class CountdownTask(problem_lib.ProceduralSplits):
  """Procedural countdown puzzles with a difficulty knob (count of numbers)."""

  procedural = True
  answer_format = "the expression after '####' (an <answer> or \\boxed{} block also counts)"

  def __init__(self, difficulty: int = 2, max_number: int = 50, max_target: int = 1000,
               heldout_fraction: float = problem_lib.DEFAULT_HELDOUT_FRACTION):
    self.name = "countdown"
    self.difficulty_range = (MIN_LEVEL, MAX_LEVEL)
    if max_number < 2 or max_target < 2:
      raise UserError(f"task countdown: max_number and max_target must be >= 2, got "
                      f"{max_number} and {max_target}")
    self.max_number, self.max_target = int(max_number), int(max_target)
    self.default_difficulty = self._level(difficulty)
    self.heldout_fraction = problem_lib.check_fraction(heldout_fraction, self.name)

  def _level(self, difficulty: Optional[int]) -> int:
    if difficulty is None:
      return self.default_difficulty
    if not MIN_LEVEL <= int(difficulty) <= MAX_LEVEL:
      raise UserError(f"task countdown: difficulty must be in {self.difficulty_range}, "
                      f"got {difficulty}")
    return int(difficulty)

  def _generate(self, level: int, rng: random.Random) -> Problem:
    count = level + 1
    for _ in range(1000):
      numbers = [rng.randint(1, self.max_number) for _ in range(count)]
      pool = [(fractions.Fraction(n), str(n)) for n in numbers]
      rng.shuffle(pool)
      while len(pool) > 1:
        (a, ea), (b, eb) = pool.pop(), pool.pop()
        op = rng.choice("+-*/")
        if op == "-" and a <= b:
          (a, ea), (b, eb) = (b, eb), (a, ea)
        if op == "-" and a == b:
          op = "+"
        if op == "/" and (b in (0, 1) or a % b != 0):
          op = "*" if a * b <= self.max_target else "+"
        v = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if op == "/" else None}[op]
        pool.append((v, f"({ea} {op} {eb})"))
      target, expr = pool[0]
      if target.denominator == 1 and 1 <= target <= self.max_target and target not in numbers:
        prompt = format_prompt(numbers, int(target))
        return problem_lib.make_problem(
            prompt, _strip_outer(expr), level,
            {"numbers": numbers, "target": int(target)})
    raise UserError(f"task countdown: no puzzle with targets up to {self.max_target} found "
                    f"at difficulty {level}; raise max_target")

  def extract_answer(self, completion: str,
                     problem: Optional[Problem] = None) -> Optional[str]:
    """The expression the completion gives (see the module docstring), or None."""
    if not isinstance(completion, str):
      return None
    text = answers.first_lines(answers.extract_marked(completion))
    if text is None:
      lines = [ln for ln in completion.splitlines() if ln.strip()]
      if not lines:
        return None
      text = lines[-1]
    best = None
    for segment in _SEGMENT.findall(text[:10 * expressions.MAX_EXPRESSION_CHARS]):
      parsed = expressions.try_evaluate(segment)
      if parsed is not None and (best is None or len(parsed[1]) >= best[0]):
        best = (len(parsed[1]), expressions.normalize_expression(segment))
    return None if best is None else best[1]

  def score(self, problem: Problem, completion: str) -> float:
    """1.0 when the expression uses only the given numbers and equals the target."""
    numbers, target = problem.metadata.get("numbers"), problem.metadata.get("target")
    if numbers is None or target is None:
      parsed = _parse_prompt(problem.prompt)
      if parsed is None:
        return 0.0
      numbers, target = parsed
    expr = self.extract_answer(completion)
    result = None if expr is None else expressions.try_evaluate(expr)
    if result is None:
      return 0.0
    value, used = result
    return float(value == target and _uses_allowed(used, list(numbers)))

  def parse_problem(self, prompt: str, canonical: bool = False) -> Optional[Problem]:
    """A solvable `Problem` from a prompt in this task's format, or None; `canonical`:
    with the prompt rewritten as the task writes its own (`format_prompt`)."""
    parsed = _parse_prompt(prompt)
    if parsed is None:
      return None
    numbers, target = parsed
    solution = solve(numbers, target)
    if solution is None:
      return None
    level = min(max(len(numbers) - 1, MIN_LEVEL), MAX_LEVEL)
    if canonical:
      prompt = format_prompt(numbers, target)
    return problem_lib.make_problem(prompt, solution, level,
                                    {"numbers": numbers, "target": target})

  def can_solve(self, prompt: str) -> Optional[str]:
    """A solution expression for a prompt in this task's format, or None."""
    p = self.parse_problem(prompt)
    return None if p is None else p.reference


def _parse_prompt(prompt: str) -> Optional[tuple[list[int], int]]:
  """(numbers, target) from a prompt in the task's format, or None."""
  if not isinstance(prompt, str):
    return None
  m = _PROMPT.search(prompt)
  if m is None:
    return None
  numbers = [int(x) for x in re.findall(r"\d+", m.group(1))]
  if not 2 <= len(numbers) <= MAX_SOLVER_NUMBERS:
    return None
  return numbers, int(m.group(2))
