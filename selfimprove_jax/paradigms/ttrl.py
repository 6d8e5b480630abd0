"""Label-free RL (`loop.algorithm=ttrl`): GRPO whose reward is agreement with the
majority of the group's answers (TTRL, Zuo et al. 2025, "Test-Time Reinforcement
Learning"; the self-consistency pseudo-labels of Huang et al. 2022).

Each prompt's G samples vote (`refine.label_votes`, the labelling rule label-free SFT
shares): the answers the task's declared extraction
reads (numbers compared as numbers) elect a pseudo-label when the
majority holds at least `acquire.min_vote_share` of the votes and is not tied; each
sample's reward is 1 when its answer is the label, else 0, and a group without a label
gets no reward at all (a thin or tied majority is a guess, and rewarding it teaches
the guess). No reference is read for training: the answer is extracted as if the
problem had none, and the verifier is never called for a reward.

Where a reference exists after all -- a procedural task, or a jsonl row's
`hidden_answer` (jsonl_task.py: withheld from training problems, kept in their
metadata) -- each sample is also checked against it, for the logs only: its
`verifier_reward`, and per iteration the pseudo-labels' precision (how often the
majority was right) and the hidden training pass rate. Evaluation is the loop's own,
on the held-out split, whose problems carry their references (`answer` or
`hidden_answer`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from selfimprove_jax.acquire import rounds as acquire_lib
from selfimprove_jax.paradigms import common
from selfimprove_jax.records import Sample, agreement_rewards, group_by_problem
from selfimprove_jax.refine import strategies as refine_lib
from selfimprove_jax.tasks import verify
from selfimprove_jax.tasks.problem import HIDDEN_REFERENCE


def hidden_reference(problem) -> Optional[str]:
  """The reference the logs may check against (never the reward): a jsonl row's
  hidden answer, else the problem's own reference, else None."""
  return problem.metadata.get(HIDDEN_REFERENCE) or problem.reference or None


def ttrl_round(r: acquire_lib.Round, problems: Sequence) -> list[Sample]:
  """G samples per problem, rewarded by agreement with their group's pseudo-label;
  checked against a hidden reference where one exists (logs only)."""
  st = r.settings
  groups = r.generate([p.prompt for p in problems], st.sample, st.n, r.seed)
  out = []
  for p, group in zip(problems, groups):
    votes, label, share = refine_lib.label_votes(r.task, p, group, st.min_vote_share)
    out += [s.replace(problem_id=p.id, reference=hidden_reference(p),
                      iteration=int(r.iteration), reward=reward, answer=vote,
                      pseudo_label=label, vote_share=share)
            for s, vote, reward in zip(group, votes, agreement_rewards(votes, label))]
  return _check_hidden(r.task, problems, out)


def _check_hidden(task, problems, samples: list[Sample]) -> list[Sample]:
  """`verifier_reward` of each sample whose problem has a hidden reference."""
  by_id = {p.id: p for p in problems}
  checked = [i for i, s in enumerate(samples) if s.reference is not None]
  verdicts = verify(task, [dataclasses.replace(by_id[samples[i].problem_id],
                                               reference=samples[i].reference)
                           for i in checked], [samples[i].completion for i in checked],
                    truncated=[samples[i].finish_reason == "length" for i in checked])
  out = list(samples)
  for i, v in zip(checked, verdicts):
    out[i] = out[i].replace(verifier_reward=float(v.reward))
  return out


def ttrl_metrics(samples: Sequence[Sample], threshold: float) -> dict:
  """Share of prompts with a pseudo-label, mean vote share, and where hidden
  references exist: label precision and the hidden training pass rate (else None)."""
  groups = list(group_by_problem(samples).values())
  labeled = [g for g in groups if g[0].pseudo_label is not None]
  checkable = [g for g in labeled if g[0].verifier_reward is not None]
  right = [any(s.answer == s.pseudo_label and s.verifier_reward >= threshold for s in g)
           for g in checkable]
  hidden = [s.verifier_reward for s in samples if s.verifier_reward is not None]
  return {"ttrl_labeled_share": len(labeled) / max(1, len(groups)),
          "ttrl_mean_vote_share": (sum(g[0].vote_share or 0.0 for g in groups)
                                   / max(1, len(groups))),
          "ttrl_label_precision": sum(right) / len(right) if right else None,
          "ttrl_hidden_pass_rate": sum(hidden) / len(hidden) if hidden else None}


def check(config) -> None:
  """Group-relative majority rewards (G >= 2), from the policy's own samples."""
  common.check_group(config)
  common.check_own_acquire(config)
  common.check_no_replay(config)
