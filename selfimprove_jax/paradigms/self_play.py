"""Proposer-solver self-play (`loop.algorithm=self_play`): one model in two roles
(Absolute Zero, Zhao et al. 2025; R-Zero, Huang et al. 2025).

One round:
  propose  each proposer prompt shows `self_instruct.examples` problems of the task
           (from the training stream) and asks for a new one (self_instruct's prompt);
  check    the reply is cleaned (self_instruct.clean_proposal) and screened for
           novelty: not empty, not a near-duplicate of an earlier proposal of the
           round (word n-grams, or the same parsed expression) nor of a shown
           example, not a problem that was a valid proposal in an earlier round or
           iteration of the run ('repeat'; judged against `remember`'s running summary
           of them, which the loop keeps and checkpoints, so a resumed run judges
           alike and no round re-reads earlier records), not on the held-out side
           (self_instruct.screen); then validity:
           the task's procedural verifier must parse and solve it (arithmetic and
           countdown: `task.parse_problem` computes the true answer) and its level
           must be within `self_play.max_level`; on `code:` tasks a proposal is a
           program and a call, valid when it runs deterministically in the sandbox,
           whose result is the true output the solver must predict (programs.py);
  solve    the solver samples G = loop.samples_per_prompt answers per valid proposal,
           scored by the verifier (the solver's reward); p = their pass rate;
  reward   the proposer's reward is the learnability 4p(1-p): 1 at p = 1/2, 0 for a
           problem the solver always or never solves (R-Zero's uncertainty reward;
           Absolute Zero's learnability reward also vanishes at both ends). A rejected
           proposal gets `self_play.invalid_reward`. With G = 1, p is 0 or 1 and the
           reward is identically zero, so the config refuses G < 2.
Both roles are trained in the same GRPO-family step, with advantages relative within
role groups: the solver's per proposal (its G answers), the proposer's over all the
round's proposals (Absolute Zero's per-role baselines, "TRR++"). Evaluation stays on the
task's fixed held-out split, so the gate measures what self-play buys on the target
task. Every proposal is a record (role 'proposer': the proposal, its verdict, p and its
reward), next to its solver records (role 'solver').
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Container, Optional, Sequence

import numpy as np

from selfimprove_jax import settings as settings_lib
from selfimprove_jax.acquire import rounds as acquire_lib
from selfimprove_jax.acquire import self_instruct
from selfimprove_jax.errors import UserError
from selfimprove_jax.optimize import batches
from selfimprove_jax.paradigms import common, programs
from selfimprove_jax.records import Sample, group_by_problem, pass_rate
from selfimprove_jax.sampling import SamplingParams
from selfimprove_jax.tasks.problem import MAX_ATTEMPTS, Problem, problem_id

PROPOSER, SOLVER = "proposer", "solver"
PROPOSER_GROUP = "role:proposer"     # the proposer's advantage group (ids are hex)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The proposer's knobs (config.self_instruct's proposer keys, config.self_play)."""
  examples: int = 3                    # seed problems shown per proposer prompt
  ngram: int = 3                       # word n-grams of the novelty checks
  max_overlap: float = 0.8             # Jaccard at or above this = near-duplicate
  invalid_reward: float = -0.5         # the proposer's reward for a rejected proposal
  max_level: int = 0                   # proposals above this task level: 'too_hard' (0: any)
  sample: SamplingParams = SamplingParams(max_new_tokens=64)


def settings(config) -> Settings:
  """The proposer's settings from config.self_instruct and config.self_play; it samples
  with the run's sampling settings (stop sequences included, as self-instruct's
  proposer does) and self_instruct's token budget."""
  si = config.self_instruct
  return Settings(examples=si.examples, ngram=si.ngram, max_overlap=si.max_overlap,
                  invalid_reward=config.self_play.invalid_reward,
                  max_level=config.self_play.max_level,
                  sample=settings_lib.sampling(config, si.max_new_tokens))


# Tasks whose verifier can parse and solve a proposed problem (the proposer's checks)
TASKS = ("arithmetic", "countdown", "code:list_ops", "code:string_ops")


def check(config) -> None:
  """What self-play needs of a config: a task that checks proposals, G >= 2 (the
  learnability 4p(1-p) of one answer is 0), and no filter dropping the proposer."""
  common.check_group(config, "the learnability 4p(1-p) of one solver answer is always 0")
  if config.task.name not in TASKS:
    raise UserError(f"task.name={config.task.name!r}: loop.algorithm=self_play needs a task "
                    f"whose verifier solves proposals ({', '.join(TASKS)})")
  common.check_own_acquire(config, drops=("correct", "pass_rate_band"), role="proposer")
  common.check_no_replay(config)


def learnability(p: float) -> float:
  """The proposer's reward for a valid proposal the solver passes at rate p: 4p(1-p)."""
  return 4.0 * p * (1.0 - p)


def proposer_prompts(task, seeds: Sequence[str], count: int, examples: int) -> list[str]:
  """`count` proposer prompts, each showing `examples` of the seed problems (a
  different window per prompt). Like every training prompt, a proposer prompt stays off
  the held-out side of the task's id partition: on a hit the window shifts by one."""
  k = max(1, min(examples, len(seeds)))
  out = []
  for i in range(count):
    for attempt in range(MAX_ATTEMPTS):
      prompt = self_instruct.proposal_prompt(
          [seeds[(i * k + j + attempt) % len(seeds)] for j in range(k)])
      if not task.is_heldout(problem_id(prompt)):
        break
    out.append(prompt)
  return out


def check_proposals(texts: Sequence[Optional[str]], task, heldout: Sequence[Problem],
                    seeds: Sequence[str], st: Settings,
                    earlier: Container = frozenset()) -> list[tuple[str, Optional[Problem]]]:
  """(verdict, problem or None) per cleaned proposal. Validity first: the task must
  parse and solve it ('invalid'); then novelty (self_instruct.screen: 'duplicate',
  'copy', 'heldout_leak'; and no two valid proposals with the same parsed content) and
  limits (its level at most `st.max_level`: 'too_hard'); a problem an earlier round
  or iteration already had as a valid proposal (its `self_instruct.canonical` key in `earlier`) is a
  'repeat'.
  The solver sees the problem
  in the task's own wording (`parse_problem(..., canonical=True)`), so what it learns
  is asked as the held-out split asks it; that wording's id must be off the held-out
  side too."""
  status = self_instruct.screen(texts, task, heldout, seeds, st.ngram, st.max_overlap)
  out, seen = [], set()
  for text, s in zip(texts, status):
    p = task.parse_problem(text, canonical=True) if text else None
    if s == "empty" or p is None:
      out.append(("empty" if s == "empty" else "invalid", None))
    elif s == "unique" and task.is_heldout(p.id):
      out.append(("heldout_leak", None))
    elif s != "unique" or self_instruct.canonical(p) in seen:
      out.append((s if s != "unique" else "duplicate", None))
    elif self_instruct.canonical(p) in earlier:
      out.append(("repeat", None))
    elif st.max_level and p.difficulty > st.max_level:
      out.append(("too_hard", None))
    else:
      seen.add(self_instruct.canonical(p))
      out.append(("valid", p))
  return out


def first_problem(reply: str) -> Optional[str]:
  """The proposal in a reply: self_instruct's cleaning (first paragraph, prefixes
  dropped), then its first line -- a model asked for one problem often lists several."""
  text = self_instruct.clean_proposal(reply)
  return self_instruct.clean_proposal(text.splitlines()[0]) if text else None


def check_programs(texts: Sequence[Optional[str]], task, heldout: Sequence[Problem],
                   seeds: Sequence[str], st: Settings,
                   earlier: Container = frozenset()) -> list[tuple[str, Optional[Problem]]]:
  """(verdict, solver problem or None) per program proposal (the code family,
  programs.py): novelty as for `check_proposals`, then a run in the sandbox; a solver
  problem whose id falls on the task's held-out side is a 'heldout_leak' too."""
  status = self_instruct.screen(texts, task, heldout, seeds, st.ngram, st.max_overlap)
  ran = iter(programs.execute_proposals([t for t, s in zip(texts, status) if s == "unique"]))
  out, seen = [], set()
  for s in status:
    verdict, p = next(ran) if s == "unique" else (s, None)
    if p is not None and task.is_heldout(p.id):
      verdict, p = "heldout_leak", None
    elif p is not None and self_instruct.canonical(p) in seen:
      verdict, p = "duplicate", None
    elif p is not None and p.id in earlier:     # a program's id is its program + call
      verdict, p = "repeat", None
    if p is not None:
      seen.add(self_instruct.canonical(p))
    out.append((verdict, p))
  return out


# ----------------------------------------------------------------------------- novelty


class KeySet:
  """A set of keys (strings, or None) held as the sorted first 8 bytes of their
  SHA-256s: 8 bytes a key whatever its length, a membership test by binary search, and
  an array to checkpoint. Two keys share a hash with probability 2^-64 per pair."""

  def __init__(self, hashes: Optional[np.ndarray] = None):
    self.hashes = np.zeros(0, np.uint64) if hashes is None else np.asarray(hashes, np.uint64)

  @staticmethod
  def hash(key: Optional[str]) -> int:
    # None (a problem whose task records no metadata) as a byte no key's UTF-8 has
    data = b"\xff" if key is None else key.encode("utf-8")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")

  def __contains__(self, key: Optional[str]) -> bool:
    h = np.uint64(self.hash(key))
    i = int(np.searchsorted(self.hashes, h))
    return i < len(self.hashes) and self.hashes[i] == h

  def __len__(self) -> int:
    return len(self.hashes)

  def with_keys(self, keys) -> "KeySet":
    """This set and `keys`: the new hashes inserted in order (a copy of the array, no
    sort of the whole)."""
    new = np.unique(np.fromiter((self.hash(k) for k in keys), np.uint64))
    at = np.searchsorted(self.hashes, new)
    known = np.zeros(len(new), bool)
    inside = at < len(self.hashes)
    known[inside] = self.hashes[at[inside]] == new[inside]
    return KeySet(np.insert(self.hashes, at[~known], new[~known]))


def proposal_key(x: Sample, task) -> Optional[str]:
  """What a valid proposal is, for 'repeat': a program's solver-problem id (its program
  + call), else the parsed problem's `self_instruct.canonical` key (parsing is cheap;
  running programs is not)."""
  if is_code(task):
    return x.proposal_id
  return self_instruct.canonical(task.parse_problem(x.proposal, canonical=True))


def remember(summary: Optional[dict], samples: Sequence[Sample], task) -> dict:
  """The run's running summary for the novelty check (`Algorithm.remember`): the
  keys of every valid proposal so far (`proposal_key`) as a `KeySet`'s array, with
  those among `samples` added. No earlier record is read again: the work is the new
  samples' and one copy of the array (8 bytes a key)."""
  known = KeySet(summary["valid_proposals"] if summary else None)
  valid = [x for x in samples if x.role == PROPOSER and x.proposal_status == "valid"]
  return {"valid_proposals": known.with_keys(proposal_key(x, task) for x in valid).hashes}


def _earlier_keys(r: acquire_lib.Round) -> KeySet:
  """The keys of the run's earlier valid proposals (`Round.earlier`, `remember`'s)."""
  return KeySet(r.earlier["valid_proposals"] if r.earlier else None)


def is_code(task) -> bool:
  """Whether self-play runs the code family (programs.py) on this task."""
  return task.name.startswith("code:")


def self_play_round(r: acquire_lib.Round, problems: Sequence[Problem]) -> list[Sample]:
  """One round's proposer and solver samples, rewarded (see the module docstring);
  `problems` (the training stream's) are the examples the proposer prompts show."""
  code = is_code(r.task)
  if not code and not (getattr(r.task, "procedural", False)
                       and hasattr(r.task, "parse_problem")):
    raise UserError(f"loop.algorithm=self_play: task {r.task.name} cannot check proposals "
                    f"(it needs a procedural verifier: arithmetic, countdown or code:)")
  st = r.paradigm
  seeds = programs.seeds(problems) if code else [p.prompt for p in problems]
  prompts = proposer_prompts(r.task, seeds, len(problems), st.examples)
  replies = [group[0] for group in r.generate(prompts, st.sample, 1, r.seed)]
  if code:   # the canonical program + call, else the raw text (rejected as 'invalid')
    texts = [programs.clean(x.completion) or x.completion.strip() or None for x in replies]
  else:
    texts = [first_problem(x.completion) for x in replies]
  earlier = _earlier_keys(r)
  verdicts = (check_programs if code else check_proposals)(texts, r.task, r.heldout, seeds,
                                                           st, earlier)
  valid = [p for _, p in verdicts if p is not None]
  # the solver: G answers per valid proposal, each scored by the verifier
  solved = acquire_lib.acquire(r.generate, programs.OutputPrediction() if code else r.task,
                               valid, r.settings.sample, r.settings.n, r.seed + 1, r.iteration)
  threshold = r.settings.reward_threshold
  rate = {pid: pass_rate(g, threshold) for pid, g in group_by_problem(solved).items()}
  proposers = []
  for reply, prompt, text, (verdict, p) in zip(replies, prompts, texts, verdicts):
    proposers.append(reply.replace(
        problem_id=problem_id(prompt), prompt=prompt, iteration=int(r.iteration),
        reward=learnability(rate[p.id]) if p else st.invalid_reward, role=PROPOSER,
        proposal=text, proposal_status=verdict, proposal_id=p.id if p else None,
        solver_pass_rate=rate[p.id] if p else None))
  solvers = [s.replace(role=SOLVER, solver_pass_rate=rate[s.problem_id]) for s in solved]
  return proposers + solvers


def role_group(s: Sample) -> str:
  """The advantage group of a sample: all proposals of a round together, the solver's
  answers per proposal."""
  return PROPOSER_GROUP if s.role == PROPOSER else s.problem_id


def self_play_batches(samples: Sequence[Sample], t: batches.Settings,
                      seed: int) -> list[dict]:
  """One GRPO-family batch of both roles (P proposals + P x G answers at most),
  advantages relative within role groups (`role_group`)."""
  del seed
  return batches.policy_gradient_batch(samples, t, t.prompts * (t.samples_per_prompt + 1),
                                       role_group)


def _mean(values) -> Optional[float]:
  values = list(values)
  return float(sum(values) / len(values)) if values else None


def self_play_metrics(samples: Sequence[Sample], threshold: float) -> dict:
  """The iteration's row: how many proposals were valid, the solver's pass rate p on
  them (its mean and distribution: the difficulty the proposer found), both rewards."""
  del threshold
  proposals = [s for s in samples if s.role == PROPOSER]
  p = [s.solver_pass_rate for s in proposals if s.proposal_status == "valid"]
  return {
      "self_play_proposals": len(proposals),
      "self_play_valid_share": len(p) / max(1, len(proposals)),
      "self_play_verdicts": dict(sorted(collections.Counter(
          s.proposal_status for s in proposals).items())),
      "self_play_mean_p": _mean(p),
      "self_play_p_hist": {"0": sum(x == 0 for x in p), "(0,0.5)": sum(0 < x < 0.5 for x in p),
                           "[0.5,1)": sum(0.5 <= x < 1 for x in p),
                           "1": sum(x == 1 for x in p)},
      "self_play_proposer_reward": _mean(s.reward for s in proposals),
      "self_play_solver_reward": _mean(s.reward for s in samples if s.role == SOLVER),
  }
