"""Code tasks: the model writes a Python function, the sandbox runs hidden tests on it.

  code:<family>      procedural families built in (offline): `list_ops` (a list of ints
                     through a chain of transformations) and `string_ops` (a string through
                     a chain of edits). Difficulty = the number of chained steps (1-4).
                     Each problem has a reference implementation and random test inputs;
                     the prompt shows two of the tests, all of them are checked.
  code_jsonl:<path>  a user's MBPP/HumanEval-style file, one JSON object per line:
                     "prompt", "entry_point", and tests as either "tests" (a list of
                     {"input": [args...], "output": value}), "test_list" (MBPP: assert
                     lines) or "test" (HumanEval: a `check(candidate)` function).
                     The public layouts load as they are (HumanEval, MBPP original and
                     sanitized; .jsonl, .jsonl.gz, .parquet; options `format`,
                     `prompt_field`, `test_path`): see layouts.py. A HumanEval reply
                     may be the whole function or its body only (run as prompt + body).

Reward: the fraction of tests passed. The completion's code (the last ```python block,
else the text from its first `def`/`import` on) runs in the sandbox under `timeout_s`
and `memory_mb` for all of a problem's tests together; a program that hangs, crashes or
hits a limit scores 0 and its record says why (`Verdict.status`). Input/output tests
send only the inputs into the sandbox and compare the returned values outside it, so
the model's code cannot see or forge the expected outputs. Assert-style tests run in a
process apart from the model's code, on the plain values its functions return
(sandbox/judge.py), so no program can make a failing assert pass; the assert lines
themselves are readable by the program, as if the prompt showed them.

Held-out: as for every task, a fixed hash partition of problem ids (procedural), or the
smallest id hashes of the file (code_jsonl).
"""

from __future__ import annotations

import random
import re
from typing import Optional

from selfimprove_jax import sandbox
from selfimprove_jax.errors import UserError
from selfimprove_jax.sandbox.worker import normalize
from selfimprove_jax.tasks import layouts
from selfimprove_jax.tasks import problem as problem_lib
from selfimprove_jax.tasks.problem import FileSplits, Problem, ProceduralSplits, Verdict

ENTRY_POINT = "solve"
INSTRUCTION = ("Reply with the complete Python function `{name}` in a ```python code block "
               "(no input(), no printing).")

# ----------------------------------------------------------------------------- families
# A step is (description, reference source line, function); a family draws steps.


def _list_steps(rng: random.Random) -> list:
  k, m = rng.randint(1, 9), rng.randint(2, 5)
  return [
      (f"add {k} to every element", f"xs = [x + {k} for x in xs]",
       lambda xs: [x + k for x in xs]),
      (f"multiply every element by {m}", f"xs = [x * {m} for x in xs]",
       lambda xs: [x * m for x in xs]),
      (f"keep only the elements greater than {k}", f"xs = [x for x in xs if x > {k}]",
       lambda xs: [x for x in xs if x > k]),
      (f"remove the elements divisible by {m}", f"xs = [x for x in xs if x % {m} != 0]",
       lambda xs: [x for x in xs if x % m != 0]),
      ("reverse the list", "xs = xs[::-1]", lambda xs: xs[::-1]),
      ("sort it in ascending order", "xs = sorted(xs)", sorted),
      ("sort it in descending order", "xs = sorted(xs, reverse=True)",
       lambda xs: sorted(xs, reverse=True)),
      (f"keep only the first {m} elements", f"xs = xs[:{m}]", lambda xs: xs[:m]),
      ("square every element", "xs = [x * x for x in xs]", lambda xs: [x * x for x in xs]),
      ("remove duplicates, keeping the first occurrence of each value",
       "xs = list(dict.fromkeys(xs))", lambda xs: list(dict.fromkeys(xs))),
  ]


def _list_input(rng: random.Random) -> list:
  return [[rng.randint(-9, 20) for _ in range(rng.randint(0, 8))]]


def _string_steps(rng: random.Random) -> list:
  a, b = rng.sample("abcdeilnorst", 2)
  k = rng.randint(2, 6)
  return [
      ("reverse it", "s = s[::-1]", lambda s: s[::-1]),
      ("convert it to upper case", "s = s.upper()", str.upper),
      ("swap the case of every letter", "s = s.swapcase()", str.swapcase),
      (f"remove every '{a}'", f"s = s.replace({a!r}, '')", lambda s: s.replace(a, "")),
      (f"replace every '{a}' with '{b}'", f"s = s.replace({a!r}, {b!r})",
       lambda s: s.replace(a, b)),
      (f"keep only the first {k} characters", f"s = s[:{k}]", lambda s: s[:k]),
      ("remove all vowels (a, e, i, o, u, either case)",
       "s = ''.join(c for c in s if c.lower() not in 'aeiou')",
       lambda s: "".join(c for c in s if c.lower() not in "aeiou")),
      ("repeat every character twice", "s = ''.join(c * 2 for c in s)",
       lambda s: "".join(c * 2 for c in s)),
      ("remove the spaces", "s = s.replace(' ', '')", lambda s: s.replace(" ", "")),
  ]


def _string_input(rng: random.Random) -> list:
  words = ["cat", "tree", "Lion", "sun", "data", "Rose", "ice", "note", "bird", "OASIS"]
  return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))]


# family -> (argument name, argument description, steps, input generator, result noun)
FAMILIES: dict[str, tuple] = {
    "list_ops": ("xs", "a list of integers", _list_steps, _list_input, "the resulting list"),
    "string_ops": ("s", "a string", _string_steps, _string_input, "the resulting string"),
}


def _literal(args: list) -> str:
  return ", ".join(repr(a) for a in args)


class CodeTask(ProceduralSplits):
  """`code:<family>`: chains of 1-4 steps, reference implementation, random tests."""

  procedural = False          # the model's own proposals are not parsed into specs
  difficulty_range = (1, 4)
  default_difficulty = 2
  answer_format = "a ```python block defining the function (else the code from its first def)"

  def __init__(self, family: str, heldout_fraction: float = problem_lib.DEFAULT_HELDOUT_FRACTION,
               tests: int = 8, timeout_s: float = 2.0, memory_mb: int = 256):
    if family not in FAMILIES:
      raise UserError(f"task code:{family}: no such family; available: "
                      f"{', '.join(sorted(FAMILIES))}")
    if tests < 2 or not (timeout_s > 0 and memory_mb > 0):
      raise UserError(f"task code:{family}: need tests >= 2, timeout_s > 0, memory_mb > 0")
    self.name, self.family, self.tests = f"code:{family}", family, int(tests)
    self.heldout_fraction = problem_lib.check_fraction(heldout_fraction, self.name)
    self.limits = sandbox.Limits(timeout_s=float(timeout_s), memory_mb=int(memory_mb))

  def _level(self, difficulty: Optional[int]) -> int:
    level = self.default_difficulty if difficulty is None else int(difficulty)
    lo, hi = self.difficulty_range
    if not lo <= level <= hi:
      raise UserError(f"task {self.name}: difficulty {level} is outside [{lo}, {hi}]")
    return level

  def _generate(self, level: int, rng: random.Random) -> Problem:
    arg, arg_doc, steps_fn, input_fn, result = FAMILIES[self.family]
    for _ in range(32):   # a chain whose tests all give one output is a constant: redraw
      steps = rng.sample(steps_fn(rng), level)
      inputs = [input_fn(rng) for _ in range(self.tests)]
      outputs = []
      for (value,) in inputs:
        for _, _, fn in steps:
          value = fn(value)
        outputs.append(value)
      if len({repr(o) for o in outputs}) > 1:
        break
    said = "; then ".join(d for d, _, _ in steps)
    shown = "\n".join(f"{ENTRY_POINT}({_literal(i)}) == {o!r}"
                      for i, o in list(zip(inputs, outputs))[:2])
    prompt = (f"Write a Python function `{ENTRY_POINT}({arg})` that takes {arg_doc} and "
              f"returns {result} after these steps, in order: {said}.\n\nExamples:\n"
              f"{shown}\n\n{INSTRUCTION.format(name=ENTRY_POINT)}")
    body = "\n".join(f"  {src}" for _, src, _ in steps)
    reference = f"def {ENTRY_POINT}({arg}):\n{body}\n  return {arg}\n"
    return problem_lib.make_problem(prompt, reference, level, {
        "entry_point": ENTRY_POINT,
        "tests": [{"input": i, "output": o} for i, o in zip(inputs, outputs)]})

  def extract_answer(self, completion: str, problem: Optional[Problem] = None):
    return extract_code(completion, ENTRY_POINT)

  def verify_batch(self, problems: list, completions: list) -> list[Verdict]:
    return verify_code(self, problems, completions, self.limits)

  def score(self, problem: Problem, completion: str) -> float:
    return self.verify_batch([problem], [completion])[0].reward

  def can_solve(self, prompt: str) -> Optional[str]:
    return None


# ----------------------------------------------------------------------------- user files


def read_code_jsonl(path: str, fmt: str = "auto", prompt_field: str = "") -> list[Problem]:
  """Problems of an MBPP/HumanEval-style file in layout `fmt` (layouts.py; auto: read
  from the first record's fields); UserError naming the file and line."""
  out, seen = [], set()
  rows = layouts.read_rows(path, f"code_jsonl:{path}")
  if rows and fmt == "auto":
    fmt = layouts.detect_code(rows[0][1], f"{path}:{rows[0][0]}")
  for lineno, row in rows:
    r = layouts.code_row(row, fmt, f"{path}:{lineno}", prompt_field)
    meta = {"entry_point": r["entry_point"], "line": lineno}
    meta.update({k: r[k] for k in ("tests", "asserts") if k in r})
    if r["preamble"]:
      meta["preamble"] = r["preamble"]
    if r["completes_prompt"]:
      meta["completes_prompt"] = True
    prompt = f"{r['prompt'].rstrip()}\n\n{INSTRUCTION.format(name=r['entry_point'])}"
    p = problem_lib.make_problem(prompt, r["reference"] or "", 0, meta)
    if p.id not in seen:
      seen.add(p.id)
      out.append(p)
  if len(out) < 2:
    raise UserError(f"{path}: needs at least 2 distinct problems (one is held out)")
  return out


class CodeJsonlTask(FileSplits):
  """`code_jsonl:<path>`: a user's code problems with their tests (not procedural)."""

  procedural = False
  difficulty_range = None
  default_difficulty = 0
  answer_format = CodeTask.answer_format

  def __init__(self, path: str, heldout_fraction: float = problem_lib.DEFAULT_HELDOUT_FRACTION,
               timeout_s: float = 5.0, memory_mb: int = 512, format: str = "auto",  # noqa: A002
               prompt_field: str = "", test_path: str = ""):
    self.name, self.path = f"code_jsonl:{path}", path
    self.heldout_fraction = problem_lib.check_fraction(heldout_fraction, self.name)
    self.limits = sandbox.Limits(timeout_s=float(timeout_s), memory_mb=int(memory_mb))
    fmt = layouts.check_format(format, layouts.CODE_FORMATS, self.name)
    test = layouts.read_test_file(lambda: read_code_jsonl(test_path, fmt, prompt_field)) \
        if test_path else []
    self._split(read_code_jsonl(path, fmt, prompt_field), "code_jsonl", test=test)

  def extract_answer(self, completion: str, problem: Optional[Problem] = None):
    if problem is None:
      return extract_code(completion)
    return extract_code(completion, problem.metadata["entry_point"],
                        body=bool(problem.metadata.get("completes_prompt")))

  def verify_batch(self, problems: list, completions: list) -> list[Verdict]:
    return verify_code(self, problems, completions, self.limits)

  def score(self, problem: Problem, completion: str) -> float:
    return self.verify_batch([problem], [completion])[0].reward

  def can_solve(self, prompt: str) -> Optional[str]:
    return None


# ----------------------------------------------------------------------------- verification

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_CODE_START = re.compile(r"^(?:def |import |from |class |@)", re.MULTILINE)


def extract_code(completion, entry_point: Optional[str] = None,
                 body: bool = False) -> Optional[str]:
  """The program in a completion: the last fenced block defining `entry_point` (else the
  last fenced block), else everything from the first line starting a definition.

  `body=True` (HumanEval: the prompt is the function's head): code that does not define
  `entry_point` is the function's body, kept with its indentation (a block written flush
  left is indented), to be run as `prompt + body`."""
  if not isinstance(completion, str):
    return None
  text = completion.strip()
  if text.startswith("####"):   # `ans_as_completion` of a voted answer
    text = text[4:].strip()
    completion = completion.lstrip()[4:]
  blocks = [b for b in _FENCE.findall(completion) if b.strip()]
  if blocks:
    defining = [b for b in blocks if entry_point and f"def {entry_point}" in b]
    if body and not defining:
      return _as_body(blocks[-1])
    return (defining or blocks)[-1].strip() + "\n"
  if body and not re.search(rf"^def {re.escape(entry_point or '')}\(", text, re.MULTILINE):
    return _as_body(completion) if text else None
  start = _CODE_START.search(text)
  return text[start.start():].strip() + "\n" if start else None


def _as_body(code: str) -> str:
  """A function body as it follows the function's head: blank lines before it dropped,
  its indentation kept, four spaces added when it starts flush left."""
  lines = code.rstrip().split("\n")
  while lines and not lines[0].strip():
    lines.pop(0)
  if lines and not lines[0][:1].isspace():
    lines = [f"    {line}" if line.strip() else line for line in lines]
  return "\n".join(lines) + "\n"


def program(problem: Problem, code: str) -> str:
  """What runs for a problem: its preamble (MBPP's setup code and imports; HumanEval's
  prompt, whose helpers and imports the reply may use), then the reply's code. A
  HumanEval reply that does not define the function is its body: `prompt + body`, the
  benchmark's own convention (the prompt ends inside the function's head)."""
  preamble = problem.metadata.get("preamble", "")
  if not preamble:
    return code
  entry = problem.metadata["entry_point"]
  if problem.metadata.get("completes_prompt") and not re.search(
      rf"^def {re.escape(entry)}\(", code, re.MULTILINE):
    return preamble + code
  # a full definition follows the stub (whose docstring-only body is valid Python) and
  # replaces it
  return f"{preamble.rstrip()}\n\n\n{code}"


def _call(entry_point: str, inputs: list) -> str:
  return f"{entry_point}({_literal(inputs)[:200]})"


def _io_verdict(r: sandbox.Result, p: Problem, failures: int = 1) -> Verdict:
  tests, name = p.metadata["tests"], p.metadata["entry_point"]
  got = sandbox.CallTestsValue.from_value(r.value)
  if got.missing is not None:
    return Verdict(0.0, "ok", got.missing)
  passed, said_lines = 0, []
  for t, c in zip(tests, got.calls):
    if c.returned and c.value == normalize(t["output"]):
      passed += 1
    elif len(said_lines) < failures:
      said = f"raised {c.error}" if not c.returned else f"returned {c.value!r}"[:200]
      said_lines.append(f"{_call(name, t['input'])} {said}; expected {t['output']!r}"[:400])
  return Verdict(passed / len(tests), "ok", "\n".join(said_lines))


def _assert_verdict(r: sandbox.Result, p: Problem, failures: int = 1) -> Verdict:
  checks = sandbox.AssertsValue.from_value(r.value).checks
  passed = sum(1 for c in checks if c.passed)
  failed = [(t, c) for t, c in zip(p.metadata["asserts"], checks) if not c.passed]
  detail = "\n".join(f"failed: {t.strip().splitlines()[-1][:200]} ({c.error})"[:400]
                     for t, c in failed[:failures])
  return Verdict(passed / len(p.metadata["asserts"]), "ok", detail)


def verify_code(task, problems: list, completions: list, limits: sandbox.Limits,
                failures: int = 1, error_lines: int = 1) -> list[Verdict]:
  """Runs each completion's code against its problem's tests, all in parallel. A
  Verdict's detail describes the first `failures` failing tests (one a line), or a
  program that did not run to its end by the last `error_lines` lines of its error
  output (environments/code_feedback.py shows the model more than one)."""
  verdicts: list = [Verdict(0.0, "ok", "no Python code found in the reply")] * len(problems)
  jobs = {"call_tests": [], "asserts": []}
  for i, (p, c) in enumerate(zip(problems, completions)):
    code = task.extract_answer(c, p)
    if code is None:
      continue
    code = program(p, code)
    if "tests" in p.metadata:
      jobs["call_tests"].append((i, {"source": code, "entry_point": p.metadata["entry_point"],
                                     "inputs": [t["input"] for t in p.metadata["tests"]]}))
    else:
      jobs["asserts"].append((i, {"source": code, "asserts": p.metadata["asserts"]}))
  for job, items in jobs.items():
    if not items:
      continue
    results = sandbox.run_jobs(job, [a for _, a in items], limits)
    for (i, _), r in zip(items, results):
      if not r.ok:
        tail = "\n".join(r.stderr.strip().splitlines()[-error_lines:]).strip()
        verdicts[i] = Verdict(0.0, r.status,
                              f"{r.detail}: {tail}".strip(": ")[:400 * error_lines])
      elif job == "call_tests":
        verdicts[i] = _io_verdict(r, problems[i], failures)
      else:
        verdicts[i] = _assert_verdict(r, problems[i], failures)
  return verdicts

