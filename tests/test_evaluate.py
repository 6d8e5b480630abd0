"""The curriculum (evaluate/curriculum.py): difficulty moves within the band and range."""

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
