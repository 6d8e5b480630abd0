"""Answer extraction and matching shared by every task.

The extraction policy, in order of preference (the first that finds something wins):
  0. reasoning is dropped first: the text after the last `</think>` (Qwen3 and other
     reasoning models think inside `<think>...</think>`); a `<think>` never closed (a
     reply cut off while thinking) states no answer at all;
  1. the declared marker: the text after the last `####` (to the end of the reply; tasks
     with one-line answers keep its first line, see `first_lines`);
  2. the last `<answer>...</answer>` block (reasoning-gym's own convention);
  3. the last `\\boxed{...}` (the common math convention);
  4. numeric tasks only, a reply without a marker (`fallback_number`):
     a. a final statement: the last "the answer is X" / "answer: X" / "result is X" /
        "solution = X" states X, read whole (to the end of its clause). It counts only
        when it states a plain number equal to the reply's last number: "The result is
        24 because 428 = 24 * 4 = 2" states 24 and ends on 2, so it has no answer;
     b. no statement: the reply's last number, read whole: a number that is part of an
        expression (an exponent, a root, a fraction's numerator or denominator, a
        coefficient of a variable or of \\pi) is not the reply's answer, so none.
Small instruct models often answer "23 + 45 = 68" or "The answer is 68." without any
marker, so the fallback turns a right answer in the wrong format into reward instead
of noise; it cannot be gamed by listing numbers because only the last one counts, and a
reply that states one number and ends on another is refused.

A reply cut off at its token budget (finish_reason 'length') states only what it
finished (`finished_part`): its last closed marked answer (`\\boxed{..}` with its brace,
`<answer>..</answer>`, a `####` answer whose line ended). No fallback reads it: its last
number may be an operand it was restating when the budget ran out. `tasks.verify`
applies this to the tasks that extract answers by this policy.

Numbers are read tolerantly: thousands commas ("1,234"), surrounding whitespace, a
leading "+" or "$", a trailing "." and the Unicode minus are accepted; "3/4" is a
fraction. Numeric comparison is exact on rationals (floats with a 1e-9 relative slack).
Which checker a reference gets (this exact numeric one, text, or math-verify for LaTeX)
is decided in one place: `math_check.checker_for`.
"""

from __future__ import annotations

import fractions
import re
from typing import Optional

_ANSWER_TAG = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)
# A minus is a sign only when not preceded by a digit or ")" ("23-5" is a subtraction).
_NUMBER = re.compile(r"(?<![\d)])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_NUMBER_FULL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[+-]?\d+)?"
                          r"|[+-]?\.\d+")


def _last_boxed(text: str) -> Optional[str]:
  """Content of the last \\boxed{...}, with nested braces balanced."""
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  i, depth = start + len("\\boxed{"), 1
  for j in range(i, len(text)):
    if text[j] == "{":
      depth += 1
    elif text[j] == "}":
      depth -= 1
      if depth == 0:
        return text[i:j].strip()
  return None


def strip_thinking(text: str) -> Optional[str]:
  """The reply without its reasoning: the text after the last `</think>` (a prompt may
  hold the opening tag, so a lone `</think>` counts too); None when a `<think>` is left
  open, i.e. the reply was cut off while thinking and states no answer."""
  if not isinstance(text, str):
    return None
  if "</think>" in text:
    text = text[text.rfind("</think>") + len("</think>"):]
  return None if "<think>" in text else text


def answer_as_verified(task, completion: str, problem=None, truncated: bool = False):
  """The answer `completion` states, read as `tasks.verify` reads it: a completion cut
  off at its token budget (`truncated`) counts only what it finished stating, where
  the task has that policy (its `finished_part`). For votes and reports: a majority
  must not count an operand a cut-off reply was restating as its answer."""
  cut = getattr(task, "finished_part", None)
  if truncated and cut is not None:
    completion = cut(completion)
  return task.extract_answer(completion, problem)


def finished_part(text: str) -> str:
  """What a reply cut off at its token budget finished stating: its last closed marked
  answer, written with its marker (so extraction reads it as before), or "" when it
  closed none. Of a `####` answer only the lines a line break ended count: "#### 42"
  at the very end may be the start of "#### 425"."""
  text = strip_thinking(text)
  if not text:
    return ""
  found = []   # in the markers' own order of preference: ####, <answer>, \\boxed
  if "####" in text:
    rest = text[text.rfind("####") + 4:].lstrip(" \t")
    complete = rest[:rest.rfind("\n")] if "\n" in rest else ""   # its finished lines
    if complete.strip():
      found.append("#### " + complete.strip() + "\n")
  tags = _ANSWER_TAG.findall(text)
  if tags and tags[-1].strip():
    found.append(f"<answer>{tags[-1].strip()}</answer>")
  boxed = _last_boxed(text)
  if boxed:
    found.append(f"\\boxed{{{boxed}}}")
  return found[0] if found else ""


def extract_marked(text: str) -> Optional[str]:
  """Steps 0-3 of the policy: the answer after a marker, or None when none is present."""
  text = strip_thinking(text)
  if text is None:
    return None
  if "####" in text:
    marked = text[text.rfind("####") + 4:].strip()
    if marked:
      return marked
  tags = _ANSWER_TAG.findall(text)
  if tags and tags[-1].strip():
    return tags[-1].strip()
  return _last_boxed(text) or None


def last_number(text: str) -> Optional[str]:
  """The last number written in the text (commas removed), or None."""
  if not isinstance(text, str):
    return None
  found = _NUMBER.findall(text.replace("\u2212", "-"))
  return found[-1].replace(",", "") if found else None


def first_lines(text: Optional[str], n: int = 1) -> Optional[str]:
  """The first n non-empty lines of a marked answer: an answer as long as the reference,
  so chatter after "#### 68" does not spoil it. None when there is nothing."""
  if text is None:
    return None
  lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
  return "\n".join(lines[:max(n, 1)]) or None


def extract_numeric(text: str) -> Optional[str]:
  """The whole policy for numeric answers: the first line of a marked answer if any
  (read by `marked_number`), else `fallback_number` of the reply."""
  marked = first_lines(extract_marked(text))
  if marked is not None:
    return marked_number(marked)
  return fallback_number(text)


# "the answer is", "Final answer:", "result =", "solution would be" (markdown bold and
# a trailing colon allowed): a statement of the answer in words
_STATEMENT = re.compile(r"\b(?:answer|result|solution)\s*(?:is|was|equals|would be|will be"
                        r"|should be|:|=)\s*:?", re.IGNORECASE)
# where a stated answer's clause ends: a full stop, a comma, a bracket, or a word that
# begins a justification ("24 because ...", "24 since ...", "24, so ...")
_CLAUSE_END = re.compile(r"\.(?:\s|$)|,(?!\d{3})|[;(\n]|\s(?:because|since|as|so|which|and|but|from)\b",
                         re.IGNORECASE)
# a number that may be a reply's last: an integer, decimal or a/b fraction
_LAST = re.compile(r"(?<![\d)])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?")
# a math answer's clause keeps its commas and brackets ("(2, 2)", "[1, 3)")
_MATH_CLAUSE_END = re.compile(r"\.(?:\s|$)|[;\n]|\s(?:because|since|as|so|which|and|but|from)\b",
                              re.IGNORECASE)
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")


def stated_answer(text: str, math: bool = False) -> Optional[tuple[str, str]]:
  """(the clause the reply's last statement of its answer states, the text after that
  clause), or None when it makes no statement such as "the answer is X". `math`: the
  clause runs on over commas and brackets (a tuple or an interval)."""
  text = text.replace("**", "").replace("__", "")
  found = list(_STATEMENT.finditer(text))
  if not found:
    return None
  rest = text[found[-1].end():].lstrip()
  end = (_MATH_CLAUSE_END if math else _CLAUSE_END).search(rest)
  return (rest[:end.start()].strip(), rest[end.start():]) if end else (rest.strip(), "")


def last_whole_number(text: str) -> Optional[str]:
  """The reply's last number when it stands alone, else None: one that is an exponent,
  a subscript, inside braces (\\frac{3}{4}, \\sqrt{2}), or followed by an operator
  that binds tighter than the reply's sentence (^, a LaTeX command such as \\pi or
  \\times, a variable: 10x) is part of an expression that is the reply's answer."""
  s = _DEGREES.sub("", text.replace("\u2212", "-"))
  found = list(_LAST.finditer(s))
  if not found:
    return None
  m = found[-1]
  before, after = s[:m.start()].rstrip(), s[m.end():]
  if before.endswith(("^", "_", "{", "\\sqrt", "\\frac", "/")):
    return None
  if re.match(r"\s*[\^{}\\]|[A-Za-z\u03c0]", after):
    return None
  value = re.sub(r"\s+", "", m.group(0)).replace(",", "")
  return value if parse_number(value) is not None else None


def fallback_number(text: str) -> Optional[str]:
  """Step 4 of the policy (a reply without a marker): the number its final statement
  states when that is also its last number; without a statement, its last number read
  whole. None when the reply states no number or two different ones."""
  text = strip_thinking(text)
  if not text or not text.strip():
    return None
  last = last_whole_number(text)
  stated = stated_answer(text)
  if stated is None:
    return last
  clause, after = stated
  value = marked_number(clause) if clause else None
  if value is None:
    return None
  if not re.search(r"\d", after):   # the statement is the reply's last word on numbers
    return value
  return value if last is not None and numbers_equal(last, value) else None


# \frac{3}{4}, \dfrac12, \tfrac{-1}{2}: a fraction of two integers
_LATEX_FRACTION = re.compile(r"(-?)\\[dt]?frac\s*(?:\{\s*(-?\d+)\s*\}|(\d))"
                             r"\s*(?:\{\s*(\d+)\s*\}|(\d))")
# what may follow a number without changing it: a unit in \text{}, degrees, percent,
# or words ("68 apples", "5 cm.")
_UNIT = re.compile(r"\s*(?:\\(?:text|mathrm|mbox)\s*\{[^{}]*\}|\^\s*\{?\\circ\}?|°|\\?%"
                   r"|\\[,;! ]|[A-Za-z][A-Za-z .]*)\s*$")


def marked_number(marked: str) -> Optional[str]:
  """The number a marked answer states, or None when it states an expression.

  A marked answer is read whole, never cut down to one of its numbers: `\\frac{3}{4}`
  is 3/4 and `x^3`, `4^2`, `\\sqrt{2}`, `10\\pi` or `2\\times10^6` state no plain
  number (None: not right against 3, 2, 2, 10 or 6). What it may carry besides the
  number: a left-hand side ("x = 5", "23 + 45 = 68": the value after the last '='),
  `$`, `\\(...\\)`, a unit or words after it ("5 cm", "120^\\circ", "75\\%")."""
  s = marked.strip().replace("\\$", "$").strip("$").strip()   # \$375: a dollar in LaTeX
  if s.startswith("\\(") and s.endswith("\\)"):
    s = s[2:-2].strip()
  if "=" in s:
    s = s[s.rfind("=") + 1:].strip()
  for _ in range(3):   # "5\\text{ cm}." : the unit, then the trailing full stop
    if parse_number(s) is not None:   # a number now stays one: stop reading it again
      break
    s = _UNIT.sub("", s).rstrip(".").strip()
  m = _LATEX_FRACTION.fullmatch(s)
  if m:
    sign, num, den = m.group(1), m.group(2) or m.group(3), m.group(4) or m.group(5)
    s = f"{'-' if sign else ''}{num}/{den}".replace("--", "")
  if parse_number(s) is None:
    return None
  return s.replace(",", "")


def parse_number(text: Optional[str]) -> Optional[fractions.Fraction]:
  """A number written alone (tolerant of commas, $, +, trailing '.', a/b), or None."""
  if text is None:
    return None
  s = str(text).strip().replace("\u2212", "-").replace("$", "").replace(" ", "")
  s = s.rstrip(".")
  if s.startswith("\\(") and s.endswith("\\)"):
    s = s[2:-2]
  m = re.fullmatch(r"([+-]?\d+)/(\d+)", s)
  try:
    if m:
      return fractions.Fraction(int(m.group(1)), int(m.group(2)))
    if _NUMBER_FULL.fullmatch(s):
      return fractions.Fraction(s.replace(",", ""))
  except (ValueError, ZeroDivisionError):
    return None
  return None


def numbers_equal(a: Optional[str], b: Optional[str]) -> bool:
  """True when both parse as numbers and are equal (1e-9 relative slack for decimals)."""
  x, y = parse_number(a), parse_number(b)
  if x is None or y is None:
    return False
  if x == y:
    return True
  return abs(x - y) <= abs(y) * fractions.Fraction(1, 10**9)


def vote_key(answer: Optional[str]) -> Optional[str]:
  """What a vote counts: a number by its exact value ('4.0' = '4'), else the text
  normalised (case, whitespace, quotes, trailing punctuation)."""
  if answer is None:
    return None
  number = parse_number(answer)
  return str(number) if number is not None else normalize_text(answer) or None


def normalize_text(text: str) -> str:
  """Lower case, collapsed whitespace, surrounding quotes and trailing punctuation dropped."""
  s = " ".join(str(text).split()).lower()
  return s.strip(" \"'`").rstrip(".!;:,").strip()
