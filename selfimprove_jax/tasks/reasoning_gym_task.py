"""`reasoning_gym:<name>`: any generator of the `reasoning-gym` package, scored by its own
`score_answer`.

reasoning-gym is an optional extra (`pip install 'selfimprove_jax[reasoning]'`): it pins
about twenty packages (matplotlib, sympy, pycosat, ...), and only this task needs them.

Prompt: the generator's question followed by "Give your final answer after '####'."
The extraction follows `answers.py` (`####`, then `<answer>` tags, which are
reasoning-gym's own convention, then `\\boxed{}`), keeping as many lines of the marked
text as the reference has (a sudoku grid is nine lines, most answers one); without a
marker, the number a final statement or the last number states when the reference
is a number (answers.fallback_number), else the last non-empty line; `<think>` blocks
are dropped first, and a reply cut off at its token budget counts only its closed
marked answer (answers.finished_part).
Generators without a single oracle answer (e.g. propositional_logic) have reference ""
and are judged by `score_answer` alone.

Streams: reasoning-gym item `idx` of a dataset built with `seed` is drawn from
`Random(seed + idx)`, so datasets with nearby seeds share items. We therefore build
datasets in chunks of `CHUNK` items with seeds hashed from (our seed, split, chunk,
attempt), and keep train and held-out disjoint by the same id partition as every task
(training skips held-out ids, the held-out split takes only them, from a fixed seed).
Extra options are passed to the generator's config (e.g. `min_terms=2`).

An answer that could run code in a scorer that evaluates it (a call of a name that is
no math function, an attribute access, a dunder, `lambda`, `import`) scores 0 with
status `refused` before any scorer sees it: code run inside a scorer reports whatever
reward it likes (`code_in_answer`).

Scoring runs in the sandbox, always. Several upstream scorers execute the answer (Python
`eval` in n_queens or spiral_matrix, `sympy.parse_expr` in countdown or the integration
tasks) with no limit: `9**9**9` would hang the run, `exit()` would kill it, at every
resume. Upstream code changes, so no generator is trusted: every `score_answer` call is
made in a sandbox worker (which imports reasoning-gym once) under `score_timeout_s` and
`score_memory_mb`; an answer that hits a limit scores 0 and its record says why. The
screened answers go to the sandbox in batches (a child scores up to `SCORE_BATCH`): an
answer whose batch hit a limit or raised is scored again alone, so its record is what
scoring it alone says.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from selfimprove_jax import sandbox
from selfimprove_jax.errors import UserError
from selfimprove_jax.tasks import answers
from selfimprove_jax.tasks import problem as problem_lib
from selfimprove_jax.tasks.problem import Problem, Verdict

# Some generators precompute per-item state for `size` items, so datasets stay small.
CHUNK = 256
SCORE_BATCH = 64   # answers scored by one sandboxed child (verify_batch)
INSTRUCTION = "Give your final answer after '####'."

# Answers a scorer could run as code. Several scorers `eval` or `sympy.parse_expr` the
# answer inside the process that reports the reward, so code in the answer can report
# any reward it likes (the sandbox contains it, but cannot tell a forged reward from a
# real one). What such code needs, Python evaluates from calls, attribute access or
# dunders; an answer with one of those is refused before any scorer sees it, except a
# call of a math function an answer may state (sin(x), sqrt(2), factorial(5)).
_MATH_CALLS = frozenset("""sin cos tan cot sec csc asin acos atan acot asec acsc atan2 sinh
    cosh tanh coth asinh acosh atanh exp log ln sqrt cbrt root Abs abs sign floor ceiling
    factorial binomial gamma erf Max Min max min gcd lcm re im conjugate arg""".split())
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_ATTRIBUTE = re.compile(r"(?<![0-9])\.\s*[A-Za-z_]")
_KEYWORD = re.compile(r"__|\b(?:lambda|import)\b")


def code_in_answer(answer: str) -> Optional[str]:
  """Why `answer` could run code in a scorer that evaluates it (None: it could not):
  a call of a name that is no math function (a single letter is a variable: f(x)), an
  attribute access, a dunder, `lambda` or `import`."""
  m = _KEYWORD.search(answer)
  if m:
    return f"the answer holds {m.group(0)!r}"
  for m in _CALL.finditer(answer):
    name = m.group(1)
    if name not in _MATH_CALLS and not re.fullmatch(r"[a-z]", name):
      return f"the answer calls {name}(...)"
  m = _ATTRIBUTE.search(answer)
  if m:
    return f"the answer reads an attribute ({m.group(0).strip()!r})"
  return None


def _import_reasoning_gym():
  try:
    import reasoning_gym  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("task reasoning_gym: the reasoning-gym package is not installed; "
                    "run: pip install 'selfimprove_jax[reasoning]'") from None
  return reasoning_gym


def available() -> list[str]:
  """Names of the installed reasoning-gym generators (empty when not installed)."""
  try:
    from reasoning_gym.factory import DATASETS  # pylint: disable=import-outside-toplevel
  except ImportError:
    return []
  return sorted(DATASETS)


class ReasoningGymTask:
  """One reasoning-gym generator behind the task protocol (no difficulty knob)."""

  procedural = False
  difficulty_range = None
  default_difficulty = 0
  answer_format = ("the answer after '####' (<answer> tags or \\boxed{} also count); else the "
                   "last number for numeric references, else the last line")
  # a reply cut off at its token budget states only its closed marked answer (tasks.verify)
  finished_part = staticmethod(answers.finished_part)

  def __init__(self, generator: str,
               heldout_fraction: float = problem_lib.DEFAULT_HELDOUT_FRACTION,
               score_timeout_s: float = 5.0, score_memory_mb: int = 512, **config: Any):
    rg = _import_reasoning_gym()
    from reasoning_gym.factory import DATASETS  # pylint: disable=import-outside-toplevel
    if generator not in DATASETS:
      raise UserError(f"task reasoning_gym:{generator}: no such generator; available: "
                      f"{', '.join(sorted(DATASETS))}")
    self.name = f"reasoning_gym:{generator}"
    self.generator = generator
    self.config = dict(config)
    self.heldout_fraction = problem_lib.check_fraction(heldout_fraction, self.name)
    self._datasets: dict = {}
    if not (score_timeout_s > 0 and score_memory_mb > 0):
      raise UserError(f"task {self.name}: score_timeout_s and score_memory_mb must be > 0")
    self.score_limits = sandbox.Limits(timeout_s=float(score_timeout_s),
                                       memory_mb=int(score_memory_mb))
    try:  # validate the options once, so a typo fails here and not mid-run
      rg.create_dataset(generator, seed=0, size=1, **self.config)
    except (TypeError, ValueError, AssertionError) as e:
      raise UserError(f"task {self.name}: bad generator options {self.config}: {e}") from None

  def _dataset(self, seed: int):
    if seed not in self._datasets:
      if len(self._datasets) >= 32:  # a stream touches one or two chunks at a time
        self._datasets.pop(next(iter(self._datasets)))
      self._datasets[seed] = _import_reasoning_gym().create_dataset(
          self.generator, seed=seed, size=CHUNK, **self.config)
    return self._datasets[seed]

  def _item(self, split: str, seed: int, chunk: int, attempt: int, pos: int) -> Problem:
    entry = self._dataset(problem_lib.derive_seed(self.generator, seed, split, chunk,
                                                  attempt))[pos]
    prompt = f"{entry['question'].strip()}\n\n{INSTRUCTION}"
    answer = "" if entry.get("answer") is None else entry["answer"]
    return problem_lib.make_problem(
        prompt, answer, 0,
        {"question": entry["question"], "rg_metadata": entry.get("metadata", {})})

  def problem(self, seed: int, index: int, difficulty: Optional[int] = None) -> Problem:
    """Training problem `index` of stream `seed` (never in the held-out partition)."""
    chunk, pos = divmod(index, CHUNK)
    for attempt in range(problem_lib.MAX_ATTEMPTS):
      p = self._item("train", seed, chunk, attempt, pos)
      if not self.is_heldout(p.id):
        return p
    raise UserError(f"task {self.name}: the generator repeats problems of the held-out "
                    f"split only; it has too few distinct problems")

  def train_problems(self, seed: int, count: int, difficulty: Optional[int] = None,
                     start: int = 0) -> list[Problem]:
    """Training problems `start .. start+count-1` of stream `seed`."""
    return [self.problem(seed, i) for i in range(start, start + count)]

  def heldout(self, count: Optional[int] = None,
              difficulty: Optional[int] = None) -> list[Problem]:
    """`count` (default 200) distinct held-out problems from the fixed seed."""
    count = 200 if count is None else count
    out, seen = [], set()
    budget = int(count / self.heldout_fraction * 8) + CHUNK
    for k in range(budget):
      chunk, pos = divmod(k, CHUNK)
      p = self._item("heldout", problem_lib.HELDOUT_SEED, chunk, 0, pos)
      if p.id in seen or not self.is_heldout(p.id):
        continue
      seen.add(p.id)
      out.append(p)
      if len(out) == count:
        return out
    raise UserError(f"task {self.name}: only {len(out)} distinct held-out problems found, "
                    f"fewer than the {count} asked for")

  def fresh(self, count: int, seed: int, exclude: frozenset = frozenset(),
            difficulty: Optional[int] = None) -> list[Problem]:
    """Up to `count` new held-out-side problems from the generator's stream `seed` (a
    split name no training or fixed split uses), none in `exclude`."""
    out, seen = [], set(exclude)
    for k in range(int(count / self.heldout_fraction * 8) + CHUNK):
      chunk, pos = divmod(k, CHUNK)
      p = self._item("fresh", seed, chunk, 0, pos)
      if p.id in seen or not self.is_heldout(p.id):
        continue
      seen.add(p.id)
      out.append(p)
      if len(out) == count:
        break
    return out

  def is_heldout(self, pid: str) -> bool:
    """True when the id is on the held-out side of the partition."""
    return problem_lib.in_heldout_partition(pid, self.heldout_fraction)

  def extract_answer(self, completion: str,
                     problem: Optional[Problem] = None) -> Optional[str]:
    """Marked answer; else the last number (numeric reference) or the last line."""
    if not isinstance(completion, str):
      return None
    marked = answers.extract_marked(completion)
    if marked is not None and problem is not None:
      return answers.first_lines(marked, len(problem.reference.splitlines()))
    if marked is not None:
      return marked
    if problem is not None and answers.parse_number(problem.reference) is not None:
      return answers.fallback_number(completion)
    reply = answers.strip_thinking(completion) or ""
    lines = [ln.strip() for ln in reply.splitlines() if ln.strip()]
    return lines[-1] if lines else None

  def verify_batch(self, problems: list, completions: list) -> list[Verdict]:
    """The generator's own `score_answer` on each extracted answer, in the sandbox, in
    parallel; clipped to [0, 1]. A limit hit or a crash of the scorer scores 0.

    The screened answers are scored up to `SCORE_BATCH` to a sandboxed child
    (`_score_batches`); an answer whose batch did not end well is scored again alone
    (`rg_score`), so its verdict, status and detail are what scoring it alone gives."""
    verdicts: list = [Verdict(0.0, "ok", "no answer found")] * len(problems)
    todo = []
    for i, (p, c) in enumerate(zip(problems, completions)):
      answer = self.extract_answer(c, p)
      refused = code_in_answer(answer) if answer is not None else None
      if refused:
        verdicts[i] = Verdict(0.0, "refused", f"{refused}, which a scorer could run as code")
      elif answer is not None:
        todo.append((i, {"answer": answer, "entry": {
            "question": p.metadata.get("question", p.prompt), "answer": p.reference,
            "metadata": p.metadata.get("rg_metadata", {})}}))
    rewards = self._score_batches([item for _, item in todo])
    for (i, _), reward in zip(todo, rewards):
      if reward is not None:
        verdicts[i] = Verdict(min(max(reward, 0.0), 1.0))
    alone = [(i, item) for (i, item), reward in zip(todo, rewards) if reward is None]
    results = sandbox.run_jobs(
        "rg_score", [{"generator": self.generator, "config": self.config, **item}
                     for _, item in alone], self.score_limits)
    for (i, _), r in zip(alone, results):
      if r.ok:
        verdicts[i] = Verdict(min(max(sandbox.ScoreValue.from_value(r.value).reward, 0.0), 1.0))
      else:   # the scorer chokes on malformed or hostile output: that output is wrong
        tail = r.stderr.strip().splitlines()[-1:] or [""]
        verdicts[i] = Verdict(0.0, r.status, f"{r.detail} {tail[0]}".strip()[:300])
    return verdicts

  def _score_batches(self, items: list) -> list[Optional[float]]:
    """Each item's ({answer, entry}) reward, scored in batches (worker `rg_score_many`),
    or None where its batch did not end well (a limit hit, a scorer that raised or
    exited): those are scored alone. A batch has the time and memory limits of one
    answer, enough for dozens of ordinary answers, so an answer that hangs costs its
    batch's limit once more. Batches, not one child per answer: a child (fork, limits,
    clean-up) cost a worker 14-48 ms, against well under 1 ms for most scorers, which
    held scoring to 42-139 answers/s on two workers (benchmarks/RESULTS.md, "Host
    overhead per iteration"). The answers are screened (`code_in_answer`) before any
    scorer sees them, so none can run code that reaches the others in its batch."""
    size = min(SCORE_BATCH, max(1, -(-len(items) // 16)))   # >= 16 batches: every worker busy
    chunks = [items[k:k + size] for k in range(0, len(items), size)]
    results = sandbox.run_jobs(
        "rg_score_many", [{"generator": self.generator, "config": self.config, "items": c}
                          for c in chunks], self.score_limits)
    rewards: list = []
    for chunk, r in zip(chunks, results):
      got = r.value["rewards"] if r.ok else []
      rewards += got if len(got) == len(chunk) else [None] * len(chunk)
    return rewards

  def score(self, problem: Problem, completion: str) -> float:
    """`verify_batch` of one completion: its reward."""
    return self.verify_batch([problem], [completion])[0].reward

  def can_solve(self, prompt: str) -> Optional[str]:
    """Generators cannot parse free-form prompts: always None (`procedural` is False)."""
    return None
