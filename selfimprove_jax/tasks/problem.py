"""The task protocol: a `Problem` record, the `Task` interface, and the held-out partition.

Every task, whatever its source, hands the loop `Problem`s and scores completions. Two
properties the loop relies on are built here once for all tasks:

* Streams are random-access and deterministic: training problem `index` under `seed`
  is a pure function of (task options, seed, index, difficulty), so a resumed run (or a
  Grain `MapDataset` over indices) regenerates exactly the same stream.
* Train and held-out are disjoint by construction: a problem's id is a hash of its
  prompt, a fixed hash partition of ids is the held-out side (`in_heldout_partition`),
  held-out sets draw only ids inside it and training streams skip every id inside it.
  A problem can therefore never be both, whatever the seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import unicodedata
from typing import Any, Callable, Optional, Protocol, Sequence, runtime_checkable

from selfimprove_jax.errors import UserError

# Fixed seed of every held-out split: the held-out set never depends on the run's seed.
HELDOUT_SEED = 20240917
DEFAULT_HELDOUT_FRACTION = 0.1
# How many candidates a stream may reject (held-out ids, duplicates) before it gives up:
# with the default fraction a training draw needs 1.1 candidates on average.
MAX_ATTEMPTS = 64


# The metadata key of a label-free problem's answer: the task keeps it out of
# `Problem.reference` so nothing trains on it, and only the label-free metrics (TTRL,
# pseudo-label precision) read it (tasks/jsonl_task.py).
HIDDEN_REFERENCE = "hidden_reference"


@dataclasses.dataclass(frozen=True)
class Problem:
  """One prompt with its reference answer.

  `id` is `problem_id(prompt)`: stable across runs and machines, used as the key of the
  difficulty ledger and for held-out leak checks. `prompt` is the complete user message,
  including the instruction about the answer format. `metadata` holds what the task's
  verifier needs (e.g. countdown's numbers and target) and is not part of equality."""
  id: str
  prompt: str
  reference: str
  difficulty: int = 0
  metadata: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

  def to_json(self) -> dict:
    """A JSON-ready dict (metadata is copied as is; tasks keep it JSON-serialisable)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Problem":
    """Inverse of `to_json`."""
    return cls(id=d["id"], prompt=d["prompt"], reference=str(d["reference"]),
               difficulty=int(d.get("difficulty", 0)), metadata=dict(d.get("metadata") or {}))


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A verifier's judgement of one completion, as records carry it.

  `status` is 'ok' when the check ran to its end (whatever the reward), else why it did
  not: a sandbox status ('timeout', 'memory', 'error', 'killed', ...) for verifiers that
  run model text in the sandbox; such a completion gets reward 0. `detail` says what
  failed in words (the first failing test, the error, the limit hit); it is what the
  `execution_feedback` refinement strategy shows the model."""
  reward: float
  status: str = "ok"
  detail: str = ""


def problem_id(prompt: str) -> str:
  """Stable id of a prompt: the first 16 hex digits of its SHA-256."""
  return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def make_problem(prompt: str, reference: Any, difficulty: int = 0,
                 metadata: Optional[dict] = None) -> Problem:
  """A `Problem` with its id computed from the prompt."""
  return Problem(id=problem_id(prompt), prompt=prompt, reference=str(reference),
                 difficulty=int(difficulty), metadata=dict(metadata or {}))


# sentence punctuation and quotes: what `text_key` ignores (operators, brackets and
# digits count, so "12 - 3" and "12 * 3" stay different problems)
_SENTENCE_PUNCTUATION = str.maketrans("", "", ".,;:!?'\"`\u2018\u2019\u201c\u201d\u2026")


def text_key(text: str) -> str:
  """What 'the same problem' means for the held-out split: the text with case, all
  whitespace and sentence punctuation removed (NFKC first, so full-width and
  compatibility forms match too). Two prompts with one key are twins: one held-out
  prompt makes its twins held-out too."""
  text = unicodedata.normalize("NFKC", text).casefold()
  return "".join(text.translate(_SENTENCE_PUNCTUATION).split())


def id_fraction(pid: str) -> float:
  """Where an id falls in [0, 1): uniform over prompts, used by the held-out partition."""
  return int(pid[:8], 16) / 2.0**32


def in_heldout_partition(pid: str, fraction: float) -> bool:
  """True when the id belongs to the held-out side of the fixed hash partition."""
  return id_fraction(pid) < fraction


def derive_seed(*parts: Any) -> int:
  """A 63-bit seed from any parts (seed, split, index, attempt...), stable across runs.
  Hashing instead of `seed + index` keeps nearby seeds from sharing streams."""
  text = "/".join(str(p) for p in parts)
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def check_fraction(fraction: float, name: str) -> float:
  """Validate a held-out fraction option."""
  fraction = float(fraction)
  if not 0.0 < fraction < 1.0:
    raise UserError(f"task {name}: heldout_fraction must be in (0, 1), got {fraction}")
  return fraction


def draw_train(generate: Callable[[random.Random], Problem], fraction: float, name: str,
               seed: int, index: int, difficulty: int) -> Problem:
  """Training problem `index`: the first candidate outside the held-out partition among
  candidates generated from `derive_seed(seed, 'train', difficulty, index, attempt)`."""
  for attempt in range(MAX_ATTEMPTS):
    p = generate(random.Random(derive_seed(seed, "train", difficulty, index, attempt)))
    if not in_heldout_partition(p.id, fraction):
      return p
  raise UserError(f"task {name}: difficulty {difficulty} has (almost) no problems outside "
                  f"the held-out partition; use another difficulty")


def draw_heldout(generate: Callable[[random.Random], Problem], fraction: float, name: str,
                 count: int, difficulty: int) -> list[Problem]:
  """`count` distinct problems inside the held-out partition, from the fixed seed."""
  out, seen = [], set()
  budget = int(count / fraction * 8) + 1000
  for k in range(budget):
    p = generate(random.Random(derive_seed(HELDOUT_SEED, "heldout", difficulty, k)))
    if p.id in seen or not in_heldout_partition(p.id, fraction):
      continue
    seen.add(p.id)
    out.append(p)
    if len(out) == count:
      return out
  raise UserError(f"task {name}: difficulty {difficulty} yields only {len(out)} distinct "
                  f"held-out problems, fewer than the {count} asked for; ask for fewer or "
                  f"raise the difficulty")


def draw_fresh(generate: Callable[[random.Random], Problem], fraction: float, count: int,
               seed: int, exclude: frozenset, difficulty: int) -> list[Problem]:
  """Up to `count` distinct problems inside the held-out partition, none in `exclude`
  (the fixed splits), from candidates of `derive_seed(HELDOUT_SEED, 'fresh', seed, ...)`:
  a stream no training or fixed split draws from. Fewer when the partition runs out."""
  out, seen = [], set(exclude)
  for k in range(int(count / fraction * 8) + 1000):
    p = generate(random.Random(derive_seed(HELDOUT_SEED, "fresh", seed, difficulty, k)))
    if p.id in seen or not in_heldout_partition(p.id, fraction):
      continue
    seen.add(p.id)
    out.append(p)
    if len(out) == count:
      break
  return out


class ProceduralSplits:
  """The training stream and held-out split of a procedural task, shared by the tasks
  that generate problems from a level and an RNG. The task provides `name`,
  `heldout_fraction`, `_level(difficulty) -> level` and `_generate(level, rng)`."""

  def problem(self, seed: int, index: int, difficulty: Optional[int] = None) -> Problem:
    """Training problem `index` of stream `seed` (never in the held-out partition)."""
    level = self._level(difficulty)
    return draw_train(lambda rng: self._generate(level, rng), self.heldout_fraction,
                      self.name, seed, index, level)

  def train_problems(self, seed: int, count: int, difficulty: Optional[int] = None,
                     start: int = 0) -> list[Problem]:
    """Training problems `start .. start+count-1` of stream `seed`."""
    return [self.problem(seed, i, difficulty) for i in range(start, start + count)]

  def heldout(self, count: Optional[int] = None,
              difficulty: Optional[int] = None) -> list[Problem]:
    """`count` (default 200) distinct held-out problems at `difficulty` (default level)."""
    level = self._level(difficulty)
    return draw_heldout(lambda rng: self._generate(level, rng), self.heldout_fraction,
                        self.name, 200 if count is None else count, level)

  def fresh(self, count: int, seed: int, exclude: frozenset = frozenset(),
            difficulty: Optional[int] = None) -> list[Problem]:
    """Up to `count` new held-out-side problems of stream `seed`, none in `exclude`."""
    level = self._level(difficulty)
    return draw_fresh(lambda rng: self._generate(level, rng), self.heldout_fraction,
                      count, seed, exclude, level)

  def is_heldout(self, pid: str) -> bool:
    """True when the id is on the held-out side of the partition."""
    return in_heldout_partition(pid, self.heldout_fraction)


class FileSplits:
  """The training stream and held-out split of a task read from a file, shared by the
  file tasks (jsonl:, code_jsonl:). The task calls `_split(problems, stream)` once.
  Problems are grouped by `text_key` (twins: prompts that differ only in case,
  whitespace or sentence punctuation); the held-out side is the `heldout_fraction` of
  groups whose lowest id ranks lowest (at least one group stays for training), each
  held out as its first problem in file order, and no member of a held-out group ever
  trains. Only problems with a reference can be held out (a score needs one):
  `_split(..., gradable=...)` names them, the rest train unless a held-out twin has
  them. Epoch e of the training stream is a shuffle seeded by (seed, `stream`, e).

  A separate test file (`test`: its problems, the task option `test_path`) is the test
  split as given (`test_file_problems`); the file's problems that are twins of a test
  problem are dropped before the split, so none trains or validates."""

  def _split(self, problems: list[Problem], stream: str,
             gradable: Optional[Callable[[Problem], bool]] = None,
             test: Sequence[Problem] = ()) -> None:
    self._stream = stream
    self._orders: dict = {}   # (seed, epoch) -> that epoch's shuffle (_epoch_order)
    self._test = list(test) if test else None
    test_keys = {text_key(p.prompt) for p in test}
    self.test_twins = sum(text_key(p.prompt) in test_keys for p in problems)
    problems = [p for p in problems if text_key(p.prompt) not in test_keys]
    if len(problems) < 2:
      raise UserError(f"task {self.name}: fewer than 2 problems are left once the twins of "
                      f"the test file's problems are dropped")
    groups: dict[str, list[Problem]] = {}
    for p in problems:
      groups.setdefault(text_key(p.prompt), []).append(p)
    # a group's rank is its lowest member id (a file without twins splits as by ids)
    candidates = sorted(
        ((min((id_fraction(p.id), p.id) for p in members), key)
         for key, members in groups.items()
         if any(gradable is None or gradable(p) for p in members)))
    n_heldout = min(math.ceil(self.heldout_fraction * len(candidates)), len(groups) - 1)
    heldout_keys = {key for _, key in candidates[:n_heldout]}
    firsts = {key: next(p for p in groups[key] if gradable is None or gradable(p))
              for key in heldout_keys}
    self._heldout = [p for p in problems if firsts.get(text_key(p.prompt)) is p]
    self._heldout_ids = {p.id for key in heldout_keys for p in groups[key]} | {
        p.id for p in test}
    self._train = [p for p in problems if p.id not in self._heldout_ids]
    self.heldout_twins = sum(len(groups[k]) - 1 for k in heldout_keys)

  def problem(self, seed: int, index: int, difficulty: Optional[int] = None) -> Problem:
    """Training problem `index`: epoch `index // n` is a fresh shuffle of the training rows."""
    epoch, pos = divmod(index, len(self._train))
    return self._train[self._epoch_order(seed, epoch)[pos]]

  def _epoch_order(self, seed: int, epoch: int) -> list[int]:
    """The shuffle of epoch `epoch` of stream `seed`, made once: shuffled again for each
    problem, a draw of n problems cost n x the file's rows (12,500 prompts from a
    7,500-row file: 20 s of CPU, 0.1 s now; benchmarks/host_overhead.py). The last
    few epochs are kept (a stream reads one, or two across a boundary); the dict is
    replaced, never changed, so threads that draw problems only ever see a whole one."""
    orders = self._orders
    order = orders.get((seed, epoch))
    if order is None:
      order = list(range(len(self._train)))
      random.Random(derive_seed(seed, self._stream, epoch)).shuffle(order)
      self._orders = {**dict(list(orders.items())[-3:]), (seed, epoch): order}
    return order

  def train_problems(self, seed: int, count: int, difficulty: Optional[int] = None,
                     start: int = 0) -> list[Problem]:
    """Training problems `start .. start+count-1` of stream `seed`."""
    return [self.problem(seed, i) for i in range(start, start + count)]

  def heldout(self, count: Optional[int] = None,
              difficulty: Optional[int] = None) -> list[Problem]:
    """The held-out problems in file order: all of them, or at most `count`."""
    return list(self._heldout if count is None else self._heldout[:count])

  def is_heldout(self, pid: str) -> bool:
    """True when the id is one of the file's held-out problems, a test file's problem,
    or a twin of one of the file's held-out problems."""
    return pid in self._heldout_ids

  def test_file_problems(self) -> Optional[list[Problem]]:
    """The problems of the separate test file, in its order; None without one."""
    return None if self._test is None else list(self._test)


@runtime_checkable
class Task(Protocol):
  """What the loop needs from a task. Implementations are small classes wrapping one
  problem source; shared behaviour lives in functions of this module, not a base class.

  Attributes:
    name: the spec it was built from (`arithmetic`, `reasoning_gym:leg_counting`, ...).
    answer_format: one sentence stating the declared answer convention.
    difficulty_range: (min, max) levels of the difficulty knob, or None without one.
    default_difficulty: level used when `difficulty=None` (0 for tasks without a knob).
    procedural: True when `can_solve` can parse and solve prompts in the task's format.
  """
  name: str
  answer_format: str
  difficulty_range: Optional[tuple[int, int]]
  default_difficulty: int
  procedural: bool

  def problem(self, seed: int, index: int, difficulty: Optional[int] = None) -> Problem:
    """Training problem `index` of the stream `seed` (deterministic, never held-out)."""

  def train_problems(self, seed: int, count: int, difficulty: Optional[int] = None,
                     start: int = 0) -> list[Problem]:
    """Training problems `start .. start+count-1` of the stream `seed`."""

  def heldout(self, count: Optional[int] = None,
              difficulty: Optional[int] = None) -> list[Problem]:
    """The fixed held-out split (distinct problems, disjoint from every training stream)."""

  def is_heldout(self, pid: str) -> bool:
    """True when a problem id belongs to the held-out side (for leak checks)."""

  # Optional: `fresh(count, seed, exclude, difficulty) -> list[Problem]`, for tasks that
  # generate problems: new held-out-side problems of a stream `seed` that no training
  # stream uses, none in `exclude` (evaluate/splits.py's fresh split).

  def extract_answer(self, completion: str,
                     problem: Optional[Problem] = None) -> Optional[str]:
    """The answer the declared extraction finds in a completion, or None. Pass the
    problem when there is one: jsonl and reasoning-gym read numeric references' answers
    as numbers (the fallback `score` uses), which makes majority votes agree with it."""

  def score(self, problem: Problem, completion: str) -> float:
    """Reward in [0, 1] of a completion for a problem; never raises on model output."""

  # Optional: `verify_batch(problems, completions) -> list[Verdict]`, for tasks whose
  # verifier runs model text in the sandbox (all at once, on its worker pool) or has
  # more to say than a reward; `tasks.verify` falls back to `score` without it.

  def can_solve(self, prompt: str) -> Optional[str]:
    """Reference answer of a prompt written in the task's format, or None when the
    prompt does not parse, has no solution, or the task cannot solve prompts."""
