"""Acquire: G samples per problem from the current model, scored by the task's verifier
(or, with an environment, G multi-turn episodes per problem, scored by the environment),
with the judge's scores, a refinement strategy's training targets and STaR's
rationalizations where the config asks for them. In label-free mode
(`acquire.label_free`) no reference answer is read here: the verifier never runs, and a
sample's reward is its agreement with its prompt's self-consistency majority.

A sample the verifier could not finish (a sandbox limit, a scorer that raised) gets
reward 0 with the reason in `verifier_status` / `verifier_detail`; nothing here raises
on model output.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from selfimprove_jax.environments import episodes as episodes_lib
from selfimprove_jax.policy import GenerateFn
from selfimprove_jax.records import Sample, pass_rate
from selfimprove_jax.refine import strategies as refine_lib
from selfimprove_jax.refine import targets as refine_targets
from selfimprove_jax.sampling import SamplingParams
from selfimprove_jax.select import judge as judge_lib
from selfimprove_jax.tasks import verify


def sample(generate: GenerateFn, problems: Sequence, sp: SamplingParams, n: int, seed: int,
           iteration: int) -> list[Sample]:
  """n samples per problem (grouped by problem), unverified: nothing here reads a
  problem's reference (label-free acquisition)."""
  groups = generate([p.prompt for p in problems], sp, n, seed)
  return [s.replace(problem_id=p.id, iteration=int(iteration), verifier_status="unverified")
          for p, group in zip(problems, groups) for s in group]


def episodes(generate: GenerateFn, spec, problems: Sequence, sp: SamplingParams, n: int,
             seed: int, iteration: int) -> list[Sample]:
  """n multi-turn episodes per problem in environment `spec` (environments/), grouped by
  problem; the environment scores them (an episode's reward is its last step's), so no
  verifier runs here. `generate` must be able to play them (ModelPolicy.episodes)."""
  play = getattr(generate, "episodes", None)
  if play is None:
    raise TypeError(f"{type(generate).__name__} cannot play episodes (needs .episodes)")
  return [s.replace(iteration=int(iteration))
          for group in play(spec, problems, sp, n, seed) for s in group]


def acquire(generate: GenerateFn, task, problems: Sequence, sp: SamplingParams, n: int,
            seed: int, iteration: int) -> list[Sample]:
  """n samples per problem (grouped by problem), each with its verifier's reward."""
  samples = sample(generate, problems, sp, n, seed, iteration)
  by_id = {p.id: p for p in problems}
  flat = [by_id[s.problem_id] for s in samples]
  # all at once: sandboxed verifiers spread the batch over their worker pool
  # a cut-off sample counts only the answer it finished stating (tasks.verify)
  verdicts = verify(task, flat, [s.completion for s in samples],
                    truncated=[s.finish_reason == "length" for s in samples])
  return [s.replace(reference=p.reference, reward=float(v.reward), verifier_status=v.status,
                    verifier_detail=v.detail)
          for p, s, v in zip(flat, samples, verdicts)]


@dataclasses.dataclass(frozen=True)
class Settings:
  """One acquisition round's knobs (built by settings.acquire from config.loop,
  config.sampling, config.judge, config.acquire, config.refine)."""
  n: int                                 # G samples per problem
  sample: SamplingParams
  judge: bool = False                    # judge every sample (judge.needed)
  judge_samples: int = 1
  judge_tokens: int = 64
  judge_as_reward: bool = False          # the judge's score replaces the verifier's reward
  refine_strategy: str = ""              # a strategy whose results mark training targets
  strategy: Optional[refine_lib.StrategyConfig] = None
  min_vote_share: float = 0.0            # self_consistency targets: the vote share needed
  label_free: bool = False               # no reference read: reward = majority agreement
  environment: Any = None                # an environments.Spec: samples are episodes
  rationalize: bool = False              # STaR: failed problems answered again with a hint
  reward_threshold: float = 1.0          # a sample at or above it is right (rationalize)
  judge_threshold: float = 0.6           # a judge score at or above it says right (agreement)


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
  paradigm: Any = None                  # the paradigm's own settings (Algorithm.settings)
  # what the paradigm keeps of the samples this run acquired before this round (earlier
  # rounds and iterations, rolled-back ones included): its running summary
  # (paradigms.registry.Algorithm.remember), what "new" is measured against; None: none
  earlier: Optional[dict] = None


def acquire_round(r: Round, problems: Sequence) -> list[Sample]:
  """`acquire` (label-free: `sample`, no verifier), then what the config adds to those
  samples: judge scores (judge.py), a refinement strategy's training targets
  (refine.py), label-free rewards, and STaR's rationalizations."""
  st = r.settings
  if st.environment is not None:
    samples = episodes(r.generate, st.environment, problems, st.sample, st.n, r.seed,
                       r.iteration)
  elif st.label_free:
    samples = sample(r.generate, problems, st.sample, st.n, r.seed, r.iteration)
  else:
    samples = acquire(r.generate, r.task, problems, st.sample, st.n, r.seed, r.iteration)
  judge = r.judge or r.generate
  if st.judge:
    samples = judge_lib.score_records(judge, samples, samples=st.judge_samples,
                                      max_new_tokens=st.judge_tokens, seed=r.seed + 1,
                                      use_as_reward=st.judge_as_reward)
  ctx = refine_lib.Context(r.generate, r.task, problems, judge=judge)
  if st.refine_strategy:
    samples = refine_targets.refine_records(st.refine_strategy, samples, problems, ctx,
                                            st.strategy, r.seed + 2, st.min_vote_share)
  if st.label_free:
    # LMSI (Huang et al. 2022) / TTRL (Zuo et al. 2025): the self-consistency majority
    # is the label, so a sample's reward is whether it agrees with it (the vote share
    # at least acquire.min_vote_share); every filter and loss then reads that reward
    samples = [s.replace(reward=float(bool(s.refined))) for s in samples]
  if st.rationalize:
    samples += refine_targets.rationalize_records(samples, problems, ctx, st.strategy,
                                                  r.seed + 3, st.reward_threshold)
  return samples


def summary(samples: Sequence[Sample], st: Settings) -> dict:
  """What the acquisition extras added to an iteration's samples, for its row:
  refinement targets (and how often the verifier accepts them, when the verifier ran),
  rationalizations, and the judge's agreement with the verifier."""
  row = {}
  if st.refine_strategy:
    targets = [x for x in samples if x.refined]
    row["refined"] = len(targets)
    if not st.label_free:   # label-free rewards are the targets' own votes
      row["refined_precision"] = (pass_rate(targets, st.reward_threshold)
                                  if targets else float("nan"))
  if st.rationalize:
    row["rationalized"] = sum(bool(x.rationalized) for x in samples)
  if st.environment is not None:
    row.update(episodes_lib.process_metrics(samples))
  return {**row, **judge_lib.agreement(samples, st.judge_threshold, st.reward_threshold)}
