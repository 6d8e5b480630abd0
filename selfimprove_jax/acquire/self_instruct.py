"""Self-instruct: the model proposes new problems from a few seed examples of a task
(Wang et al. 2023, "Self-Instruct"; the proposer half of self-play curricula).

One iteration's proposals:
  1. propose — each proposal prompt shows `num_examples` training problems of the task
     (a different subset per prompt) and asks for one new problem of the same kind;
  2. clean   — keep the first paragraph, drop "Problem:" / numbering prefixes;
  3. de-duplicate — by word n-gram overlap (Jaccard >= max_overlap, or equal after
     normalisation) against each other, the seed examples (copies) and the held-out
     split (leaks; equal there is an equal `text_key`: case, whitespace and
     punctuation ignored); a proposal whose id falls in the task's held-out side, or
     whose parsed content equals a held-out problem's, is a leak too. So no self-made
     problem can ever bring a held-out problem into training;
  4. check validity — procedural tasks keep a proposal when they can parse and solve it
     (`task.parse_problem`), with the task's answer as reference; other tasks when the
     model's own answers agree: self-consistency share >= min_vote_share over `votes`
     samples, with the majority answer as reference.
Every candidate is returned with its status, so the stage's records show what was
rejected and why. The loop mixes the kept ones into acquisition at a configured share.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Optional, Sequence

from selfimprove_jax.records import jaccard, ngrams, normalise, pseudo_label
from selfimprove_jax.sampling import SamplingParams
from selfimprove_jax.tasks.answers import answer_as_verified
from selfimprove_jax.tasks.problem import Problem, make_problem, problem_id, text_key

PROPOSE_PROMPT = (
    "Here are some example problems:\n\n{examples}\n\n"
    "Write one new problem of the same kind, different from the examples. "
    "Reply with the new problem only, in the same format.")
_PREFIX = re.compile(r"^\s*(?:(?:new\s+)?problem\s*\d*\s*[:.)-]\s*|\d+\s*[.)]\s+|[-*]\s+)",
                     re.IGNORECASE)


def proposal_prompt(examples: Sequence[str]) -> str:
  """The proposer's prompt for one set of seed examples."""
  body = "\n".join(f"{k + 1}. {e.strip()}" for k, e in enumerate(examples))
  return PROPOSE_PROMPT.format(examples=body)


def clean_proposal(text, max_chars: int = 1000) -> Optional[str]:
  """The proposed problem from a reply (first paragraph, prefixes removed), or None."""
  if not isinstance(text, str):
    return None
  para = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0].strip()
  para = _PREFIX.sub("", para, count=1).strip().strip('"').strip()
  return para if para and len(para) <= max_chars else None


def canonical(problem: Optional[Problem]) -> Optional[str]:
  """What a procedural problem *is*, whatever its wording: its parsed metadata (the
  expression; countdown's numbers and target) without whitespace; None when the task
  records nothing."""
  if problem is None or not problem.metadata:
    return None
  return re.sub(r"\s+", "", json.dumps(problem.metadata, sort_keys=True, default=str))


def screen(candidates: Sequence[Optional[str]], task, heldout: Sequence[Problem],
           examples: Sequence[str] = (), ngram: int = 3,
           max_overlap: float = 0.8) -> list[str]:
  """Status of each candidate: 'unique', or why it is rejected: 'empty', 'duplicate'
  (of an earlier candidate), 'copy' (of a seed example), 'heldout_leak'."""
  parse = getattr(task, "parse_problem", None)
  held_text = {text_key(p.prompt) for p in heldout}   # case, whitespace, punctuation
  held_grams = [ngrams(p.prompt, ngram) for p in heldout]
  held_canon = {canonical(p) for p in heldout} - {None}
  ex_grams = [ngrams(e, ngram) for e in examples]
  ex_text = {normalise(e) for e in examples}
  seen_text, seen_grams, status = set(), [], []
  for c in candidates:
    if not c:
      status.append("empty")
      continue
    t, g = normalise(c), ngrams(c, ngram)
    canon = canonical(parse(c)) if parse is not None else None
    if (text_key(c) in held_text or task.is_heldout(problem_id(c)) or canon in held_canon
        or any(jaccard(g, h) >= max_overlap for h in held_grams)):
      status.append("heldout_leak")
    elif t in ex_text or any(jaccard(g, h) >= max_overlap for h in ex_grams):
      status.append("copy")
    elif t in seen_text or any(jaccard(g, h) >= max_overlap for h in seen_grams):
      status.append("duplicate")
    else:
      status.append("unique")
      seen_text.add(t)
      seen_grams.append(g)
  return status


def check_validity(candidates: Sequence[str], task, generate=None, *, votes: int = 4,
                   min_vote_share: float = 0.6, sample: Optional[SamplingParams] = None,
                   seed: int = 0, difficulty: int = 0) -> list[tuple[Optional[Problem], dict]]:
  """(Problem or None, details) per candidate: parsed and solved by a procedural task,
  else a self-consistency vote of `votes` samples from `generate` (refine.GenerateFn)."""
  parse = getattr(task, "parse_problem", None)
  if task.procedural and parse is not None:
    out = []
    for c in candidates:
      p = parse(c)
      out.append((p, {"reason": "solved by the task" if p else "task cannot parse/solve it"}))
    return out
  if generate is None:
    raise ValueError("validating proposals of a non-procedural task needs a generate function")
  sample = sample or SamplingParams(max_new_tokens=48)
  out = []
  for c, group in zip(candidates, generate(list(candidates), sample, votes, seed)):
    ans = [answer_as_verified(task, s.completion, truncated=s.finish_reason == "length")
           for s in group]
    best, share = pseudo_label(ans, min_vote_share)   # None on a tie or a thin majority
    ok = best is not None
    out.append((make_problem(c, best, difficulty, {"self_instruct": True}) if ok else None,
                {"reason": f"vote share {share:.2f}", "vote_share": share}))
  return out


@dataclasses.dataclass(frozen=True)
class Settings:
  """The proposer's knobs (settings.self_instruct: config.self_instruct)."""
  proposals: int = 32                  # candidates per call
  examples: int = 3                    # seed examples shown per proposal prompt
  ngram: int = 3                       # word n-grams of the overlap checks
  max_overlap: float = 0.8             # Jaccard at or above this = duplicate / leak
  votes: int = 4                       # non-procedural tasks: self-consistency samples
  min_vote_share: float = 0.6
  sample: SamplingParams = SamplingParams(max_new_tokens=64)


def propose(generate, task, seed_problems: Sequence[Problem], heldout: Sequence[Problem],
            settings: Settings, seed: int, difficulty: int = 0):
  """Runs propose -> clean -> de-duplicate -> check validity. Returns (kept problems, one row
  per candidate: {'text', 'status', 'reason', 'problem'})."""
  pool = [p.prompt for p in seed_problems]
  k = max(1, min(settings.examples, len(pool)))
  prompts = [proposal_prompt([pool[(i * k + j) % len(pool)] for j in range(k)])
             for i in range(settings.proposals)]
  replies = generate(prompts, settings.sample, 1, seed)
  texts = [clean_proposal(r[0].completion) for r in replies]
  status = screen(texts, task, heldout, pool, settings.ngram, settings.max_overlap)
  unique = [t for t, s in zip(texts, status) if s == "unique"]
  checked = iter(check_validity(unique, task, generate, votes=settings.votes,
                                min_vote_share=settings.min_vote_share,
                                sample=settings.sample, seed=seed + 1,
                                difficulty=difficulty))
  rows, kept = [], []
  for t, s in zip(texts, status):
    row = {"text": t, "status": s, "reason": s, "problem": None}
    if s == "unique":
      p, details = next(checked)
      row.update(details, status="kept" if p else "invalid")
      if p is not None:
        row["problem"] = p.to_json()
        kept.append(p)
    rows.append(row)
  return kept, rows


def summarize(rows: Sequence[dict]) -> dict:
  """Counts per status, for the iteration's metrics."""
  out = {"self_instruct_proposed": len(rows)}
  for s in ("kept", "duplicate", "copy", "heldout_leak", "invalid", "empty"):
    out[f"self_instruct_{s}"] = sum(r["status"] == s for r in rows)
  return out
