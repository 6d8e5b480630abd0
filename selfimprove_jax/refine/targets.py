"""Training targets from inference-time refinement: `refine_records` turns a
strategy's final answers into training targets (records marked `refined`, kept by the
`refined` select filter), and `rationalize_records` is STaR's rationalization (a failed
problem answered again with the reference as a hint, trained on without it).
"""

from __future__ import annotations

from typing import Sequence

from selfimprove_jax.refine.strategies import (REVISING, STRATEGIES, Context, StrategyConfig,
                                    check_strategies, label_votes, pick_best, resolve_scorer)
from selfimprove_jax.records import Sample, group_by_problem
from selfimprove_jax.tasks import verify
from selfimprove_jax.tasks.problem import Verdict


def refine_records(name: str, records: list, problems: Sequence, ctx: Context,
                   cfg: StrategyConfig, seed: int, min_vote_share: float = 0.0) -> list:
  """Marks (and for self_refine adds) the records a strategy turns into training
  targets, with `refined=True`; the `refined` select filter keeps exactly those.

    self_consistency: samples whose answer is their prompt's label (`label_votes`:
                      the majority, untied, with a vote share of at least
                      `min_vote_share`; no verifier or reference involved);
    best_of_n:        the scorer's pick among each prompt's samples (verifier: the
                      record's reward, judge: its `judge_score`, logprob);
    self_refine:      the first sample of each prompt is critiqued and revised; the
                      final answer becomes a target when the verifier accepts it (a
                      revision is added as a new record of the original prompt).
  """
  check_strategies([name])
  records = [r.replace(refined=False) for r in records]
  by_id = group_by_problem(records)
  index = {p.id: i for i, p in enumerate(problems)}
  if name == "self_consistency":
    for pid, group in by_id.items():
      votes, label, share = label_votes(ctx.task, problems[index[pid]], group, min_vote_share)
      for r, a in zip(group, votes):
        r.vote_share, r.majority_answer = share, label
        r.refined = label is not None and a == label
  elif name == "best_of_n":
    scorer = resolve_scorer(cfg.scorer, ctx)
    for group in by_id.values():
      if scorer == "verifier":
        scores = [r.reward for r in group]
      elif scorer == "judge":
        scores = [-1.0 if r.judge_score is None else r.judge_score for r in group]
      else:
        scores = [r.mean_logprob for r in group]
      group[pick_best(scores, group)].refined = True
  elif name in REVISING:
    records += _revised_targets(name, [group[0] for group in by_id.values()], by_id,
                                problems, index, ctx, cfg, seed)
  return records


def _revised_targets(name, firsts, by_id, problems, index, ctx, cfg, seed) -> list[Sample]:
  """A revising strategy on each prompt's first sample: an unrevised first sample the
  verifier accepts is marked; an accepted revision is returned as a new record."""
  prompts = [r.prompt for r in firsts]
  ctx.prompts = prompts
  ctx.problems = [problems[index[r.problem_id]] for r in firsts]   # align with prompts
  results = STRATEGIES[name](ctx, prompts, cfg, seed, initial=firsts)
  verdicts = verify(ctx.task, ctx.problems, [res.text for res in results])
  added = []
  for r, res, v in zip(firsts, results, verdicts):
    if v.reward < 1.0:
      continue
    if not res.info["revised"]:
      r.refined = True
      continue
    added.append(_as_target(r, res.chosen, v, len(by_id[r.problem_id]), refined=True,
                            refine_rounds=len(res.info["rounds"])))
  return added


def _as_target(record: Sample, s: Sample, v: Verdict, index: int, **fields) -> Sample:
  """A new record of `record`'s prompt (its text and tokens, whatever prompt `s` was
  generated from) with `s`'s completion and the verifier's verdict on it; the judge's
  scores of `record` do not carry over to another completion."""
  return record.replace(completion=s.completion, completion_tokens=list(s.completion_tokens),
                        logprobs=list(s.logprobs), num_tokens=len(s.completion_tokens),
                        finish_reason=s.finish_reason, reward=float(v.reward),
                        verifier_status=v.status, verifier_detail=v.detail,
                        sample_index=index, judge_score=None, judge_reply=None,
                        verifier_reward=None, **fields)


# ----------------------------------------------------------------------------- STaR rationalization

RATIONALIZE_PROMPT = "{question}\n\nHint: the answer is {answer}."


def rationalize_prompt(question: str, answer: str) -> str:
  return RATIONALIZE_PROMPT.format(question=question, answer=str(answer).strip())


def rationalize_records(records: Sequence[Sample], problems: Sequence, ctx: Context,
                        cfg: StrategyConfig, seed: int, threshold: float) -> list[Sample]:
  """STaR's rationalization (Zelikman et al. 2022, section 3.2): for each problem none
  of whose samples the verifier accepted, the model is shown the reference answer as a
  hint and answers again (greedy, one answer per problem). An answer the verifier
  accepts is returned as a new record of the *original* prompt (its text and tokens
  are the failed samples': the hint is not in what is trained on), marked
  `rationalized`; one that does not reach the answer is dropped, and so is one that
  mentions the hint, which would teach the model to cite a hint it is never shown.
  The records' log-probs are the hinted prompt's (not the policy's on the original)."""
  by_problem = {p.id: p for p in problems}
  failed = [group for pid, group in group_by_problem(records).items()
            if pid in by_problem and not any(r.reward >= threshold for r in group)]
  if not failed:
    return []
  hinted = [by_problem[group[0].problem_id] for group in failed]
  outs = ctx.generate([rationalize_prompt(p.prompt, p.reference) for p in hinted],
                      cfg.greedy, 1, seed)
  verdicts = verify(ctx.task, hinted, [o[0].completion for o in outs],
                    truncated=[o[0].finish_reason == "length" for o in outs])
  return [_as_target(group[0], o[0], v, len(group), rationalized=True)
          for group, o, v in zip(failed, outs, verdicts)
          if v.reward >= threshold and "hint" not in o[0].completion.lower()]
