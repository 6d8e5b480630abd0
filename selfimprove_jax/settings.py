"""Every stage's typed settings, built once from the experiment config, by keyword.

This module is the one place that turns a ConfigDict into what the stages read: the
loop's set-up (and the `eval` command) call it, and no stage function receives the
ConfigDict, so a stage's signature says what it reads. Comma lists of names
(select.filters, evaluate.strategies) become tuples here, once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from selfimprove_jax.acquire import rounds as acquire_lib
from selfimprove_jax.acquire import self_instruct as self_instruct_lib
from selfimprove_jax import config as config_lib
from selfimprove_jax import environments
from selfimprove_jax.config import names
from selfimprove_jax.errors import UserError
from selfimprove_jax.evaluate import gate as gate_lib
from selfimprove_jax.evaluate import heldout as evaluation
from selfimprove_jax.evaluate import rules as rules_lib
from selfimprove_jax.optimize import batches as batches_lib
from selfimprove_jax.optimize import phase as phase_lib
from selfimprove_jax.refine import strategies as refine_lib
from selfimprove_jax.sampling import PromptFormat, SamplingParams
from selfimprove_jax.select import filters as select_lib


def sampling(config, max_new_tokens: int) -> SamplingParams:
  """The run's sampling settings (config.sampling) with a stage's token budget."""
  sp = config.sampling
  return SamplingParams(temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p,
                        stop_sequences=tuple(sp.stop_sequences), max_new_tokens=max_new_tokens)


def prompt_format(config) -> PromptFormat:
  """How the run's prompts become token ids: prompt_format, prompt_template,
  system_prompt and chat_template_kwargs (the loop's model and the eval command)."""
  kwargs = config_lib.template_kwargs(config.chat_template_kwargs)
  return PromptFormat(chat=config.prompt_format == "chat", template=config.prompt_template,
                      system_prompt=config.system_prompt,
                      template_kwargs=tuple(sorted(kwargs.items())))


def strategy(config, sample: SamplingParams) -> refine_lib.StrategyConfig:
  """The refinement strategies' knobs (config.refine, config.judge)."""
  r, j = config.refine, config.judge
  return refine_lib.StrategyConfig(
      n=r.n, rounds=r.rounds, scorer=r.scorer, sample=sample,
      critique_tokens=r.critique_tokens, judge_samples=j.samples,
      judge_tokens=j.max_new_tokens)


def judge_needed(config) -> bool:
  """True when the config makes acquisition judge every sample: the 'judge' filter, a
  judge reward, judge-ranked DPO pairs, best-of-n by judge, or judge.score_records."""
  return ("judge" in names(config.select.filters) or config.judge.use_as_reward
          or config.loop.dpo_pairs == "judge" or config.judge.score_records
          or (config.acquire.refine_strategy == "best_of_n" and config.refine.scorer == "judge"))


def environment(config, task) -> Optional[environments.Spec]:
  """The multi-turn environment config.environment names, for `task`'s problems (None:
  single-turn samples)."""
  e = config.environment
  if not e.name:
    return None
  return environments.make(e.name, task, max_turns=e.max_turns, max_tokens=e.max_tokens,
                           options=e.options.to_dict())


def acquire(config, env: Optional[environments.Spec] = None) -> acquire_lib.Settings:
  """One acquisition round's knobs (config.loop, sampling, judge, acquire, refine), with
  the environment its samples are episodes of (`environment`)."""
  a, j = config.acquire, config.judge
  sample = sampling(config, config.sampling.max_new_tokens)
  return acquire_lib.Settings(
      n=config.loop.samples_per_prompt, sample=sample, judge=judge_needed(config),
      judge_samples=j.samples, judge_tokens=j.max_new_tokens,
      judge_as_reward=j.use_as_reward, refine_strategy=a.refine_strategy,
      strategy=strategy(config, sample), min_vote_share=a.min_vote_share,
      label_free=a.label_free, rationalize=a.rationalize,
      reward_threshold=config.select.reward_threshold,
      judge_threshold=config.select.judge_threshold, environment=env)


def select(config) -> select_lib.Settings:
  """The filters' knobs (config.select)."""
  c = config.select
  return select_lib.Settings(
      filters=tuple(names(c.filters)), reward_threshold=c.reward_threshold,
      min_pass_rate=c.min_pass_rate, max_pass_rate=c.max_pass_rate,
      dedup_ngram=c.dedup_ngram, dedup_threshold=c.dedup_threshold,
      max_completion_tokens=c.max_completion_tokens, judge_threshold=c.judge_threshold,
      replay=c.replay)


def evaluate(config, env: Optional[environments.Spec] = None) -> evaluation.Settings:
  """What held-out evaluation does besides greedy pass@1 (config.evaluate, sampling); with
  an environment (`environment`) it scores episodes."""
  e = config.evaluate
  sample = sampling(config, e.max_new_tokens)
  return evaluation.Settings(maj_k=e.maj_k, sample=sample, environment=env,
                             strategies=refine_lib.check_strategies(names(e.strategies)),
                             strategy=strategy(config, sample))


def self_instruct(config) -> self_instruct_lib.Settings:
  """The proposer's knobs (config.self_instruct)."""
  si = config.self_instruct
  return self_instruct_lib.Settings(
      proposals=si.proposals, examples=si.examples, ngram=si.ngram,
      max_overlap=si.max_overlap, votes=si.votes, min_vote_share=si.min_vote_share,
      sample=sampling(config, si.max_new_tokens))


def batches(config) -> batches_lib.Settings:
  """How selected samples become optimizer batches (config.train, loop, optim)."""
  t, o = config.train, config.optim
  return batches_lib.Settings(
      batch_size=t.batch_size, epochs=t.epochs, max_seq_len=t.max_seq_len,
      reward_threshold=config.select.reward_threshold, dpo_pairs=config.loop.dpo_pairs,
      prompts=config.loop.prompts_per_iteration, samples_per_prompt=config.loop.samples_per_prompt,
      row_unit=o.micro_batch_size if o.micro_batch_size > 0 else o.grad_accum_steps)


def phase(config, algorithm) -> phase_lib.Settings:
  """How an iteration trains (config.optim, config.loop, and what the algorithm needs)."""
  o = config.optim
  return phase_lib.Settings(
      continue_state=o.continue_state, restart_from_base=config.loop.restart_from_base,
      needs_reference=algorithm.needs_reference(config),
      rows_per_example=algorithm.rows_per_example,
      # a fresh schedule spans the steps an iteration of one round takes
      fresh_horizon=(not o.continue_state and o.schedule_horizon == "batches"
                     and algorithm.rounds(config) == 1),
      max_update_ratio=o.max_update_ratio)


def gate(config) -> gate_lib.Settings:
  """When an iteration is kept and a run stops (config.evaluate)."""
  e = config.evaluate
  return gate_lib.Settings(max_regression=e.max_regression, patience=e.patience)


def rules(config) -> tuple:
  """The watchers' rules (config.evaluate.rules, evaluate/rules.py), checked: a rule
  that switches the algorithm names one whose own checks pass on this config with the
  rules' filters."""
  from selfimprove_jax.paradigms import registry   # the paradigms import settings' users
  out = rules_lib.parse(config.evaluate.rules, registry.ALGORITHMS, config_lib.FILTER_NAMES)
  # a switch is checked with the rules' filters set (a switch to sft comes with its own)
  filters = {"select.filters": r.arg.replace("+", ",") for r in out if r.action == "filters"}
  for r in out:
    if r.action == "algorithm":
      try:
        registry.algorithm(steered(config, {"loop.algorithm": r.arg, **filters}))
      except UserError as e:
        raise UserError(f"evaluate.rules: {r.text!r}: {e}") from None
  return out


def steered(config, adjust: dict):
  """The config an iteration runs with: the run's, with the rules' adjustments (the
  loop state's, config key -> value) set."""
  if not adjust:
    return config
  return config_lib.apply_overrides(config, [f"{k}={v}" for k, v in sorted(adjust.items())])


@dataclasses.dataclass(frozen=True)
class Stages:
  """Every stage's settings of one run, built once at set-up."""
  acquire: acquire_lib.Settings
  select: select_lib.Settings
  evaluate: evaluation.Settings
  self_instruct: self_instruct_lib.Settings
  batches: batches_lib.Settings
  phase: phase_lib.Settings
  gate: gate_lib.Settings
  rules: tuple           # the watchers' rules (evaluate/rules.py)
  paradigm: Any          # the algorithm's own sections (Algorithm.settings)


def stages(config, algorithm, task=None) -> Stages:
  """Every stage's settings from the config (and, for an environment, the task its
  episodes start from), once."""
  env = environment(config, task)
  return Stages(acquire=acquire(config, env), select=select(config),
                evaluate=evaluate(config, env),
                self_instruct=self_instruct(config), batches=batches(config),
                phase=phase(config, algorithm), gate=gate(config), rules=rules(config),
                paradigm=algorithm.settings(config))
