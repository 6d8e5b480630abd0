"""The grader never accepts a wrong answer: a table of right answers in another form and
wrong-but-close ones, checked through the jsonl task (our numeric check for plain
numbers, math-verify in the sandbox for LaTeX references, tasks/math_check.py), plus
cut-off replies and `<think>` blocks. The problems are our own."""

import json

import pytest

from selfimprove_jax import tasks
from selfimprove_jax.tasks import answers, math_check
from selfimprove_jax.tasks.problem import make_problem

try:   # a dependency: missing, the suite fails here saying what to install
  import math_verify  # noqa: F401
except ImportError as e:  # pragma: no cover
  raise ImportError("tests/test_grading.py needs math-verify: "
                    "pip install math-verify==0.9.0") from e

# (reference, reply): right, written in another form than the reference
RIGHT = [
    ("68", "23 + 45 = 68"),
    ("68", "The answer is 68."),
    ("42", "42"),
    ("375", "#### \\$375"),
    ("-3", "#### \u22123"),
    ("1234", "The answer is 1,234."),
    ("0.5", "\\boxed{\\frac{1}{2}}"),
    ("0.5", "\\boxed{\\dfrac12}"),
    ("120", "#### 120^\\circ"),
    ("120", "The angle is 120\u00b0."),
    ("5", "\\boxed{x = 5}"),
    ("75", "#### 75\\%"),
    ("12", "<think>maybe 11, no</think>The answer is 12."),
    ("3/4", "The answer is 3/4"),
    ("2", "The result is 2 because 8 / 4 = 2"),
    ("7", "<answer>7</answer>"),
    ("5", "#### 5 cm"),
    ("1200", "**Answer:** \\$1,200"),
    ("\\frac{1}{2}", "\\boxed{\\dfrac12}"),
    ("\\frac{1}{2}", "\\boxed{0.5}"),
    ("5\\sqrt{2}", "\\boxed{\\sqrt{50}}"),
    ("(2,2)", "\\boxed{(2, 2)}"),
    ("120^\\circ", "\\boxed{120}"),
    ("x^2+2x+1", "\\boxed{(x+1)^2}"),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt3}{2}}"),
    ("2\\pi", "\\boxed{\\pi \\cdot 2}"),
    ("\\frac{1}{2}", "The answer is \\frac{1}{2}."),
    ("\\frac{3}{4}", "#### 0.75"),
    ("\\sqrt{2}", "\\boxed{2^{1/2}}"),
    ("x=5", "\\boxed{5}"),
    ("3x+1", "\\boxed{1+3x}"),
    ("[1,3)", "\\boxed{[1, 3)}"),
    ("\\frac{7}{2}", "\\boxed{3.5}"),
    ("e^{2}", "\\boxed{e^2}"),
    ("\\dfrac{2}{3}", "The answer is $\\frac{2}{3}$."),
    ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}"),
    ("(1,-1)", "\\boxed{(1, -1)}"),
    ("\\frac{1}{4}", "<think>a quarter?</think>\\boxed{0.25}"),
    ("-\\frac{1}{2}", "\\boxed{-0.5}"),
    ("(3,4)", "#### (3, 4)"),
]
# (reference, reply): wrong, close to right (the false positives among them)
WRONG = [
    ("4", "\\boxed{\\frac{3}{4}}"),
    ("2", "\\boxed{4^2}"),
    ("2", "#### \\sqrt{2}"),
    ("3", "\\boxed{x^3}"),
    ("10", "\\boxed{10\\pi}"),
    ("6", "\\boxed{2\\times10^6}"),
    ("2", "The result is 24 because 428 = 24 * 4 = 2"),
    ("3", "x^3"),
    ("4", "$\\frac{3}{4}$"),
    ("10", "10x"),
    ("5", "<think>so the answer is 5"),
    ("7", "<think>\\boxed{7}</think>The answer is 8."),
    ("65", "The answer is 68. Subtracting 3 gives 65."),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
    ("5\\sqrt{2}", "\\boxed{\\sqrt{52}}"),
    ("(2,2)", "\\boxed{(2,3)}"),
    ("[1,3)", "\\boxed{[1,3]}"),
    ("120^\\circ", "\\boxed{121}"),
    ("x^2+2x+1", "\\boxed{(x-1)^2}"),
    ("\\frac{1}{2}", "\\boxed{0.51}"),
    ("\\frac{\\pi}{3}", "\\boxed{\\frac{\\pi}{4}}"),
    ("\\frac{3}{4}", "The answer is \\frac{3}{4} because 6/8 = 0.7"),
]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  path = tmp_path_factory.mktemp("grading") / "m.jsonl"
  path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "answer": str(i)})
                            for i in range(3)))
  return tasks.get_task(f"jsonl:{path}", math_timeout_s=5.0)


def test_table_sizes_and_checkers():
  """The table is as large as promised and exercises both checkers."""
  assert len(RIGHT) >= 40 and len(WRONG) >= 20
  kinds = {math_check.checker_for(ref) for ref, _ in RIGHT + WRONG}
  assert kinds == {"number", "math"}


def test_right_in_another_form_passes(task):
  probs = [make_problem(f"r{i}", ref) for i, (ref, _) in enumerate(RIGHT)]
  verdicts = task.verify_batch(probs, [reply for _, reply in RIGHT])
  refused = [(ref, reply, v) for (ref, reply), v in zip(RIGHT, verdicts) if v.reward != 1.0]
  assert not refused


def test_wrong_but_close_fails(task):
  probs = [make_problem(f"w{i}", ref) for i, (ref, _) in enumerate(WRONG)]
  verdicts = task.verify_batch(probs, [reply for _, reply in WRONG])
  accepted = [(ref, reply) for (ref, reply), v in zip(WRONG, verdicts) if v.reward != 0.0]
  assert not accepted


def test_record_answer_kind_math_sends_a_plain_number_to_math_verify(task):
  p = make_problem("k", "4", metadata={"answer_kind": "math"})
  assert math_check.checker_for("4") == "number"
  assert task.verify_batch([p, p], ["\\boxed{\\sqrt{16}}", "\\boxed{\\sqrt{15}}"])[0].reward == 1.0
  assert task.score(p, "\\boxed{\\sqrt{15}}") == 0.0


def test_hostile_answer_hits_the_limit_and_says_so(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n')
  quick = tasks.get_task(f"jsonl:{path}", math_timeout_s=1.0)
  p = make_problem("h", "\\frac{1}{2}")
  v = quick.verify_batch([p], ["\\boxed{9^{9^{9^{9}}}}"])[0]
  assert v.reward == 0.0 and v.status in ("timeout", "memory") and "math-verify" in v.detail


def test_cut_off_reply_states_only_its_closed_marked_answer(task):
  """A reply cut off at its budget: no fallback reads it (its last number may be an
  operand it was restating); a closed marked answer before the cut still counts."""
  p = make_problem("c", "45")
  replies = ["Let me add: 23 + 45", "#### 45", "#### 45\nLet me check: 20 +",
             "\\boxed{45} because 23 +", "<think>23 + 22 = 45"]
  cut = [v.reward for v in tasks.verify(task, [p] * 5, replies, truncated=[True] * 5)]
  assert cut == [0.0, 0.0, 1.0, 1.0, 0.0]
  # the same texts, ended naturally: the fallback reads the first two
  whole = [v.reward for v in tasks.verify(task, [p] * 5, replies, truncated=[False] * 5)]
  assert whole == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_votes_and_reports_read_a_cut_off_reply_as_the_verifier_does():
  """`answer_as_verified` (held-out rows, maj@k votes, self-instruct votes): a cut-off
  reply states only its closed marked answer, as `verify` judges it."""
  from selfimprove_jax.evaluate import heldout
  from selfimprove_jax.records import Sample
  from selfimprove_jax.tasks.answers import answer_as_verified
  arith = tasks.get_task("arithmetic")
  p = arith.heldout(1)[0]
  restated = f"Let me restate it: {p.reference}"
  assert answer_as_verified(arith, restated, p) == p.reference
  assert answer_as_verified(arith, restated, p, truncated=True) is None
  assert answer_as_verified(arith, f"#### {p.reference}\nchecking", p, truncated=True) == p.reference

  def generate(prompts, sp, n, seed):   # every reply cut off while restating the answer
    return [[Sample(completion=restated, finish_reason="length", num_tokens=8)
             for _ in range(n)] for _ in prompts]

  row = heldout.results(generate, arith, [p], heldout.Settings(maj_k=3), seed=0)[0]
  assert row["answer"] is None and row["majority"] is None and row["reward"] == 0.0


def test_arithmetic_cut_off_reply_is_never_right():
  arith = tasks.get_task("arithmetic")
  p = arith.heldout(1)[0]
  reply = f"Let me restate it: {p.reference}"
  assert tasks.verify(arith, [p], [reply])[0].reward == 1.0
  assert tasks.verify(arith, [p], [reply], truncated=[True])[0].reward == 0.0


@pytest.mark.parametrize("reply,expected", [
    ("42", "42"), ("The answer is 42.", "42"), ("23 + 19 = 42", "42"),
    ("The result is 24 because 428 = 24 * 4 = 2", None),
    ("<think>it is 41</think>\n42", "42"), ("<think>it is 42", None),
    ("x</think>The answer is 42", "42"),
])
def test_fallback_rule(reply, expected):
  assert answers.extract_numeric(reply) == expected
