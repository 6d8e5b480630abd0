"""Tasks and verifiers: deterministic streams, disjoint held-out splits, scoring edge cases."""

import json
import math
import sys

import pytest

from selfimprove_jax.errors import UserError
from selfimprove_jax.tasks import Problem, get_task, problem_id
from selfimprove_jax.tasks import answers, countdown, expressions
from selfimprove_jax.tasks.jsonl_task import read_jsonl
from selfimprove_jax.tasks.problem import text_key


def _reasoning_gym_installed():
  try:
    import reasoning_gym  # noqa: F401
  except ImportError:
    pytest.fail("reasoning-gym is not installed: pip install 'selfimprove_jax[reasoning]'")


@pytest.fixture
def jsonl_file(tmp_path):
  path = tmp_path / "qa.jsonl"
  rows = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(40)]
  rows.append({"prompt": "Capital of France?", "reference": "Paris"})
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  return str(path)


def _tasks(jsonl_path):
  _reasoning_gym_installed()
  return [get_task("arithmetic"), get_task("countdown"),
          get_task("reasoning_gym:leg_counting"), get_task(f"jsonl:{jsonl_path}")]


# --- streams -------------------------------------------------------------------------


def test_streams_are_deterministic_and_random_access(jsonl_file):
  for task in _tasks(jsonl_file):
    again = get_task(task.name)
    a = task.train_problems(seed=3, count=12)
    assert a == again.train_problems(seed=3, count=12), task.name
    assert a[5:9] == task.train_problems(seed=3, count=4, start=5), task.name
    assert task.problem(3, 7) == a[7], task.name
    assert [p.id for p in a] != [p.id for p in task.train_problems(seed=4, count=12)], task.name
    assert task.heldout(5) == again.heldout(5), task.name
    for p in a:
      assert p.id == problem_id(p.prompt)
      assert Problem.from_json(json.loads(json.dumps(p.to_json(), default=list))) == p


def test_train_and_heldout_are_disjoint(jsonl_file):
  for task in _tasks(jsonl_file):
    heldout = task.heldout(4 if task.name.startswith("jsonl") else 100)
    assert heldout and all(task.is_heldout(p.id) for p in heldout), task.name
    assert len({p.id for p in heldout}) == len(heldout), task.name
    train = [p for seed in range(3) for p in task.train_problems(seed, 150)]
    assert not any(task.is_heldout(p.id) for p in train), task.name
    assert not {p.id for p in train} & {p.id for p in heldout}, task.name


def test_disjointness_is_structural_for_small_problem_spaces():
  # Level 1 has only 300 distinct problems, so training draws would hit held-out ones
  # constantly if the stream did not skip them.
  task = get_task("arithmetic", difficulty=1, heldout_fraction=0.3)
  heldout_ids = {p.id for p in task.heldout(40)}
  train_ids = {p.id for p in task.train_problems(0, 2000)}
  assert len(train_ids) > 100 and not heldout_ids & train_ids


def test_difficulty_knob():
  task = get_task("arithmetic")
  assert task.difficulty_range == (1, 8) and task.default_difficulty == 2
  easy, hard = task.problem(0, 0, difficulty=1), task.problem(0, 0, difficulty=7)
  assert easy.difficulty == 1 and hard.difficulty == 7
  assert len(hard.metadata["expression"].split()) == 7
  quick = get_task("arithmetic", difficulty=2, operators="+-").train_problems(0, 200)
  assert {p.metadata["expression"].split()[1] for p in quick} == {"+", "-"}
  assert all(int(p.reference) >= 0 for p in quick)
  assert all(10 <= int(x) <= 99 for p in quick for x in p.metadata["expression"].split()[::2])
  with pytest.raises(UserError, match="difficulty"):
    task.problem(0, 0, difficulty=9)
  cd = get_task("countdown")
  assert [len(cd.problem(0, 0, lv).metadata["numbers"]) for lv in range(1, 6)] == [2, 3, 4, 5, 6]


# --- arithmetic verifier ----------------------------------------------------------------


def _arith(reference, expression="a + b"):
  return Problem(id="x", prompt=f"What is {expression}?", reference=reference)


@pytest.mark.parametrize("completion,reference,reward", [
    ("68", "68", 1.0),
    ("23 + 45 = 68", "68", 1.0),
    ("The answer is 68.", "68", 1.0),
    ("#### 68\nand then 12", "68", 1.0),          # the marker wins over the last number
    ("#### x = 68", "68", 1.0),
    ("I think 68... no, 67", "68", 0.0),          # the last number is the answer
    ("\\boxed{1,234}", "1234", 1.0),
    ("The total is 1,234,567", "1234567", 1.0),
    ("  -22 ", "-22", 1.0),
    ("23 - 45 = \u221222", "-22", 1.0),
    ("23-45", "-22", 0.0),                        # a minus after a digit is subtraction
    ("#### 22", "-22", 0.0),
    ("<answer>x = 7</answer>", "7", 1.0),
    ("", "68", 0.0),
    ("I don't know", "68", 0.0),
    # a marked answer is read whole: an expression is not one of its numbers
    ("\\boxed{\\frac{3}{4}}", "4", 0.0),
    ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
    ("\\boxed{\\frac{3}{4}}", "3/4", 1.0),
    ("\\boxed{\\dfrac12}", "0.5", 1.0),
    ("\\boxed{-\\frac{1}{2}}", "-0.5", 1.0),
    ("\\boxed{4^2}", "2", 0.0),
    ("\\boxed{4^2}", "16", 0.0),                 # not evaluated: no plain number
    ("#### \\sqrt{2}", "2", 0.0),
    ("\\boxed{x^3}", "3", 0.0),
    ("\\boxed{10\\pi}", "10", 0.0),
    ("\\boxed{2\\times10^6}", "6", 0.0),
    ("#### 3 + 4", "4", 0.0),
    # what may stand around the number: a left-hand side, $, units, words
    ("#### 68 apples", "68", 1.0),
    ("\\boxed{120^\\circ}", "120", 1.0),
    ("\\boxed{75\\%}", "75", 1.0),
    ("\\boxed{5\\text{ cm}}", "5", 1.0),
    ("#### $1,234.", "1234", 1.0),
    ("\\boxed{\\(x = 9\\)}", "9", 1.0),
])
def test_arithmetic_scores(completion, reference, reward):
  assert get_task("arithmetic").score(_arith(reference), completion) == reward


def test_arithmetic_reference_and_can_solve():
  task = get_task("arithmetic")
  for p in task.train_problems(0, 50, difficulty=6) + task.heldout(20):
    assert task.score(p, f"#### {p.reference}") == 1.0
    assert task.can_solve(p.prompt) == p.reference
  assert task.can_solve("What is 12 + 3 * 4? Answer with just the number.") == "24"
  assert task.parse_problem("What is 123 - 4?").difficulty == 3
  assert task.can_solve("What is the capital of France?") is None
  assert task.can_solve("What is __import__('os').getcwd()?") is None
  assert get_task("arithmetic", operators="+").can_solve("What is 2 * 3?") is None


# --- countdown verifier -----------------------------------------------------------------


def _puzzle(numbers, target):
  prompt = countdown.format_prompt(numbers, target)
  return Problem(id=problem_id(prompt), prompt=prompt, reference="",
                 metadata={"numbers": numbers, "target": target})


@pytest.mark.parametrize("completion,reward", [
    ("#### (25 + 5) * 4", 1.0),
    ("#### 4 * (25 + 5) = 120", 1.0),
    ("Let me think.\n120 = 4 * (25 + 5)", 1.0),   # no marker: the last line
    ("#### 25 * 5 - 5", 1.0),                     # 5 is given twice
    ("#### 25 * 5 - 5 - 0", 0.0),                 # 0 is not given
    ("#### 4 * 25 + 5 + 5 + 5 + 5", 0.0),         # 5 used more often than given
    ("#### 100 + 20", 0.0),                       # numbers not in the list
    ("#### (25 + 5) * 4 + 1", 0.0),               # wrong value
    ("#### 120", 0.0),
    ("#### 25 / (5 - 5)", 0.0),                   # division by zero
    ("#### 5 ** 4", 0.0),                         # operator outside the whitelist
    ("#### 4 \u00d7 (25 + 5)", 1.0),              # unicode times
    ("<answer>(25+5)*4</answer>", 1.0),
    ("", 0.0),
])
def test_countdown_scores(completion, reward):
  task = get_task("countdown")
  assert task.score(_puzzle([4, 25, 5, 5], 120), completion) == reward


def test_countdown_fractions_are_exact():
  task = get_task("countdown")
  assert task.score(_puzzle([6, 4, 2], 3), "#### 6 / 4 * 2") == 1.0
  assert task.score(_puzzle([1, 3, 3], 1), "#### 1 / 3 * 3") == 1.0


def test_countdown_never_executes_code(tmp_path):
  marker = tmp_path / "pwned"
  task = get_task("countdown")
  problem = _puzzle([4, 25, 5], 120)
  for attack in [f"#### __import__('pathlib').Path('{marker}').touch()",
                 f"__import__('pathlib').Path('{marker}').touch()",
                 "#### __import__('os')",
                 "#### (lambda: 1)()", "#### [x for x in ()]", "#### 9" * 300]:
    assert task.score(problem, attack) == 0.0
  assert not marker.exists()
  with pytest.raises(expressions.ExpressionError):
    expressions.evaluate(f"__import__('pathlib').Path('{marker}').touch()")
  assert not marker.exists()


def test_countdown_generation_is_always_solvable():
  task = get_task("countdown")
  for level in range(1, 6):
    for p in task.train_problems(0, 40, difficulty=level) + task.heldout(10, level):
      numbers, target = p.metadata["numbers"], p.metadata["target"]
      assert task.score(p, f"#### {p.reference}") == 1.0, p
      solution = task.can_solve(p.prompt)
      assert solution is not None, p
      assert task.score(p, f"#### {solution}") == 1.0, (p, solution)
      assert 1 <= target <= 1000 and target not in numbers


def test_countdown_can_solve_rejects():
  task = get_task("countdown")
  assert task.can_solve(countdown.format_prompt([1, 1], 7)) is None
  assert task.can_solve("make 10 from some numbers") is None
  p = task.parse_problem(countdown.format_prompt([3, 7, 2], 20))
  assert p.difficulty == 2 and task.score(p, f"#### {p.reference}") == 1.0


# --- reasoning-gym ----------------------------------------------------------------------


def test_reasoning_gym_wraps_generator_and_its_scorer():
  _reasoning_gym_installed()
  task = get_task("reasoning_gym:basic_arithmetic")
  assert task.difficulty_range is None and not task.procedural
  p = task.problem(0, 0)
  assert p.prompt.endswith("Give your final answer after '####'.")
  assert task.score(p, f"Let me compute.\n#### {p.reference}") == 1.0
  assert task.score(p, f"<answer>{p.reference}</answer>") == 1.0
  assert task.score(p, f"so it is {p.reference}") == 1.0     # numeric: the last number
  assert task.score(p, "#### not a number") == 0.0
  assert task.score(p, "") == 0.0
  assert task.can_solve(p.prompt) is None


def test_reasoning_gym_answers_that_could_run_code_are_refused_before_scoring():
  """countdown's scorer hands the answer to sympy's parse_expr, which evals it, in the
  process that reports the reward: an answer that runs code there could report 1.0.
  Every answer that could run code (calls of non-math names, attributes, dunders) is
  refused with reward 0 before a scorer sees it; a real answer still scores."""
  _reasoning_gym_installed()
  from selfimprove_jax.tasks.reasoning_gym_task import code_in_answer
  task = get_task("reasoning_gym:countdown")
  p = task.problem(0, 0)
  forged = b'{"value": {"reward": 1.0}}'
  attacks = [
      f"__import__('os').write(3, {forged!r}) and __import__('os')._exit(0)",
      f"open('/proc/self/fd/3', 'wb').write({forged!r})",
      "exec(\"import os; os._exit(0)\")",
      "S(\"1\").func",
      "sympify('x')",
      "(lambda: 1)()",
      "().real",
  ]
  verdicts = task.verify_batch([p] * len(attacks), [f"#### {a}" for a in attacks])
  assert [v.reward for v in verdicts] == [0.0] * len(attacks)
  assert all(v.status == "refused" and "could run as code" in v.detail for v in verdicts)
  assert task.score(p, f"#### {p.reference}") == 1.0
  for fine in ("(3 + 5) * 2 - 1", "sqrt(2)*x**2 + sin(x)", "f(x) = 3.5 * x", "[1, 2.5]",
               "factorial(5) / 2"):
    assert code_in_answer(fine) is None, fine


def test_reasoning_gym_multiline_answers():
  _reasoning_gym_installed()
  task = get_task("reasoning_gym:sudoku")
  p = task.problem(0, 0)
  assert len(p.reference.splitlines()) == 9
  assert task.score(p, f"Here is the grid.\n#### {p.reference}\nHope it helps!") == 1.0
  assert task.score(p, "#### " + p.reference.splitlines()[0]) < 1.0


def test_reasoning_gym_errors(monkeypatch):
  _reasoning_gym_installed()
  with pytest.raises(UserError, match="no such generator.*leg_counting"):
    get_task("reasoning_gym:not_a_generator")
  with pytest.raises(UserError, match="bad generator options"):
    get_task("reasoning_gym:leg_counting", no_such_field=3)
  monkeypatch.setitem(sys.modules, "reasoning_gym", None)
  with pytest.raises(UserError, match=r"pip install 'selfimprove_jax\[reasoning\]'"):
    get_task("reasoning_gym:leg_counting")


# --- jsonl ------------------------------------------------------------------------------


def test_jsonl_split_and_scoring(jsonl_file):
  task = get_task(f"jsonl:{jsonl_file}")
  heldout = task.heldout()
  assert len(heldout) == 5  # ceil(10% of 41)
  epoch = task.train_problems(seed=0, count=36)
  assert len({p.id for p in epoch}) == 36  # one epoch visits every training line once
  assert task.heldout(2) == heldout[:2]
  p = next(q for q in heldout + epoch if q.prompt == "What is 12 plus 12?")
  assert task.score(p, "24") == 1.0
  assert task.score(p, "12 + 12 = 24.0") == 1.0
  assert task.score(p, "#### 24") == 1.0
  assert task.score(p, "25") == 0.0
  paris = next(q for q in heldout + epoch if q.reference == "Paris")
  assert task.score(paris, "  paris. ") == 1.0
  assert task.score(paris, "#### PARIS") == 1.0
  assert task.score(paris, "The capital is Lyon") == 0.0
  assert task.score(paris, "#### Paris\nIt is a lovely city.") == 1.0
  assert task.score(paris, "") == 0.0
  half = get_task(f"jsonl:{jsonl_file}", heldout_fraction=0.5)
  assert {p.id for p in heldout} <= {p.id for p in half.heldout()}  # same hash order


def test_heldout_twins_never_train(tmp_path):
  """Prompts that differ only in case, whitespace or sentence punctuation are one
  problem: a held-out one's twins never train, and each is held out once."""
  rows = []
  for i in range(40):
    q = f"What is {i} plus {i}?"
    rows += [{"prompt": q, "answer": str(2 * i)},
             {"prompt": f"  what  is {i}\nplus {i} ", "answer": str(2 * i)},
             {"prompt": q.upper().replace("?", "."), "answer": str(2 * i)}]
  rows.append({"prompt": "What is 3 * 4?", "answer": "12"})    # operators count:
  rows.append({"prompt": "What is 3 - 4?", "answer": "-1"})    # not twins
  path = tmp_path / "twins.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  task = get_task(f"jsonl:{path}", heldout_fraction=0.2)
  heldout, train = task.heldout(), task.train_problems(0, 200)
  assert heldout and len(heldout) == math.ceil(0.2 * 42)
  keys = {text_key(p.prompt) for p in heldout}
  assert len(keys) == len(heldout)                  # one per problem
  assert not keys & {text_key(p.prompt) for p in train}
  assert not any(task.is_heldout(p.id) for p in train)
  twins = sum(3 if "plus" in p.prompt else 1 for p in heldout)
  assert sum(task.is_heldout(p.id) for p in read_jsonl(str(path))) == twins
  assert task.heldout_twins == twins - len(heldout)
  assert text_key("What is 3 * 4?") != text_key("What is 3 - 4?")
  assert text_key("Ｗhat  is 1,000?") == text_key("what is 1000")


def test_jsonl_bad_files(tmp_path):
  with pytest.raises(UserError, match="missing.jsonl: no such file"):
    get_task(f"jsonl:{tmp_path / 'missing.jsonl'}")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": \n')
  with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
    get_task(f"jsonl:{bad}")
  bad.write_text('{"prompt": "a", "answer": "1"}\n\n{"question": "b", "answer": "2"}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:3: needs a non-empty string 'prompt'"):
    get_task(f"jsonl:{bad}")
  bad.write_text('{"prompt": "a", "answer": "1"}\n')
  with pytest.raises(UserError, match="at least 2"):
    get_task(f"jsonl:{bad}")


# --- registry and helpers ---------------------------------------------------------------


def test_registry_errors():
  with pytest.raises(UserError, match="unknown task 'sudoku'.*arithmetic.*countdown.*jsonl"):
    get_task("sudoku")
  with pytest.raises(UserError, match="unknown task"):
    get_task("jsonl:")
  with pytest.raises(UserError, match="bad options"):
    get_task("arithmetic", digits=3)
  with pytest.raises(UserError, match="operators"):
    get_task("arithmetic", operators="+/")
  with pytest.raises(UserError, match="heldout_fraction"):
    get_task("countdown", heldout_fraction=1.5)


def test_number_parsing():
  assert answers.parse_number("1,234.50") == answers.parse_number("1234.5")
  assert answers.parse_number("$-3.") == -3
  assert answers.parse_number("3/4") == answers.parse_number("0.75")
  assert answers.parse_number("12abc") is None and answers.parse_number(None) is None
  assert answers.numbers_equal("0.333333333333", "1/3")
  assert not answers.numbers_equal("0.33", "1/3")
  assert answers.last_number("from 3, 4 and 5") == "5"
  assert answers.extract_numeric("no digits") is None


def test_marked_extraction_round_trips(jsonl_file):
  # Majority voting re-scores an extracted answer as "#### <answer>": that must give the
  # same reward as the completion it came from.
  for task in _tasks(jsonl_file):
    for p in task.train_problems(0, 5) + task.heldout(2):
      for c in [p.reference, f"so the answer is {p.reference}.", f"#### {p.reference}",
                "no idea", "", f"{p.reference} or maybe 17"]:
        answer = task.extract_answer(c, p)
        again = 0.0 if answer is None else task.score(p, f"#### {answer}")
        assert again == task.score(p, c), (task.name, p.prompt, c, answer)
