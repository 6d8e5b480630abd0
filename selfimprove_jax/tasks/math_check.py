"""Which checker a reference gets, and math answers checked by math-verify in the sandbox.

The rule (`checker_for`), one for every file task:
  * `answer_kind` "number" or "text" is obeyed as given;
  * `answer_kind` "math" (the task option, or a record's own `answer_kind` field), or
    "auto" with a reference written as mathematics (LaTeX: a backslash, `^`, `_`, `{`
    or `$`; or a bracketed / operator expression of digits and one-letter variables such
    as "(2,2)", "2x+1", "[1,3)"), is checked by HF `math-verify`;
  * "auto" with a plain number ("375", "-3", "0.5", "3/4", "$1,200") keeps our exact
    numeric check (answers.py): on plain numbers it is better (`\\$375` and a Unicode
    minus read right) and costs no sandbox call;
  * anything else is compared as normalised text.
A math reference that is itself a plain number is first compared by our numeric check:
two plain numbers are equal or not without a sympy call, so math-verify only sees
answers our reading cannot decide (`\\sqrt{4}`, `\\frac{6}{3}` written unmarked, ...).

What math-verify is given: the answer our extraction finds (answers.py: the marked
answer; else the clause of a final statement "the answer is ..."; else the last number,
read whole), and the reference, each wrapped in `\\boxed{}` so it reads all of it. It
parses and simplifies model text with sympy, which a hostile answer turns into seconds
or gigabytes (`\\boxed{9^{9^{9^{9}}}}`), so every check is a sandbox job
(`worker.job_math_verify`) under a per-answer wall-clock and memory limit; a limit hit
scores 0 and the record's verifier status says which.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from selfimprove_jax import sandbox
from selfimprove_jax.tasks import answers
from selfimprove_jax.tasks.problem import Problem, Verdict

KINDS = ("auto", "number", "text", "math")
_LATEX = re.compile(r"[\\^_{$]")
# an expression of digits, one-letter variables, operators and brackets, with at least
# one bracket, operator or comma (so that "5" or "x" alone is not one)
_EXPRESSION = re.compile(r"[0-9A-Za-z\s.,+\-*/()\[\]=<>]*[0-9][0-9A-Za-z\s.,+\-*/()\[\]=<>]*")


def checker_for(reference: str, kind: str = "auto") -> str:
  """'number', 'math' or 'text': the checker a reference gets (the module's rule)."""
  if kind in ("number", "text", "math"):
    return kind
  if answers.parse_number(reference) is not None:
    return "number"
  ref = reference.strip()
  if _LATEX.search(ref):
    return "math"
  if (_EXPRESSION.fullmatch(ref) and re.search(r"[()\[\],+\-*/=<>]", ref)
      and not re.search(r"[A-Za-z]{2}", ref)):
    return "math"
  return "text"


def math_answer(completion: str) -> Optional[str]:
  """The answer a reply gives to a math reference, as text for math-verify, or None:
  the marked answer; else a final statement's clause (when no number follows it, or
  the reply's last number agrees with it); else the last number read whole."""
  text = answers.strip_thinking(completion)
  if text is None or not text.strip():
    return None
  marked = answers.first_lines(answers.extract_marked(text))
  if marked is not None:
    return marked
  stated = answers.stated_answer(text, math=True)
  if stated is not None and stated[0] and not re.search(r"\d", stated[1]):
    return stated[0]
  return answers.fallback_number(text)


def _boxed(latex: str) -> str:
  s = latex.strip().strip("$").strip()
  if s.startswith("\\(") and s.endswith("\\)"):
    s = s[2:-2].strip()
  return s if s.startswith("\\boxed{") else f"\\boxed{{{s}}}"


def verify_math(problems: Sequence[Problem], completions: Sequence[str],
                limits: sandbox.Limits) -> list[Verdict]:
  """One Verdict per (problem, completion) against math references: our numeric check
  where both sides are plain numbers, else a math-verify job in the sandbox pool, all
  jobs of the batch in parallel under `limits` each."""
  verdicts: list = [Verdict(0.0, "ok", "no answer found")] * len(problems)
  todo = []
  for i, (p, c) in enumerate(zip(problems, completions)):
    answer = math_answer(c)
    if answer is None or not p.reference:
      continue
    ours, ref = answers.marked_number(answer), answers.parse_number(p.reference)
    if ours is not None and ref is not None:   # two plain numbers: no sympy needed
      verdicts[i] = Verdict(float(answers.numbers_equal(ours, p.reference)))
      continue
    todo.append((i, {"gold": _boxed(p.reference), "answer": _boxed(answer)}))
  results = sandbox.run_jobs("math_verify", [a for _, a in todo], limits)
  for (i, _), r in zip(todo, results):
    if r.ok:
      equal = isinstance(r.value, dict) and r.value.get("equal") is True
      verdicts[i] = Verdict(float(equal), "ok", "" if equal else "math-verify: not equal")
    else:   # a limit hit or a crash on hostile text: that answer is not right
      tail = r.stderr.strip().splitlines()[-1:] or [""]
      verdicts[i] = Verdict(0.0, r.status, f"math-verify: {r.detail} {tail[0]}".strip()[:300])
  return verdicts
