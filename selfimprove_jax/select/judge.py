"""LLM-as-judge as a stage: the model (itself, or another model spec) scores sampled
completions with the rubric of rubric.py. An unparsed judgment (score None) is counted
and never crashes anything; as a filter it drops the completion, as a ranking it ranks
last, as a reward it gives 0.

Uses: a select filter (`judge`, records scored at acquire carry `judge_score`), a
reward where a task has no verifier (`config.judge.use_as_reward`), self-rewarding DPO
pairs (batches.best_worst_pairs reads the scores), best_of_n's scorer; and on verifiable tasks `agreement`
measures the judge against the verifier every iteration, so its calibration is visible.
"""

from __future__ import annotations

import numpy as np

from selfimprove_jax.records import Sample
from selfimprove_jax.select.rubric import judge


def score_records(generate, records: list[Sample], *, samples: int = 1,
                  max_new_tokens: int = 64, seed: int = 0,
                  use_as_reward: bool = False) -> list[Sample]:
  """Copies of `records` with `judge_score` (None = unparsed) and `judge_reply`; with
  `use_as_reward` the judge's score becomes `reward` (unparsed: 0) and the verifier's
  is kept as `verifier_reward`."""
  scores, replies = judge(generate, [r.prompt for r in records],
                          [r.completion for r in records], samples=samples,
                          max_new_tokens=max_new_tokens, seed=seed)
  out = []
  for r, s, rep in zip(records, scores, replies):
    r = r.replace(judge_score=s, judge_reply=rep[0] if rep else "")
    if use_as_reward:
      r = r.replace(verifier_reward=r.reward, reward=0.0 if s is None else s)
    out.append(r)
  return out


def agreement(records: list[Sample], judge_threshold: float, reward_threshold: float) -> dict:
  """How well the judge matches the verifier on judged records: the fraction of parsed
  judgments on the verifier's side of the thresholds, the fraction unparsed, and the
  judge's mean score on verifier-correct vs -incorrect completions."""
  judged = [r for r in records if r.judged]
  if not judged:
    return {}
  parsed = [r for r in judged if r.judge_score is not None]
  truth = lambda r: (r.reward if r.verifier_reward is None else r.verifier_reward) \
      >= reward_threshold
  agree = [(r.judge_score >= judge_threshold) == truth(r) for r in parsed]
  right = [r.judge_score for r in parsed if truth(r)]
  wrong = [r.judge_score for r in parsed if not truth(r)]
  nan = float("nan")
  return {"judge_agreement": float(np.mean(agree)) if agree else nan,
          "judge_unparsed": 1.0 - len(parsed) / len(judged),
          "judge_mean_correct": float(np.mean(right)) if right else nan,
          "judge_mean_incorrect": float(np.mean(wrong)) if wrong else nan}
