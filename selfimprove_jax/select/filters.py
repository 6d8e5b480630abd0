"""Select: keep the samples worth learning from (the per-prompt difficulty ledger,
updated by the same stage, is in ledger.py).

Filters are small functions `(records, settings) -> records` in a registry, chosen by
name in `Settings.filters` (config.select.filters) and applied in order. A record is one sampled completion
(`records.Sample`); records of one prompt share a `problem_id`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from selfimprove_jax.errors import check_names
from selfimprove_jax.records import Sample, group_by_problem, jaccard, ngrams, normalise


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the filters read (config.select)."""
  filters: tuple = ("correct", "dedup", "max_length")   # applied in this order
  reward_threshold: float = 1.0        # a sample at or above it is right
  min_pass_rate: float = 0.0           # pass_rate_band: the kept prompts' band
  max_pass_rate: float = 1.0
  dedup_ngram: int = 3
  dedup_threshold: float = 0.9
  max_completion_tokens: int = 256
  judge_threshold: float = 0.6         # 'judge': keep judge scores at or above it (0-1)
  replay: int = 0                      # earlier accepted iterations' selections trained again


Filter = Callable[[list[Sample], Settings], list[Sample]]   # (records, settings) -> kept


def correct(records, cfg):
  """Rejection sampling (STaR / RFT): keep completions the verifier accepts."""
  return [r for r in records if r.reward >= cfg.reward_threshold]


def pass_rate_band(records, cfg):
  """Online difficulty filtering: drop prompts whose G samples are all right or all
  wrong (too easy / too hard: no learning signal for RL, nothing new for SFT), and
  optionally those outside [cfg.min_pass_rate, cfg.max_pass_rate]."""
  keep = []
  for group in group_by_problem(records).values():
    rate = sum(r.reward >= cfg.reward_threshold for r in group) / len(group)
    if 0.0 < rate < 1.0 and cfg.min_pass_rate <= rate <= cfg.max_pass_rate:
      keep.extend(group)
  return keep


def dedup(records, cfg):
  """Drop exact (after whitespace/case normalisation) and near-duplicate completions
  of the same prompt (word n-gram Jaccard >= cfg.dedup_threshold); first one wins."""
  keep = []
  for group in group_by_problem(records).values():
    seen_text: set[str] = set()
    seen_grams: list[set] = []
    for r in group:
      t = normalise(r.completion)
      grams = ngrams(r.completion, cfg.dedup_ngram)
      if t in seen_text or any(jaccard(grams, g) >= cfg.dedup_threshold for g in seen_grams):
        continue
      seen_text.add(t)
      seen_grams.append(grams)
      keep.append(r)
  return keep


def judge(records, cfg):
  """LLM-as-judge: keep completions the judge scored >= cfg.judge_threshold (scores are
  attached at acquire, see judge.py); unparsed judgments are dropped."""
  return [r for r in records
          if r.judge_score is not None and r.judge_score >= cfg.judge_threshold]


def refined(records, cfg):
  """Keep the training targets a refinement strategy marked (refine_targets.refine_records)."""
  return [r for r in records if r.refined]


def max_length(records, cfg):
  """Drop truncated completions and those longer than cfg.max_completion_tokens."""
  return [r for r in records
          if r.finish_reason != "length" and r.num_tokens <= cfg.max_completion_tokens]


def tool_used(records, cfg):
  """Self-taught tool use (Toolformer): keep the episodes in which some turn called the
  environment's tool (environments/: `Step.tool_call`); a single-turn sample has none."""
  return [r for r in records if any(t.get("tool_call") for t in (r.turns or ()))]


FILTERS: dict[str, Filter] = {
    "correct": correct,
    "pass_rate_band": pass_rate_band,
    "dedup": dedup,
    "max_length": max_length,
    "judge": judge,
    "refined": refined,
    "tool_used": tool_used,
}


def check_filters(names: Sequence[str]) -> tuple[str, ...]:
  """The filter names, each checked against the registry."""
  return check_names(names, FILTERS, "select filter")


def apply_filters(records: list[Sample],
                  settings: Settings) -> tuple[list[Sample], dict[str, int]]:
  """Applies the configured filters in order; returns kept records and counts kept
  after each filter (for the metrics)."""
  counts = {"acquired": len(records)}
  for name in check_filters(settings.filters):
    records = FILTERS[name](records, settings)
    counts[name] = len(records)
  return records, counts
