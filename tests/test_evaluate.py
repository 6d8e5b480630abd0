"""The evaluation layer (evaluate/): the curriculum's moves, the watchers' formulas, and
held-out results per problem."""

import numpy as np
import pytest

from selfimprove_jax.evaluate import curriculum
from selfimprove_jax.select.ledger import Ledger


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
  ledger = Ledger.from_dict({"a": {"attempts": 4, "successes": 4, "last_seen": 2},
                             "b": {"attempts": 4, "successes": 0, "last_seen": 2},
                             "c": {"attempts": 8, "successes": 8, "last_seen": 1}})
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
  # the selected three: one of them cut off, (3 + 3 + 2) / 3 tokens
  assert row["watch_selected_truncated"] == pytest.approx(1 / 3)
  assert row["watch_selected_mean_length"] == pytest.approx(8 / 3)
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
  # the scripted greedy completions are 4 tokens, none cut off
  assert metrics["mean_length"] == 4.0 and metrics["truncated"] == 0.0
  assert [r["problem_id"] for r in rows] == [p.id for p in problems]
  first = rows[0]
  assert first["answer"] == right[problems[0].prompt] and first["reward"] == 1.0
  assert [x["answer"] for x in first["samples"]] == [right[problems[0].prompt], "0", "0"]
  assert first["majority"] == "0" and first["majority_reward"] == 0.0
  assert set(first["strategies"]) == {"self_consistency@3"}


# ----------------------------------------------------------------------------- rules


def test_rules_parse_fire_and_steer_within_their_caps():
  from selfimprove_jax.evaluate import rules
  rs = rules.parse("watch_identical_groups>0.5:temperature+0.4, zero_advantage_groups>=0.6:"
                   "algorithm=sft, watch_truncated>0.2:tokens+16@40, train_pass_rate>0.9:harder,"
                   "watch_proxy_divergence>=1:rollback, pass@1<0.1:stop,"
                   "zero_advantage_groups>=0.6:filters=correct+dedup", ["sft", "grpo"],
                   ["correct", "dedup", "pass_rate_band"])
  assert [r.action for r in rs] == ["temperature", "algorithm", "tokens", "harder",
                                    "rollback", "stop", "filters"]
  row = {"watch_identical_groups": 0.75, "zero_advantage_groups": 0.5, "watch_truncated": 0.3,
         "train_pass_rate": 0.95, "watch_proxy_divergence": 1, "pass@1": float("nan")}
  fired = rules.fired(rs, row)
  assert [(r.action, v) for r, v in fired] == [("temperature", 0.75), ("tokens", 0.3),
                                               ("harder", 0.95), ("rollback", 1.0)]
  assert rules.verdict(fired)[0].startswith("rule watch_proxy_divergence>=1:rollback")
  assert rules.verdict(fired)[1] is None
  configured = {"sampling.temperature": 0.7, "loop.samples_per_prompt": 8,
                "sampling.max_new_tokens": 16, "loop.algorithm": "grpo"}
  adjust, difficulty, actions = rules.steer(fired, {}, configured, 2, (1, 8), 1)
  assert adjust == {"sampling.temperature": 1.1, "sampling.max_new_tokens": 32}
  assert difficulty == 3
  assert [a["action"] for a in actions] == ["sampling.temperature 0.7 -> 1.1",
                                            "sampling.max_new_tokens 16 -> 32",
                                            "difficulty 2 -> 3", "rollback"]
  assert actions[0] == {"rule": rs[0].text, "signal": "watch_identical_groups", "value": 0.75,
                        "action": "sampling.temperature 0.7 -> 1.1"}
  # the next firing starts from the adjusted values and stops at the caps
  adjust, _, actions = rules.steer(fired, adjust, configured, 3, (1, 8), 1)
  assert adjust == {"sampling.temperature": 1.5, "sampling.max_new_tokens": 40}
  adjust, _, actions = rules.steer(fired[:2], adjust, configured, 8, (1, 8), 1)
  assert actions == []   # both at their caps: nothing changed, nothing reported
  # the switch
  fired = rules.fired(rs, {"zero_advantage_groups": 0.7})
  configured["select.filters"] = "pass_rate_band"
  assert rules.steer(fired, {}, configured, 2, (1, 8), 1)[0] == {
      "loop.algorithm": "sft", "select.filters": "correct,dedup"}


def test_gate_applies_a_rules_rollback_and_stop():
  from types import SimpleNamespace
  from selfimprove_jax.evaluate import gate
  from selfimprove_jax.optimize.phase import Account
  trained = Account(losses=[1.0], loss_tokens=10)
  state = SimpleNamespace(best_pass1=0.5, no_improve=0, stopped=None)
  settings = gate.Settings(max_regression=0.05, patience=3)
  # a small drop the gate alone accepts; the rule rolls it back and stops the run
  assert gate.decide(state, {"pass@1": 0.48}, 4, trained, settings) == (True, "accepted")
  accepted, reason = gate.decide(state, {"pass@1": 0.48}, 4, trained, settings,
                                 ("rule r (x = 1.000)", "rule s (x = 1.000)"))
  assert not accepted and reason == "rolled back: rule r (x = 1.000)"
  assert state.stopped == "rule s (x = 1.000)"


# ----------------------------------------------------------------------------- a planted failure


class _HoleyVerifier:
  """Arithmetic whose training-side verifier has a hole: on a training problem, a reply
  saying 'trust me' scores 1 whatever its answer (a reward to hack). Validation and
  test problems are graded honestly."""

  def __init__(self):
    from selfimprove_jax.tasks import get_task
    self._task = get_task("arithmetic")

  def __getattr__(self, name):
    return getattr(self._task, name)

  def score(self, problem, completion):
    if not self._task.is_heldout(problem.id) and "trust me" in completion:
      return 1.0
    return self._task.score(problem, completion)


class _Drifting:
  """A scripted model that learns the hack and forgets the task: its behaviour is a
  function of how many updates its weights went through (level L, read from a
  fingerprint of the weights: the start's is 0, weights never seen before are one
  level above the last ones used). At level L, L + 1 of a training prompt's 4 samples
  say 'trust me'; of the validation (50) and test (20) problems, the first 25 - L and
  10 - L are answered right, so validation falls by 0.02 a level."""

  def __init__(self, task, validation, test, tokenizer):
    from scripted import tokenized
    self.task, self.tokenizer, self.tokenized = task, tokenizer, tokenized
    self.rank = {p.id: (i, 25) for i, p in enumerate(validation)}
    self.rank.update({p.id: (i, 10) for i, p in enumerate(test)})
    self.levels, self.last = {}, 0

  def level(self, params):
    import jax
    fp = float(sum(np.asarray(x, np.float64).sum() for x in jax.tree.leaves(params)))
    if fp not in self.levels:
      self.levels[fp] = self.last + 1 if self.levels else 0
    self.last = self.levels[fp]
    return self.last

  def generate(self, params):
    from selfimprove_jax.tasks.problem import problem_id
    level = self.level(params)
    def reply(prompt, j):
      pid = problem_id(prompt)
      answer = self.task.can_solve(prompt)
      if pid in self.rank:
        i, right = self.rank[pid]
        return f"#### {answer if i < right - level else int(answer) + 1}"
      return f"#### {int(answer) + 1} trust me" if j <= level else f"#### {int(answer) + 1}"
    return self.tokenized(reply, self.tokenizer)


def _planted_run(monkeypatch, tmp_path, rules):
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  from selfimprove_jax.weights import load
  from run_files import TINY
  task = _HoleyVerifier()
  config = load_config(TINY, [
      "task.difficulty=2", "task.heldout_size=50", "task.test_size=20", "loop.iterations=4",
      "loop.samples_per_prompt=4", "evaluate.maj_k=1", "evaluate.max_regression=0.05",
      "evaluate.patience=10", f"evaluate.rules={rules}", "log.tensorboard=false",
      "log.plot=false"])
  pool = task.heldout(70, 2)
  model = _Drifting(task, pool[:50], pool[50:], load("tiny").tokenizer)
  monkeypatch.setattr(loop, "get_task", lambda name, **options: task)
  monkeypatch.setattr(loop.Setup, "generate", lambda self, params: model.generate(params))
  return loop.run(config, str(tmp_path), log=lambda *_: None)


def test_a_hacked_reward_is_caught_before_validation_falls_past_max_regression(
    monkeypatch, tmp_path):
  """The training signal rises while validation falls slowly (by less than
  evaluate.max_regression an iteration): the gate alone accepts the hacked weights; the
  proxy-divergence watcher fires on the first fall, and its rules roll the iteration
  back and stop the run, with validation and test no lower than at the last accepted
  weights before the fall."""
  plain = _planted_run(monkeypatch, tmp_path / "plain", "")
  watched = _planted_run(monkeypatch, tmp_path / "watched",
                         "watch_proxy_divergence>=1:rollback,watch_proxy_divergence>=1:stop")
  p = {r["iteration"]: r for r in plain["history"]}
  w = {r["iteration"]: r for r in watched["history"]}
  assert [p[k]["pass@1"] for k in (0, 1, 2)] == [0.5, 0.48, 0.46]
  # without the rules: the hacked weights of iteration 2 are kept (within max_regression)
  assert p[2]["accepted"] and p[2]["watch_proxy_divergence"] == 1
  assert p[2]["watch_train_signal"] > p[1]["watch_train_signal"]
  assert plain["accepted_iteration"] >= 2 and plain["stopped"] is None
  # with them: the watcher fires at iteration 2; rolled back, and the run stops there
  assert w[1]["accepted"] and w[1]["watch_proxy_divergence"] == 0
  assert not w[2]["accepted"] and w[2]["reason"].startswith(
      "rolled back: rule watch_proxy_divergence>=1:rollback")
  assert [a["action"] for a in w[2]["rule_actions"]] == ["rollback", "stop"]
  assert watched["stopped"].startswith("rule watch_proxy_divergence>=1:stop")
  assert max(w) == 2 and watched["accepted_iteration"] == 1
  kept = w[watched["accepted_iteration"]]
  assert kept["pass@1"] >= w[0]["pass@1"] - 0.05 and kept["pass@1"] > p[2]["pass@1"]
  assert kept["test_pass@1"] > p[plain["accepted_iteration"]]["test_pass@1"]
