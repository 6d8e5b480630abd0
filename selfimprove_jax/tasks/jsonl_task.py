"""`jsonl:<path>`: a user's prompts with reference answers.

File format: one JSON object per line, `{"prompt": "...", "answer": "..."}` ("reference"
is accepted instead of "answer"); blank lines are skipped, a repeated prompt keeps its
first answer. Public layouts load as they are (GSM8K, MATH, MATH-500, chat-message
prompts; .jsonl, .jsonl.gz or .parquet; options `format`, `prompt_field`,
`answer_field`): see layouts.py. `test_path` names a separate file in the same layout
that is the test split (evaluate/splits.py); its twins in `path` never train.
The prompt is used as written, followed by the `instruction` option when one is given
(e.g. "Give your final answer after '####'.").

Rows without an answer, for label-free training (`loop.algorithm=ttrl`): a row may give
`hidden_answer` instead, or nothing. A hidden answer is withheld from training: a
training problem of such a row has reference "" (no verifier can count it right) and
keeps the answer only in `metadata["hidden_reference"]`, which label-free metrics read
to log how often the majority was right; on the held-out side it is the reference
every evaluation scores against. A row with no answer at all is only ever trained on.
Which rows are numeric cannot be read from an absent reference: `answer_kind="number"`
(or "text") says it for every row; "auto" (default) reads it from each reference.

Extraction and match: when the reference is a number, the numeric policy of
`answers.py` (marker, else the last number) and numeric equality; otherwise the marked
answer (as many of its lines as the reference has) or, without a marker, the whole reply
must equal the reference after normalisation (case, whitespace, quotes, trailing
punctuation).

Math references (`math_check.checker_for` decides, the same rule for every reference):
LaTeX in the reference, `answer_kind="math"` or a record's own `"answer_kind": "math"`
(a record may also say "number" or "text") send it to HF math-verify, run in the sandbox
pool under `math_timeout_s` / `math_memory_mb` per answer (a limit hit scores 0, the
record says why). A reply cut off at its token budget counts only its closed marked
answer (`answers.finished_part`).

Held-out: of the n prompts with an answer or a hidden answer, the ceil(heldout_fraction
* n) with the smallest id hash. It is fixed by the file's content (not by any seed),
never empty for two or more prompts, and the training stream is the rest, reshuffled
every epoch from the run's seed.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from selfimprove_jax.errors import UserError
from selfimprove_jax.tasks import answers, layouts
from selfimprove_jax.tasks import problem as problem_lib
from selfimprove_jax.tasks.problem import HIDDEN_REFERENCE, FileSplits, Problem
from selfimprove_jax import sandbox
from selfimprove_jax.tasks import math_check
from selfimprove_jax.tasks.problem import Verdict


def read_jsonl(path: str, instruction: str = "", fmt: str = "auto", prompt_field: str = "",
               answer_field: str = "") -> list[Problem]:
  """Problems of a task file in file order, in layout `fmt` (layouts.py; auto: read from
  the first record's fields); UserError naming the file and line."""
  out, seen = [], set()
  rows = layouts.read_rows(path, f"jsonl:{path}")
  if rows and fmt == "auto":
    fmt = "plain" if prompt_field else layouts.detect_text(rows[0][1], f"{path}:{rows[0][0]}")
  for lineno, row in rows:
    where = f"{path}:{lineno}"
    prompt, answer = layouts.text_row(row, fmt, where, prompt_field, answer_field)
    hidden = row.get("hidden_answer") if fmt == "plain" else None
    if isinstance(hidden, (dict, list)):
      raise UserError(f"{where}: 'hidden_answer' must be a string or a number")
    if answer is not None and hidden is not None:
      raise UserError(f"{where}: give 'answer' or 'hidden_answer', not both")
    text = f"{prompt.rstrip()}\n\n{instruction}" if instruction else prompt
    meta = {"line": lineno}
    if row.get("answer_kind") is not None:   # this record's checker (math_check.py)
      if row["answer_kind"] not in math_check.KINDS[1:]:
        raise UserError(f"{path}:{lineno}: 'answer_kind' must be number, text or math, "
                        f"got {row['answer_kind']!r}")
      meta["answer_kind"] = row["answer_kind"]
    if hidden is not None:
      meta[HIDDEN_REFERENCE] = str(hidden)
    p = problem_lib.make_problem(text, "" if answer is None else answer, 0, meta)
    if p.id not in seen:
      seen.add(p.id)
      out.append(p)
  if not out:
    raise UserError(f"{path}: no problems in the file")
  return out


def _gradable(p: Problem) -> bool:
  return bool(p.reference or p.metadata.get(HIDDEN_REFERENCE))


def _revealed(p: Problem) -> Problem:
  """A held-out problem: its hidden answer, if any, is the reference it is scored by."""
  hidden = p.metadata.get(HIDDEN_REFERENCE)
  return dataclasses.replace(p, reference=hidden) if hidden else p


class JsonlTask(FileSplits):
  """Problems read from a JSONL file (no difficulty knob, not procedural)."""

  procedural = False
  difficulty_range = None
  default_difficulty = 0
  answer_format = ("numeric references: the marked answer or the last number; others: the "
                   "marked answer ('####', <answer>, \\boxed{}) or the whole reply; "
                   "LaTeX or answer_kind math: checked by math-verify")
  # a reply cut off at its token budget states only its closed marked answer
  finished_part = staticmethod(answers.finished_part)

  # size: one keyword per task option (get_task passes the config's options by name)
  def __init__(self, path: str, heldout_fraction: float = problem_lib.DEFAULT_HELDOUT_FRACTION,
               instruction: str = "", answer_kind: str = "auto",
               math_timeout_s: float = 5.0, math_memory_mb: int = 1024, format: str = "auto",  # noqa: A002
               prompt_field: str = "", answer_field: str = "", test_path: str = ""):
    self.name = f"jsonl:{path}"
    self.path = path
    self.heldout_fraction = problem_lib.check_fraction(heldout_fraction, self.name)
    if answer_kind not in math_check.KINDS:
      raise UserError(f"task {self.name}: answer_kind must be auto, number, text or math, "
                      f"got {answer_kind!r}")
    self.answer_kind = answer_kind
    if not (math_timeout_s > 0 and math_memory_mb > 0):
      raise UserError(f"task {self.name}: math_timeout_s and math_memory_mb must be > 0")
    self.math_limits = sandbox.Limits(timeout_s=float(math_timeout_s),
                                      memory_mb=int(math_memory_mb))
    fmt = layouts.check_format(format, layouts.TEXT_FORMATS, self.name)
    problems = read_jsonl(path, instruction, fmt, prompt_field, answer_field)
    if len(problems) < 2:
      raise UserError(f"{path}: needs at least 2 distinct prompts (one is held out)")
    if not any(_gradable(p) for p in problems):
      raise UserError(f"{path}: no row has an 'answer' or 'hidden_answer' to hold out")
    test = []
    if test_path:
      test = [_revealed(p) for p in layouts.read_test_file(
          lambda: read_jsonl(test_path, instruction, fmt, prompt_field, answer_field))]
      ungraded = next((p for p in test if not p.reference), None)
      if ungraded is not None:
        raise UserError(f"task option test_path: {test_path}:{ungraded.metadata['line']} has "
                        f"no answer; every test problem needs one")
    self._split(problems, "jsonl", _gradable, test)
    self._heldout = [_revealed(p) for p in self._heldout]

  def extract_answer(self, completion: str,
                     problem: Optional[Problem] = None) -> Optional[str]:
    """By the reference's checker: the numeric policy, the answer math-verify is given,
    else the marked answer or the reply."""
    if not isinstance(completion, str):
      return None
    checker = self._checker(problem)
    if checker == "number":
      return answers.extract_numeric(completion)
    if checker == "math":
      return math_check.math_answer(completion)
    marked = answers.extract_marked(completion)
    if marked is not None and problem is not None:
      return answers.first_lines(marked, len(problem.reference.splitlines()))
    if marked is not None:
      return marked
    reply = answers.strip_thinking(completion)
    return (reply.strip() or None) if reply is not None else None

  def _checker(self, problem: Optional[Problem]) -> str:
    """'number', 'math' or 'text' (math_check.checker_for; a record's kind wins)."""
    kind = problem.metadata.get("answer_kind", self.answer_kind) if problem else self.answer_kind
    if problem is None:   # no reference to read: numbers unless the kind says otherwise
      return "number" if kind in ("auto", "number") else kind
    return math_check.checker_for(problem.reference, kind)

  def verify_batch(self, problems: list, completions: list) -> list[Verdict]:
    """`score` of each pair, but math references all at once as math-verify jobs on the
    sandbox pool (a limit hit scores 0 with the reason in its Verdict)."""
    math_idx = [i for i, p in enumerate(problems) if p.reference and self._checker(p) == "math"]
    checked = dict(zip(math_idx, math_check.verify_math(
        [problems[i] for i in math_idx], [completions[i] for i in math_idx], self.math_limits)))
    return [checked[i] if i in checked else Verdict(self.score(p, c))
            for i, (p, c) in enumerate(zip(problems, completions))]

  def score(self, problem: Problem, completion: str) -> float:
    """1.0 on a numeric or normalised exact match with the reference, else 0.0 (always
    0.0 without a reference: a training row whose answer is hidden or absent)."""
    if problem.reference and self._checker(problem) == "math":
      return self.verify_batch([problem], [completion])[0].reward
    answer = self.extract_answer(completion, problem)
    if answer is None or not problem.reference:
      return 0.0
    if answers.numbers_equal(answer, problem.reference):
      return 1.0
    return float(answers.normalize_text(answer) == answers.normalize_text(problem.reference))

  def can_solve(self, prompt: str) -> Optional[str]:
    """A file of prompts cannot solve new ones: always None (`procedural` is False)."""
    return None
