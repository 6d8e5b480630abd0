"""Evaluate: held-out scores of a model, the one path used by the loop (every
iteration) and by `selfimprove-jax eval`.

`evaluate` scores greedy pass@1 (what the loop's accept / roll back decision reads),
maj@k / pass@k and the mean reward of k samples, and the held-out score of each
refinement strategy the settings name. `results` gives the same per problem (the loop
writes them to records/iter_K/eval_heldout.jsonl) and `summarize` turns those rows into
the metrics. Nothing here trains or writes files.

The `eval` command (evaluate/command.py) builds its settings the way the loop does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from selfimprove_jax.acquire.rounds import acquire, episodes
from selfimprove_jax.environments.episodes import turn_counts
from selfimprove_jax.policy import GenerateFn
from selfimprove_jax.records import group_by_problem, majority
from selfimprove_jax.refine import strategies as refine
from selfimprove_jax.sampling import SamplingParams
from selfimprove_jax.tasks import verify
from selfimprove_jax.tasks.answers import answer_as_verified
from selfimprove_jax.tasks.problem import derive_seed


@dataclasses.dataclass(frozen=True)
class Settings:
  """What `evaluate` does besides greedy pass@1 (settings.evaluate: config.evaluate,
  config.sampling)."""
  maj_k: int = 4                         # samples per problem for maj@k / pass@k (1: none)
  sample: SamplingParams = SamplingParams(temperature=1.0, max_new_tokens=48)
  strategies: tuple = ()                 # refinement strategies scored beside greedy
  strategy: refine.StrategyConfig = refine.StrategyConfig()
  environment: Any = None                # an environments.Spec: problems are played as episodes


def evaluate(generate: GenerateFn, task, problems: Sequence, settings: Settings, seed: int,
             judge: Optional[GenerateFn] = None) -> dict:
  """Held-out metrics of the model behind `generate` on `problems`. `judge` is the
  judge model's GenerateFn for judge-scored strategies (None: the model judges itself)."""
  return summarize(results(generate, task, problems, settings, seed, judge), settings)


def results(generate: GenerateFn, task, problems: Sequence, settings: Settings, seed: int,
            judge: Optional[GenerateFn] = None) -> list[dict]:
  """One row per problem (the loop's records/iter_K/eval_heldout.jsonl): its id and
  prompt, the greedy completion, the answer extracted from it and the verifier's
  reward; with maj_k > 1 the k sampled answers and rewards and their majority's
  verdict; per refinement strategy its final answer and reward. `summarize` turns the
  rows into the metrics, so a run that reads them back reports the same numbers."""
  if settings.environment is not None:
    return _episodes(generate, settings.environment, problems, settings.maj_k,
                     settings.sample, seed)
  rows = _greedy_and_sampled(generate, task, problems, settings.maj_k, settings.sample, seed)
  if settings.strategies:   # inference compute's value, beside greedy
    ctx = refine.Context(generate, task, problems, judge=judge or generate)
    by_strategy = refine.heldout_results(ctx, settings.strategies, settings.strategy,
                                         derive_seed(seed, "strategies") % (2**31 - 1))
    for i, row in enumerate(rows):
      row["strategies"] = {key: per[i] for key, per in by_strategy.items()}
  return rows


def summarize(rows: Sequence[dict], settings: Settings) -> dict:
  """The held-out metrics of per-problem rows (`results`): greedy pass@1, mean reward,
  the greedy completions' mean length (tokens) and truncated share (hit the token
  budget); with k > 1 maj@k, pass@k and the sampled answers' mean reward; each
  strategy's score (and self-consistency's vote share, a revising strategy's revised
  share)."""
  metrics = {"pass@1": float(np.mean([r["reward"] >= 1.0 for r in rows])),
             "mean_reward": float(np.mean([r["reward"] for r in rows]))}
  if all("num_tokens" in r for r in rows):   # greedy completions' length and truncation
    metrics["mean_length"] = float(np.mean([r["num_tokens"] for r in rows]))
    metrics["truncated"] = float(np.mean([r["finish_reason"] == "length" for r in rows]))
  if all("episode_end" in r for r in rows):   # episodes: what the greedy ones did
    metrics.update(_process(rows))
  k = settings.maj_k
  if k > 1 and all("majority" in r for r in rows):
    metrics[f"maj@{k}"] = float(np.mean([r["majority"] is not None
                                         and r["majority_reward"] >= 1.0 for r in rows]))
  if k > 1 and all("samples" in r for r in rows):
    metrics[f"pass@{k}"] = float(np.mean([any(x["reward"] >= 1.0 for x in r["samples"])
                                          for r in rows]))
    # Mean reward of the sampled answers: moves smoothly with the probability of a right
    # answer, where greedy pass@1 flips only once it becomes the most likely one.
    metrics["sampled_reward"] = float(np.mean([x["reward"] for r in rows
                                               for x in r["samples"]]))
  if settings.strategies:
    metrics.update(refine.heldout_summary([r["strategies"] for r in rows]))
  return metrics


def _episodes(generate: GenerateFn, spec, problems: Sequence, k: int,
              sample: SamplingParams, seed: int) -> list[dict]:
  """Per-problem rows of one greedy episode each (its reward is pass@1; its turns, tool
  calls, tool errors, invalid actions and end for the process measures) and, with
  k > 1, the rewards of k sampled episodes (pass@k; no majority vote: an episode's
  answer is whatever its environment scored)."""
  greedy = SamplingParams(greedy=True, max_new_tokens=sample.max_new_tokens,
                          stop_sequences=sample.stop_sequences)
  g = episodes(generate, spec, problems, greedy, 1, seed, -1)
  rows = []
  for p, s in zip(problems, g):
    turns = s.turns or []
    rows.append({
        "problem_id": p.id, "prompt": p.prompt, "completion": s.completion,
        "reward": s.reward, "verifier_status": s.verifier_status,
        "num_tokens": sum(s.action_mask or []), "finish_reason": s.finish_reason,
        "episode_end": s.episode_end, "turns": len(turns),
        **turn_counts(turns),
        # the first step's reward: what one turn earns, so pass@1 - first_turn_pass@1
        # is what the environment's answers bought
        "first_turn_reward": float(turns[0].get("reward", 0.0)) if turns else 0.0,
        "optimal_turns": spec.optimal_turns(p)})
  if k > 1:
    groups = group_by_problem(episodes(generate, spec, problems, sample, k, seed + 1, -1))
    for row, p in zip(rows, problems):
      row["samples"] = [{"reward": s.reward, "turns": len(s.turns or [])}
                        for s in groups[p.id]]
  return rows


def _process(rows: Sequence[dict]) -> dict:
  """Process measures of greedy episodes: pass@1 of their first turns alone, turns used,
  tool calls, tool errors and invalid actions per episode, the share that ran out of turns, and (where the environment
  knows the optimum) the solved episodes' turns over the fewest possible."""
  out = {"first_turn_pass@1": float(np.mean([r["first_turn_reward"] >= 1.0 for r in rows])),
         "turns": float(np.mean([r["turns"] for r in rows])),
         "tool_calls": float(np.mean([r["tool_calls"] for r in rows])),
         "tool_errors": float(np.mean([r["tool_errors"] for r in rows])),
         "invalid_actions": float(np.mean([r["invalid"] for r in rows])),
         "out_of_turns": float(np.mean([r["episode_end"] == "max_turns" for r in rows]))}
  solved = [r for r in rows if r["reward"] >= 1.0 and r.get("optimal_turns")]
  if solved:
    out["turns_over_optimal"] = float(np.mean([r["turns"] / r["optimal_turns"]
                                               for r in solved]))
  return out


def heldout_scores(generate: GenerateFn, task, problems: Sequence, k: int,
                   sample: SamplingParams, seed: int) -> dict:
  """Greedy pass@1 and mean reward; with k > 1 also maj@k (the majority of k sampled
  answers, checked by the verifier), pass@k and the sampled answers' mean reward."""
  rows = _greedy_and_sampled(generate, task, problems, k, sample, seed)
  return summarize(rows, Settings(maj_k=k, sample=sample))


def _greedy_and_sampled(generate: GenerateFn, task, problems: Sequence, k: int,
                        sample: SamplingParams, seed: int) -> list[dict]:
  """The per-problem rows of greedy decoding and, with k > 1, k samples."""
  greedy = SamplingParams(greedy=True, max_new_tokens=sample.max_new_tokens,
                          stop_sequences=sample.stop_sequences)
  g = acquire(generate, task, problems, greedy, 1, seed, -1)
  rows = [{"problem_id": p.id, "prompt": p.prompt, "completion": s.completion,
           "answer": answer_as_verified(task, s.completion, p, s.finish_reason == "length"),
           "reward": s.reward,
           "verifier_status": s.verifier_status, "num_tokens": s.num_tokens,
           "finish_reason": s.finish_reason} for p, s in zip(problems, g)]
  if k <= 1:
    return rows
  samples = acquire(generate, task, problems, sample, k, seed + 1, -1)
  groups = group_by_problem(samples)
  # each problem's own answer format: jsonl and reasoning-gym tasks extract per problem
  # a cut-off sample votes for what it finished stating (as the verifier reads it)
  answers = [[answer_as_verified(task, s.completion, p, s.finish_reason == "length")
              for s in groups[p.id]] for p in problems]
  voted = [majority(a, [s.logprob for s in groups[p.id]])[0]
           for p, a in zip(problems, answers)]
  checked = [(p, a) for p, a in zip(problems, voted) if a is not None]
  # the voted answers are checked in one batch (sandboxed verifiers run it in parallel)
  verdicts = iter(verify(task, [p for p, _ in checked],
                         [ans_as_completion(a) for _, a in checked]))
  for row, p, a, v in zip(rows, problems, answers, voted):
    row["samples"] = [{"answer": x, "reward": s.reward} for x, s in zip(a, groups[p.id])]
    row["majority"] = v
    row["majority_reward"] = next(verdicts).reward if v is not None else 0.0
  return rows


def check_pseudo_labels(task, problems: Sequence, samples: Sequence) -> dict:
  """Label-free training's labels checked, for the metrics only (the loop calls this
  after selection, so nothing that chose training data has read a reference): of the
  prompts whose majority answer became a label (a sample marked `refined` carries it),
  how many have a reference to check it against, and how many the verifier accepts.
  A problem without a reference (the attribute missing or empty) is counted, not
  checked."""
  labels = {s.problem_id: s.majority_answer for s in samples
            if s.refined and s.majority_answer is not None}
  by_id = {p.id: p for p in problems}
  # getattr: a label-free data set's problems may have no reference at all
  checkable = [pid for pid in labels if pid in by_id
               and getattr(by_id[pid], "reference", None) not in (None, "")]
  verdicts = verify(task, [by_id[pid] for pid in checkable],
                    [ans_as_completion(labels[pid]) for pid in checkable])
  return {"pseudo_labels": len(labels), "pseudo_labels_checked": len(checkable),
          "pseudo_labels_right": sum(v.reward >= 1.0 for v in verdicts)}


def ans_as_completion(answer: str) -> str:
  """A completion text that states `answer` in the declared format of every task."""
  return f"#### {answer}"
