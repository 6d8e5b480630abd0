"""The evaluation layer (evaluate/): the curriculum's moves, the watchers' formulas, and
held-out results per problem."""

import pytest

from selfimprove_jax.evaluate import curriculum


# ----------------------------------------------------------------------------- curriculum


def test_curriculum_moves_within_band_and_range():
  rng = (1, 8)
  assert curriculum.step(2, 0.9, rng) == (3, {"from": 2, "to": 3, "pass_rate": 0.9,
                                              "reason": "pass rate 0.90 > 0.7"})
  assert curriculum.step(2, 0.1, rng)[0] == 1
  assert curriculum.step(2, 0.5, rng) == (2, None)
  assert curriculum.step(8, 0.95, rng) == (8, None)     # already hardest
  assert curriculum.step(1, 0.0, rng) == (1, None)
  assert curriculum.step(3, None, rng) == (3, None)
  ledger = {"a": {"attempts": 4, "successes": 4, "last_seen": 2},
            "b": {"attempts": 4, "successes": 0, "last_seen": 2},
            "c": {"attempts": 8, "successes": 8, "last_seen": 1}}
  assert curriculum.ledger_pass_rate(ledger, 2) == 0.5
  assert curriculum.ledger_pass_rate(ledger, 3) is None


# ----------------------------------------------------------------------------- watchers


def _w(pid, text, tokens, logprobs=(), finish="eos", reward=0.0, **fields):
  from selfimprove_jax.records import Sample
  return Sample(problem_id=pid, completion=text, completion_tokens=list(tokens),
                logprobs=list(logprobs), finish_reason=finish, num_tokens=len(tokens),
                reward=reward, **fields)


def test_watcher_formulas_on_scripted_samples():
  from selfimprove_jax.evaluate import watchers
  samples = [_w("a", "x 1", [1, 2, 3], [-1.0, -1.0, -1.0], reward=1.0),
             _w("a", "x 1", [1, 2, 3], [-1.0, -1.0, -1.0], reward=1.0),
             _w("b", "y 2", [4, 5], [-2.0, -2.0], finish="length"),
             _w("b", "y 3", [4, 6], [-2.0, -2.0])]
  answer = lambda s: s.completion.split()[-1]
  row = watchers.iteration(samples, samples[:3], answer, frozenset({"b"}), 1,
                           {"pass@1": 0.5, "pass@4": 0.5, "sampled_reward": 0.5},
                           {"pass@1": 0.4, "pass@4": 0.6, "sampled_reward": 0.4,
                            "watch_train_signal": 0.25})
  # a: 1 distinct answer of 2; b: 2 of 2 -> (0.5 + 1) / 2; a's texts are identical
  assert row["watch_distinct_answers"] == 0.75
  assert row["watch_identical_groups"] == 0.5
  # bigrams (1,2) (2,3) twice, (4,5), (4,6): 4 distinct of 6
  assert row["watch_distinct_2"] == 4 / 6
  assert row["watch_surprisal"] == (6 * 1.0 + 4 * 2.0) / 10
  assert row["watch_truncated"] == 0.25 and row["watch_mean_length"] == 2.5
  # trained: 3 selected (one of proposed problem b) + 1 replayed -> 2 of 4 model-made
  assert row["watch_model_made"] == 0.5
  assert row["watch_train_signal"] == 0.5
  # pass@1 rose 0.4 -> 0.5 while pass@4 fell 0.6 -> 0.5: reversal; held-out rose, so
  # the training signal's rise is no divergence
  assert row["watch_reversal"] == 1 and row["watch_proxy_divergence"] == 0
  worse = watchers.trends({"pass@1": 0.3}, 0.5, {"pass@1": 0.4, "watch_train_signal": 0.25})
  assert worse == {"watch_train_signal": 0.5, "watch_reversal": 0,
                   "watch_proxy_divergence": 1}
  assert watchers.trends({"pass@1": 0.3}, 0.5, None) == {"watch_train_signal": 0.5}


def test_watchers_count_revisions_rationalizations_and_self_play_as_model_made():
  from selfimprove_jax.evaluate import watchers
  trained = [_w("p", "a", [1]), _w("p", "b", [1], refine_rounds=1),
             _w("p", "c", [1], rationalized=True), _w("q", "d", [1], role="solver")]
  assert watchers.model_made(trained, frozenset(), 0) == {"watch_model_made": 0.75}
  assert watchers.model_made([], frozenset(), 0) == {}
  assert watchers.diversity([], lambda s: None) == {}
  assert "watch_surprisal" not in watchers.diversity([_w("p", "a", [1, 2])], lambda s: "a")


# ----------------------------------------------------------------------------- per-problem results


def test_per_problem_results_give_the_metrics_and_survive_json():
  """`summarize` of `results` is `evaluate`'s metrics, also after the rows went through
  JSON (what the loop reads back on resume); every row names its problem, greedy answer
  and verdict, the k samples' answers and their majority's verdict."""
  import json
  from scripted import Scripted
  from selfimprove_jax.evaluate import heldout
  from selfimprove_jax.refine.strategies import StrategyConfig
  from selfimprove_jax.sampling import SamplingParams
  from selfimprove_jax.tasks import get_task
  task = get_task("arithmetic", operators="+")
  problems = task.heldout(6, 2)
  # greedy right on even problems; samples right on their first draw only
  right = {p.prompt: p.reference for p in problems}
  even = {p.prompt for p in problems[::2]}
  gen = Scripted(lambda prompt, j, g:
                 f"#### {right[prompt] if (prompt in even if g else j == 0) else 0}")
  st = heldout.Settings(maj_k=3, sample=SamplingParams(max_new_tokens=8),
                        strategies=("self_consistency",), strategy=StrategyConfig(n=3))
  rows = heldout.results(gen, task, problems, st, seed=0)
  again = [json.loads(json.dumps(r)) for r in rows]
  metrics = heldout.evaluate(gen, task, problems, st, seed=0)
  assert heldout.summarize(rows, st) == heldout.summarize(again, st) == metrics
  assert metrics["pass@1"] == 0.5 and metrics["pass@3"] == 1.0
  assert metrics["maj@3"] == 0.0 and metrics["sampled_reward"] == pytest.approx(1 / 3)
  assert [r["problem_id"] for r in rows] == [p.id for p in problems]
  first = rows[0]
  assert first["answer"] == right[problems[0].prompt] and first["reward"] == 1.0
  assert [x["answer"] for x in first["samples"]] == [right[problems[0].prompt], "0", "0"]
  assert first["majority"] == "0" and first["majority_reward"] == 0.0
  assert set(first["strategies"]) == {"self_consistency@3"}
