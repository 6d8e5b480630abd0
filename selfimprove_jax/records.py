"""The one record type of the loop: `Sample`, a sampled completion of a prompt, from
the sampler's output through every stage to the JSONL files under records/ and back.

Every field a stage reads or writes is declared here; the optional ones are None until
the stage that owns them sets them (the judge, a refinement strategy, a verifier that
could not finish). On disk a record is one JSON object per line with the same field
names; unset optional fields are left out, so a file written before a field existed
still loads, and a file with a field this code does not know is refused with one line.

Also here, because several stages need them and none owns them: `group_by_problem`,
`majority` (the vote of self-consistency, maj@k and label-free targets), `pseudo_label`
and `agreement_rewards` (label-free rewards and targets: a clear majority or nothing),
`pass_rate`, and the text normalisation behind de-duplication and novelty checks.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
from typing import Iterable, Optional, Sequence

from selfimprove_jax.runtime.files import hash_path, open_regular


@dataclasses.dataclass
class Sample:
  """One completion of one prompt, and what the stages learned about it."""
  problem_id: str = ""                 # '' for free-text prompts (no task problem)
  prompt: str = ""
  reference: Optional[str] = None      # the problem's reference answer, where it has one
  prompt_tokens: list = dataclasses.field(default_factory=list)
  completion: str = ""                 # decoded text (special tokens dropped)
  completion_tokens: list = dataclasses.field(default_factory=list)   # incl. EOS if it ended so
  logprobs: list = dataclasses.field(default_factory=list)   # raw log-probs of completion_tokens
  reward: float = 0.0                  # in [0, 1]; the verifier's unless a judge replaced it
  finish_reason: str = "eos"           # 'eos' | 'stop' | 'length'
  num_tokens: int = 1                  # completion length (tokens)
  sample_index: int = 0                # j of the G samples of its prompt
  iteration: int = -1                  # loop iteration that sampled it (-1: evaluation)
  verifier_status: str = "ok"          # or why the verifier could not finish ('timeout', ...)
  verifier_detail: str = ""            # what failed, in words
  # set by the judge (select/judge.py): score None = unparsed reply; judged iff judge_reply is set
  judge_score: Optional[float] = None
  judge_reply: Optional[str] = None
  verifier_reward: Optional[float] = None   # the verifier's reward when a judge's replaced it
  # set by a refinement strategy's training targets (refine_targets.refine_records)
  refined: Optional[bool] = None       # True: a training target the 'refined' filter keeps
  vote_share: Optional[float] = None   # self_consistency: its prompt's majority share
  majority_answer: Optional[str] = None   # self_consistency: its prompt's majority answer
                                          # (the label of label-free training)
  refine_rounds: Optional[int] = None  # revising strategies: rounds behind this revision
  # set by STaR's rationalization (refine_targets.rationalize_records): True = an answer given
  # with the reference as a hint, recorded under the original prompt (hint removed)
  rationalized: Optional[bool] = None
  # set by paradigms that make their own samples (paradigms/): which role a sample
  # plays -- self_play: 'proposer' | 'solver'; spin: 'target' | 'opponent'
  role: Optional[str] = None
  # self_play proposer samples: the cleaned proposal, its verdict ('valid' or why not:
  # 'empty', 'duplicate', 'copy', 'heldout_leak', 'invalid', 'too_hard'; programs: how
  # the sandbox run ended, 'nondeterministic', 'too_long') and, when
  # valid, the problem id its solver samples carry; on both roles the solver's pass
  # rate p on that proposal
  proposal: Optional[str] = None
  proposal_status: Optional[str] = None
  proposal_id: Optional[str] = None
  solver_pass_rate: Optional[float] = None
  # label-free rewards (ttrl): the answer read from this completion and its group's
  # pseudo-label (the majority answer; None when no answer reached the vote share)
  answer: Optional[str] = None
  pseudo_label: Optional[str] = None
  # multi-turn episodes (environments/episodes.py): the completion is the whole episode
  # after its first observation, the model's turns and the environment's answers as
  # sampled and appended (never re-tokenized); `action_mask` is 1 at the model's tokens,
  # the only ones a loss reads, and 0 at the observations' (whose log-probs are 0);
  # `turns` holds one dict per model turn (environments.episodes.TURN_FIELDS); the
  # reward is the last step's; `episode_end` says why the episode ended ('done',
  # 'max_turns', 'max_tokens', 'error')
  action_mask: Optional[list] = None
  turns: Optional[list] = None
  episode_end: Optional[str] = None

  @property
  def logprob(self) -> float:
    """Summed log-prob of the completion (a sequence score for ranking and ties)."""
    return float(sum(self.logprobs))

  @property
  def mean_logprob(self) -> float:
    return self.logprob / max(1, self.num_tokens)

  @property
  def judged(self) -> bool:
    return self.judge_reply is not None

  def replace(self, **changes) -> "Sample":
    return dataclasses.replace(self, **changes)

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    return {k: v for k, v in out.items() if not (k in _OPTIONAL and v is None)}

  @classmethod
  def from_json(cls, row: dict) -> "Sample":
    unknown = sorted(set(row) - _FIELDS)
    if unknown:
      raise ValueError(f"unknown record field {unknown[0]!r} (written by another version "
                       f"of selfimprove_jax?)")
    return cls(**row)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Sample))
# every field whose default is None is left out of JSON while unset; `reference` is
# the exception, written as null (records predating the optional fields have it)
_OPTIONAL = frozenset(f.name for f in dataclasses.fields(Sample)
                      if f.default is None and f.name != "reference")


def group_by_problem(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
  """problem_id -> its samples, both in first-seen order."""
  out: dict[str, list[Sample]] = collections.defaultdict(list)
  for s in samples:
    out[s.problem_id].append(s)
  return dict(out)


def pass_rate(samples: Sequence[Sample], threshold: float) -> float:
  return sum(s.reward >= threshold for s in samples) / max(1, len(samples))


def majority(answers: Sequence[Optional[str]], scores: Optional[Sequence[float]] = None):
  """Most common non-empty answer; ties broken by the higher summed score (e.g. the
  log-prob), then by first appearance. Returns (answer or None, vote share)."""
  counts: dict[str, int] = collections.Counter(a for a in answers if a)
  if not counts:
    return None, 0.0
  total: dict[str, float] = collections.defaultdict(float)
  for i, a in enumerate(answers):
    if a and scores is not None:
      total[a] += scores[i]
  order = {a: i for i, a in reversed(list(enumerate(answers))) if a}
  best = max(counts, key=lambda a: (counts[a], total[a], -order[a]))
  return best, counts[best] / len(answers)


def pseudo_label(answers: Sequence[Optional[str]], min_share: float):
  """A group's label-free target (TTRL, Zuo et al. 2025; the self-consistency labels
  of Huang et al. 2022): its majority answer when that answer holds at least
  `min_share` of all the group's votes (None votes count, for nothing) and no other
  answer has as many. A tie or a thin majority gives no label: such majorities are
  often spurious, and rewarding them teaches a guess. Returns (label or None, share)."""
  counts = collections.Counter(a for a in answers if a)
  if not counts:
    return None, 0.0
  (best, top), *rest = counts.most_common()
  share = top / len(answers)
  if (rest and rest[0][1] == top) or share < min_share:
    return None, share
  return best, share


def agreement_rewards(answers: Sequence[Optional[str]], label: Optional[str]) -> list[float]:
  """1.0 for each answer equal to the group's pseudo-label, else 0.0 (all 0 without one)."""
  return [float(label is not None and a == label) for a in answers]


# ----------------------------------------------------------------------------- text overlap


def normalise(text: str) -> str:
  """Lower case, whitespace runs collapsed: what 'the same text' means for de-duplication."""
  return re.sub(r"\s+", " ", text.strip().lower())


def ngrams(text: str, n: int) -> set:
  words = normalise(text).split(" ")
  if len(words) < n:
    return {tuple(words)}
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
  return len(a & b) / max(1, len(a | b))


# ----------------------------------------------------------------------------- JSONL files


def write_jsonl(path: str, rows: Iterable[dict]) -> str:
  """Writes JSON rows atomically, one per line, and returns the file's SHA-256
  (files.hash_path)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return hash_path(path)


def jsonl_digest(path: str, rows: Iterable[dict]) -> str:
  """The hash `write_jsonl(path, rows)` returns, without writing (processes other than
  0 hold the same rows but leave the file to process 0)."""
  h = hashlib.sha256(os.path.basename(path).encode())   # as hash_path hashes one file
  for row in rows:
    h.update((json.dumps(row) + "\n").encode())
  return h.hexdigest()


def read_jsonl(path: str) -> list[dict]:
  """The rows of a JSONL file written by `write_jsonl` (regular files only); a line
  that is not a JSON object raises ValueError naming the file and line."""
  with open_regular(path) as f:
    lines = f.read().decode("utf-8").splitlines()
  out = []
  for n, line in enumerate(lines, 1):
    if line.strip():
      try:
        row = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{path} line {n}: {e}") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path} line {n}: not a JSON object")
      out.append(row)
  return out


def write_records(path: str, samples: Iterable[Sample]) -> str:
  return write_jsonl(path, (s.to_json() for s in samples))


def records_digest(path: str, samples: Iterable[Sample]) -> str:
  return jsonl_digest(path, (s.to_json() for s in samples))


def read_records(path: str) -> list[Sample]:
  """The samples of a records file; one that is not a record raises ValueError."""
  rows = read_jsonl(path)
  try:
    return [Sample.from_json(row) for row in rows]
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: {e}") from None
