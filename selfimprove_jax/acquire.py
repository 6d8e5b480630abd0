"""Acquire: G samples per problem from the current model, scored by the task's verifier,
with the judge's scores and a refinement strategy's training targets where the config
asks for them.

A sample the verifier could not finish (a sandbox limit, a scorer that raised) gets
reward 0 with the reason in `verifier_status` / `verifier_detail`; nothing here raises
on model output.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from selfimprove_jax import judge as judge_lib
from selfimprove_jax import refine as refine_lib
from selfimprove_jax.policy import GenerateFn, sampling_params
from selfimprove_jax.records import Sample
from selfimprove_jax.sampling import SamplingParams
from selfimprove_jax.tasks import verify


def acquire(generate: GenerateFn, task, problems: Sequence, sp: SamplingParams, n: int,
            seed: int, iteration: int) -> list[Sample]:
  """n samples per problem (grouped by problem), each with its verifier's reward."""
  groups = generate([p.prompt for p in problems], sp, n, seed)
  flat = [(p, s) for p, group in zip(problems, groups) for s in group]
  # all at once: sandboxed verifiers spread the batch over their worker pool
  verdicts = verify(task, [p for p, _ in flat], [s.completion for _, s in flat])
  return [s.replace(problem_id=p.id, reference=p.reference, iteration=int(iteration),
                    reward=float(v.reward), verifier_status=v.status,
                    verifier_detail=v.detail)
          for (p, s), v in zip(flat, verdicts)]


@dataclasses.dataclass(frozen=True)
class Settings:
  """One acquisition round's knobs (config.loop, config.sampling, config.judge,
  config.acquire, config.refine)."""
  n: int                                 # G samples per problem
  sample: SamplingParams
  judge: bool = False                    # judge every sample (judge.needed)
  judge_samples: int = 1
  judge_tokens: int = 64
  judge_as_reward: bool = False          # the judge's score replaces the verifier's reward
  refine_strategy: str = ""              # a strategy whose results mark training targets
  strategy: Optional[refine_lib.StrategyConfig] = None
  min_vote_share: float = 0.0            # self_consistency targets: the vote share needed

  @classmethod
  def from_config(cls, config) -> "Settings":
    sample = sampling_params(config, config.sampling.max_new_tokens)
    return cls(config.loop.samples_per_prompt, sample, judge_lib.needed(config),
               config.judge.samples, config.judge.max_new_tokens, config.judge.use_as_reward,
               config.acquire.refine_strategy,
               refine_lib.StrategyConfig.from_config(config, sample),
               config.acquire.min_vote_share)


@dataclasses.dataclass(frozen=True)
class Round:
  """What one acquisition round may use."""
  generate: GenerateFn                  # the current policy
  judge: Optional[GenerateFn]           # a separate judge model; None: the policy judges
  task: Any
  heldout: Sequence                     # held-out problems: never trained on, never proposed
  settings: Settings
  seed: int
  iteration: int
  config: Any                           # the run's config (a paradigm's own sections)


def acquire_round(r: Round, problems: Sequence) -> list[Sample]:
  """`acquire`, then what the config adds to those samples: judge scores (judge.py)
  and a refinement strategy's training targets (refine.py)."""
  st = r.settings
  samples = acquire(r.generate, r.task, problems, st.sample, st.n, r.seed, r.iteration)
  judge = r.judge or r.generate
  if st.judge:
    samples = judge_lib.score_records(judge, samples, samples=st.judge_samples,
                                      max_new_tokens=st.judge_tokens, seed=r.seed + 1,
                                      use_as_reward=st.judge_as_reward)
  if st.refine_strategy:
    ctx = refine_lib.Context(r.generate, r.task, problems, judge=judge)
    samples = refine_lib.refine_records(st.refine_strategy, samples, problems, ctx,
                                        st.strategy, r.seed + 2, st.min_vote_share)
  return samples
