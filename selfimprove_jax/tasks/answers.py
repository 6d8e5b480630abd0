"""Answer extraction and matching shared by every task.

The extraction policy, in order of preference (the first that finds something wins):
  1. the declared marker: the text after the last `####` (to the end of the reply; tasks
     with one-line answers keep its first line, see `first_lines`);
  2. the last `<answer>...</answer>` block (reasoning-gym's own convention);
  3. the last `\\boxed{...}` (the common math convention);
  4. numeric tasks only: the last number anywhere in the text.
Small instruct models often answer "23 + 45 = 68" without any marker, so the
last-number fallback turns a right answer in the wrong format into reward instead of
noise; it cannot be gamed by listing numbers because only the last one counts.

Numbers are read tolerantly: thousands commas ("1,234"), surrounding whitespace, a
leading "+" or "$", a trailing "." and the Unicode minus are accepted; "3/4" is a
fraction. Numeric comparison is exact on rationals (floats with a 1e-9 relative slack).
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


def extract_marked(text: str) -> Optional[str]:
  """Steps 1-3 of the policy: the answer after a marker, or None when none is present."""
  if not isinstance(text, str):
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
  (read by `marked_number`), else the last number of the reply."""
  marked = first_lines(extract_marked(text))
  if marked is not None:
    return marked_number(marked)
  return last_number(text)


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
  s = marked.strip().strip("$").strip()
  if s.startswith("\\(") and s.endswith("\\)"):
    s = s[2:-2].strip()
  if "=" in s:
    s = s[s.rfind("=") + 1:].strip()
  for _ in range(3):   # "5\\text{ cm}." : the unit, then the trailing full stop
    s = _UNIT.sub("", s).rstrip(".").strip() if parse_number(s) is None else s
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
