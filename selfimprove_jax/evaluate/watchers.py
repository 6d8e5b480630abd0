"""Watchers: the failure modes of self-improvement, measured every iteration.

The survey behind this project names the ways a model trained on its own output goes
wrong; each watcher below turns one into a number in the iteration's row (and so in
metrics.jsonl and TensorBoard), computed from the iteration's records alone, so a
resumed run computes the same values. The formulas (README, "Watchers"):

  diversity (model collapse)
    watch_distinct_answers   mean over prompts of (distinct answers among its G samples) / G
    watch_identical_groups   share of prompts whose G completions are all the same text
    watch_distinct_2         distinct-2 of the completions: distinct token bigrams / bigrams
    watch_surprisal          mean -log p of the sampled tokens (the sampler's raw
                             log-probs; at temperature 1 an estimate of the per-token
                             entropy), over samples that have log-probs
  truncation and length
    watch_truncated          share of completions that hit the token budget
    watch_mean_length        mean completion length (tokens)
    watch_selected_*         the same two of the selected samples (what is trained on);
                             each split's greedy completions have theirs in its metrics
                             (mean_length, truncated: evaluate/heldout.py)
  autophagy (data the model made)
    watch_model_made         share of the trained examples the model made: samples of
                             problems it proposed (self-instruct, self-play), revised or
                             rationalized targets, and replayed earlier selections
  across iterations, against the last accepted row
    watch_reversal           1 when validation pass@1 rose while pass@k or the sampled reward
                             fell (self-improvement reversal), else 0
    watch_train_signal       mean reward of the acquired samples (the verifier's, or what
                             replaced it: a judge, label-free agreement, learnability)
    watch_proxy_divergence   1 when the training signal rose while validation pass@1 fell
                             (reward hacking, a biased judge, wrong pseudo-labels), else 0
A watcher without its inputs (no log-probs, no earlier row) is left out of the row.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

from selfimprove_jax.records import Sample, group_by_problem, normalise

# every watcher's row key (the rules of evaluate/rules.py may read each)
SIGNALS = ("watch_distinct_answers", "watch_identical_groups", "watch_distinct_2",
           "watch_surprisal", "watch_truncated", "watch_mean_length",
           "watch_selected_truncated", "watch_selected_mean_length", "watch_model_made",
           "watch_reversal", "watch_train_signal", "watch_proxy_divergence")

# a sample -> the answer its completion states (None: none found)
AnswerOf = Callable[[Sample], Optional[str]]


def diversity(samples: Sequence[Sample], answer_of: AnswerOf) -> dict:
  """watch_distinct_answers, watch_identical_groups, watch_distinct_2, watch_surprisal."""
  groups = [g for g in group_by_problem(samples).values() if g]
  if not groups:
    return {}
  out = {
      "watch_distinct_answers": sum(len({answer_of(s) for s in g}) / len(g) for g in groups)
                                / len(groups),
      "watch_identical_groups": sum(len({normalise(s.completion) for s in g}) == 1
                                    for g in groups) / len(groups),
      "watch_distinct_2": distinct_n((s.completion_tokens for s in samples), 2),
  }
  lps = [lp for s in samples for lp in s.logprobs]
  if lps:
    out["watch_surprisal"] = -sum(lps) / len(lps)
  return out


def distinct_n(token_lists: Iterable[Sequence[int]], n: int) -> float:
  """Distinct n-grams / n-grams over all the sequences (Li et al. 2016); 0 when none."""
  seen, total = set(), 0
  for toks in token_lists:
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    seen.update(grams)
    total += len(grams)
  return len(seen) / total if total else 0.0


def length(samples: Sequence[Sample], prefix: str = "watch_") -> dict:
  """watch_truncated, watch_mean_length (with `prefix` 'watch_selected_': of the
  selected samples)."""
  if not samples:
    return {}
  return {f"{prefix}truncated": sum(s.finish_reason == "length" for s in samples) / len(samples),
          f"{prefix}mean_length": sum(s.num_tokens for s in samples) / len(samples)}


def model_made(trained: Sequence[Sample], proposed: frozenset, replayed: int) -> dict:
  """watch_model_made: of the trained examples (the selected ones plus `replayed`
  earlier selections), the share the model made."""
  n = len(trained) + replayed
  if not n:
    return {}
  made = sum(s.problem_id in proposed or s.role in ("proposer", "solver")
             or bool(s.refine_rounds) or bool(s.rationalized) for s in trained)
  return {"watch_model_made": (made + replayed) / n}


def trends(metrics: dict, train_signal: float, last: Optional[dict]) -> dict:
  """watch_train_signal, and against `last` (the last accepted row; None at the start)
  watch_reversal and watch_proxy_divergence."""
  out = {"watch_train_signal": train_signal}
  if last is None:
    return out
  rose = metrics["pass@1"] > last["pass@1"]
  fell = [k for k in metrics if (k.startswith("pass@") and k != "pass@1")
          or k == "sampled_reward"]
  out["watch_reversal"] = int(rose and any(k in last and metrics[k] < last[k] for k in fell))
  prev = last.get("watch_train_signal")
  out["watch_proxy_divergence"] = int(prev is not None and train_signal > prev
                                      and metrics["pass@1"] < last["pass@1"])
  return out


def iteration(acquired: Sequence[Sample], trained: Sequence[Sample], answer_of: AnswerOf,
              proposed: frozenset, replayed: int, metrics: dict,
              last: Optional[dict]) -> dict:
  """Every watcher of one iteration, for its row."""
  signal = sum(s.reward for s in acquired) / len(acquired) if acquired else 0.0
  return {**diversity(acquired, answer_of), **length(acquired),
          **length(trained, "watch_selected_"),
          **model_made(trained, proposed, replayed), **trends(metrics, signal, last)}
