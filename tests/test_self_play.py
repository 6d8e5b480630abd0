"""Self-play, SPIN and label-free RL (selfimprove_jax/paradigms): the learnability
reward, proposal screening, role-grouped advantages, SPIN pairs, majority-vote rewards
-- driven by scripted generations -- and the paradigms in the loop on the tiny model:
SPIN's opponent is the previous iteration's weights, and a self-play run killed in its
second iteration resumes to the result of an uninterrupted one."""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from selfimprove_jax import loop, settings
from selfimprove_jax.acquire import rounds as acquire
from selfimprove_jax.config import load_config
from selfimprove_jax.errors import UserError
from selfimprove_jax.optimize.losses import advantages
from selfimprove_jax.paradigms import programs, self_play, spin, ttrl
from selfimprove_jax.paradigms import registry as algorithms
from selfimprove_jax.records import Sample, agreement_rewards, pseudo_label, read_records
from selfimprove_jax.runtime.checkpoint import Checkpointer
from selfimprove_jax.tasks import get_task, make_problem, problem_id

from run_files import ROOT, TINY, assert_same_state, final_state, metrics, run_env
from scripted import S, Scripted

TASK = get_task("arithmetic", operators="+")


def _config(*overrides):
  """The tiny config with overrides, checked as a run checks it (the paradigm's own
  checks included)."""
  config = load_config(TINY, ["log.tensorboard=false", "log.plot=false", *overrides])
  algorithms.algorithm(config)
  return config


def _round(generate, config, task=TASK, heldout=()):
  return acquire.Round(generate, None, task, list(heldout), settings.acquire(config), 0, 1,
                       algorithms.ALGORITHMS[config.loop.algorithm].settings(config))


# ----------------------------------------------------------------------------- self-play


def test_learnability_reward_peaks_at_half():
  assert self_play.learnability(0.0) == 0.0
  assert self_play.learnability(0.5) == 1.0
  assert self_play.learnability(1.0) == 0.0
  assert self_play.learnability(0.25) == pytest.approx(0.75)


@pytest.mark.parametrize("n", [0, 1])
def test_self_play_with_one_solver_sample_is_refused_in_one_line(n):
  with pytest.raises(UserError) as e:
    _config("loop.algorithm=self_play", f"loop.samples_per_prompt={n}")
  msg = str(e.value)
  assert "\n" not in msg and "loop.samples_per_prompt" in msg


def test_self_play_refuses_filters_that_drop_the_proposer_and_tasks_without_a_solver():
  with pytest.raises(UserError, match="select.filters"):
    _config("loop.algorithm=self_play", "select.filters=correct")
  with pytest.raises(UserError, match="task.name"):
    _config("loop.algorithm=self_play", "task.name=jsonl:x.jsonl")


class Proposing(Scripted):
  """Proposer prompts get the next scripted proposal; solver prompts get answers that
  are right for the first `right[prompt]` samples of each group."""

  def __init__(self, proposals, right):
    self.proposals, self.right = list(proposals), right
    super().__init__(self._reply)

  def _reply(self, prompt, j, greedy):
    if prompt.startswith("Here are some example problems"):
      return self.proposals.pop(0)
    p = TASK.parse_problem(prompt)
    good = j < self.right.get(prompt, 0)
    return f"The answer is {p.reference if good else int(p.reference) + 1}"


def test_proposals_are_screened_and_rewarded_by_learnability():
  heldout = TASK.heldout(5, 2)
  seeds = TASK.train_problems(0, 8, 2)
  leak = heldout[0].prompt.replace("Answer with just the number.", "Please answer.")
  proposals = [
      "Problem: What is 15 + 30?",          # valid, solved by 2 of 4: p = 0.5
      "What is 15 + 30?",                   # duplicate of the first
      "What is 15+30?",                     # same expression in other words: duplicate
      seeds[1].prompt,                      # a shown example: copy
      leak,                                 # a held-out problem reworded: leak
      "Tell me a joke.",                    # does not parse: invalid
      "What is 123 + 456?",                 # level 3 > max_level 2: too hard
      "1. What is 40 + 41?\n2. What is 5 + 6?",  # valid (its first line), always solved
  ]
  # the solver is asked in the task's own wording
  right = {"What is 15 + 30? Answer with just the number.": 2,
           "What is 40 + 41? Answer with just the number.": 4}
  gen = Proposing(proposals, right)
  config = _config("loop.algorithm=self_play", "loop.samples_per_prompt=4",
                   "self_play.max_level=2", "self_instruct.examples=2")
  samples = self_play.self_play_round(_round(gen, config, heldout=heldout), seeds)
  proposers = [s for s in samples if s.role == "proposer"]
  assert [s.proposal_status for s in proposers] == [
      "valid", "duplicate", "duplicate", "copy", "heldout_leak", "invalid", "too_hard", "valid"]
  assert [s.reward for s in proposers] == [1.0] + [-0.5] * 6 + [0.0]
  assert [s.solver_pass_rate for s in proposers] == [0.5] + [None] * 6 + [1.0]
  solvers = [s for s in samples if s.role == "solver"]
  assert len(solvers) == 8 and {s.problem_id for s in solvers} == set(map(problem_id, right))
  assert [s.reward for s in solvers[:4]] == [1.0, 1.0, 0.0, 0.0]
  assert all(s.problem_id == proposers[0].proposal_id for s in solvers[:4])
  # every proposer prompt stays off the held-out side, as training prompts do
  assert not any(TASK.is_heldout(s.problem_id) for s in proposers)
  row = self_play.self_play_metrics(samples, config.select.reward_threshold)
  assert row["self_play_valid_share"] == 0.25 and row["self_play_mean_p"] == 0.75
  assert row["self_play_p_hist"] == {"0": 0, "(0,0.5)": 0, "[0.5,1)": 1, "1": 1}
  assert row["self_play_proposer_reward"] == pytest.approx(-2.0 / 8)
  assert row["self_play_solver_reward"] == 0.75
  # the records keep every field through JSON
  assert [Sample.from_json(json.loads(json.dumps(s.to_json()))) for s in samples] == samples
  # a later round or iteration: a problem that was already a valid proposal is a repeat
  # (the invalid penalty, no solver samples); one that was only rejected may come back
  again = ["What is 15+30?", "What is 40 + 41?", "What is 123 + 456?"] + ["Hi."] * 5
  later = dataclasses.replace(_round(Proposing(again, right), config, heldout=heldout),
                              earlier=self_play.remember(None, samples, TASK))
  proposers = [s for s in self_play.self_play_round(later, seeds) if s.role == "proposer"]
  assert [s.proposal_status for s in proposers[:3]] == ["repeat", "repeat", "too_hard"]
  assert proposers[0].reward == -0.5 and proposers[0].solver_pass_rate is None


CODE = get_task("code:list_ops")


def test_program_proposals_run_in_the_sandbox_for_their_true_output():
  """Code family: a proposal is a program and a call; valid when two sandboxed runs
  return the same value, which the solver must predict."""
  double = "def solve(xs):\n  return [x * 2 for x in xs]\n"
  proposals = [
      f"Here you go:\n```python\n{double}```\nCall: solve([1, 2, 5])",      # valid
      f"```python\n{double}\n\n```\nCall: solve([1, 2, 5])",              # duplicate
      "```python\ndef solve(xs):\n  return xs[10]\n```\nCall: solve([1])",  # raises
      "```python\nimport random\ndef solve(xs):\n  return random.random()\n```\n"
      "Call: solve([])",                                                     # differs
      "```python\ndef solve(xs):\n  while True:\n    pass\n```\nCall: solve([])",  # hangs
      "I like code.",                                                        # no program
  ]
  seeds = CODE.train_problems(0, 6, 1)
  def reply(prompt, j, greedy):
    if prompt.startswith("Here are some example problems"):
      assert "Call: solve(" in prompt and "def solve" in prompt   # examples: programs
      return proposals.pop(0)
    return "#### [2, 4, 10]" if j == 0 else "#### (2, 4, 7)"
  config = _config("loop.algorithm=self_play", "task.name=code:list_ops",
                   "loop.samples_per_prompt=4")
  samples = self_play.self_play_round(_round(Scripted(reply), config, task=CODE), seeds)
  proposers = [s for s in samples if s.role == "proposer"]
  assert [s.proposal_status for s in proposers] == [
      "valid", "duplicate", "error", "nondeterministic", "timeout", "invalid"]
  assert proposers[0].solver_pass_rate == 0.25
  assert proposers[0].reward == pytest.approx(self_play.learnability(0.25))
  solvers = [s for s in samples if s.role == "solver"]
  assert [s.reward for s in solvers] == [1.0, 0.0, 0.0, 0.0]
  assert solvers[0].reference == "[2, 4, 10]"                 # the sandbox's answer
  # the same program and call in a later round: a repeat, not run again for the solver
  proposals = [f"```python\n{double}```\nCall: solve([1, 2, 5])"] * 6
  later = dataclasses.replace(_round(Scripted(reply), config, task=CODE),
                              earlier=self_play.remember(None, samples, CODE))
  again = [s for s in self_play.self_play_round(later, seeds) if s.role == "proposer"]
  assert [s.proposal_status for s in again] == ["repeat"] + ["duplicate"] * 5
  judge = programs.OutputPrediction()
  problem = make_problem("p", "[2, 4, 6]")
  assert judge.score(problem, "It returns\n#### (2, 4, 6)") == 1.0   # by value
  assert judge.score(problem, "#### [2, 4, 6, 8]") == 0.0
  assert judge.score(problem, "#### __import__('os').getcwd()") == 0.0   # never run


def _sample(role, pid, reward):
  return Sample(problem_id=pid, role=role, reward=reward, prompt_tokens=[1, 2],
                completion_tokens=[3, 4], logprobs=[-1.0, -1.0], num_tokens=2)


def test_role_grouped_advantages_match_a_hand_computation():
  """GRPO advantages (r - mean) / (std + eps), std with Bessel's correction, within
  the proposer group (all proposals) and each proposal's solver group."""
  samples = ([_sample("proposer", f"p{i}", r) for i, r in enumerate([1.0, 0.0, -0.5])]
             + [_sample("solver", "a", r) for r in [1.0, 0.0, 1.0, 0.0]]
             + [_sample("solver", "b", r) for r in [1.0, 1.0, 1.0, 0.0]])
  config = _config("loop.algorithm=self_play", "loop.samples_per_prompt=4",
                   "loop.prompts_per_iteration=3")
  (batch,) = algorithms.ALGORITHMS["self_play"].batches(samples, settings.batches(config), 0)
  assert batch["tokens"].shape[0] == 3 * (4 + 1)
  valid = batch["loss_mask"].sum(1) > 0
  adv = np.asarray(advantages(batch["rewards"], batch["group_ids"], "grpo", valid=valid))
  # proposer: mean 1/6, std sqrt(((5/6)^2 + (1/6)^2 + (2/3)^2) / 2) = 0.763763
  # solver a: mean 1/2, std sqrt(4 * 0.25 / 3) = 0.577350; b: mean 3/4, std 0.5
  hand = [0.833333 / 0.763763, -0.166667 / 0.763763, -0.666667 / 0.763763,
          0.866025, -0.866025, 0.866025, -0.866025, 0.5, 0.5, 0.5, -1.5]
  np.testing.assert_allclose(adv[:11], hand, atol=1e-3)
  np.testing.assert_array_equal(adv[11:], 0.0)   # padding rows: groups of their own


# ----------------------------------------------------------------------------- SPIN


class WithTarget(Scripted):
  """A scripted policy that can also write a given answer as a reply (as ModelPolicy)."""

  def target(self, prompt, text):
    return Sample(prompt=prompt, prompt_tokens=[1], completion=text, completion_tokens=[7],
                  num_tokens=1)


def test_spin_pairs_targets_with_the_opponents_wrong_generations():
  problems = TASK.train_problems(0, 3, 2)
  a, b, c = problems
  replies = {a.prompt: ["1", "2", "1"],                       # all wrong: reference target
             b.prompt: ["0", b.reference, "5"],               # one right: it is the target
             c.prompt: [c.reference] * 3}                     # all right: nothing to reject
  opponent = WithTarget(lambda prompt, j, g: S(f"It is {replies[prompt][j]}", -1.0, 2))
  config = _config("loop.algorithm=spin", "loop.samples_per_prompt=3",
                   "select.filters=max_length")
  samples = spin.spin_round(_round(opponent, config), problems)
  assert len(opponent.calls) == 1                  # the opponent generated once
  pairs = spin.spin_pairs(samples, 1.0)
  by_problem = {}
  for chosen, rejected in pairs:
    by_problem.setdefault(chosen.problem_id, []).append((chosen, rejected))
  # a: the reference written as a reply (not sampled: no log-probs) vs "1" and "2"
  assert [r.completion for _, r in by_problem[a.id]] == ["It is 1", "It is 2"]
  chosen = by_problem[a.id][0][0]
  assert chosen.completion == a.reference and chosen.logprobs == [] and chosen.reward == 1.0
  # b: the verified generation vs the two wrong ones; c gives no pair
  assert [(x.completion, r.completion) for x, r in by_problem[b.id]] == [
      (f"It is {b.reference}", "It is 0"), (f"It is {b.reference}", "It is 5")]
  assert c.id not in by_problem
  # every rejected reply is one the opponent generated
  generated = {f"It is {x}" for texts in replies.values() for x in texts}
  assert all(r.completion in generated and r.role == "opponent" for _, r in pairs)
  (batch,) = algorithms.ALGORITHMS["spin"].batches(samples, settings.batches(config), 0)
  assert batch["tokens"].shape[0] == 2 * config.train.batch_size
  assert spin.spin_metrics(samples, config.select.reward_threshold) == {
      "spin_pairs": 4, "spin_targets_verified": 2, "spin_targets_reference": 1,
      "spin_opponent_pass_rate": 4 / 9}


def test_spin_opponent_is_the_previous_iterations_weights(monkeypatch, tmp_path):
  """In the loop, iteration K's rejected replies come from the weights iteration K-1
  left (checkpoint K-1; iteration 1: the base model)."""
  used = []
  entry = algorithms.ALGORITHMS["spin"]
  def spy(r, problems):
    used.append(jax.tree.map(np.asarray, r.generate.params))
    return entry.acquire(r, problems)
  monkeypatch.setitem(algorithms.ALGORITHMS, "spin", dataclasses.replace(entry, acquire=spy))
  config = _config("loop.algorithm=spin", "loop.prompts_per_iteration=4")
  state = loop.run(config, str(tmp_path), log=lambda *_: None)
  assert [h["accepted"] for h in state["history"]] == [True, True, True]
  ckpt = Checkpointer(str(tmp_path))
  saved = {k: jax.tree.map(np.asarray, ckpt.restore_arrays(k)["params"]) for k in (0, 1, 2)}
  ckpt.close()
  for k, params in enumerate(used):    # iteration k + 1 played against iteration k
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(saved[k])):
      np.testing.assert_array_equal(x, y)
  assert not all(np.array_equal(x, y) for x, y in
                 zip(jax.tree.leaves(saved[0]), jax.tree.leaves(saved[1])))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert rows[1]["spin_pairs"] > 0 and rows[1]["spin_targets_reference"] > 0


# ----------------------------------------------------------------------------- label-free


def test_pseudo_label_needs_a_clear_majority():
  assert pseudo_label(["5", "5", "5", "7"], 0.5) == ("5", 0.75)
  assert pseudo_label(["5", "5", "7", "7"], 0.5) == (None, 0.5)      # tie: no label
  assert pseudo_label(["5", "5", "7", "8", "9"], 0.5) == (None, 0.4)  # below the share
  assert pseudo_label(["5", "5", None, None], 0.5) == ("5", 0.5)      # None votes count
  assert pseudo_label([None, None], 0.0) == (None, 0.0)
  assert agreement_rewards(["5", "7", None, "5"], "5") == [1.0, 0.0, 0.0, 1.0]
  assert agreement_rewards(["5", "7"], None) == [0.0, 0.0]


def _hidden_jsonl(path, n=30):
  """Arithmetic prompts whose answers are hidden (and three rows without any)."""
  rows = [{"prompt": f"What is {i} + {i + 1}?", "hidden_answer": str(2 * i + 1)}
          for i in range(n)]
  rows += [{"prompt": f"Say a number bigger than {i}."} for i in range(3)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_hidden_answers_never_reach_training_problems(tmp_path):
  task = get_task(f"jsonl:{_hidden_jsonl(tmp_path / 'h.jsonl')}", answer_kind="number")
  held = task.heldout()
  train = task.train_problems(0, 30)
  assert held and all(p.reference for p in held)          # evaluation has its answers
  assert all(p.reference == "" for p in train)            # training has none
  assert {p.prompt for p in train if "hidden_reference" not in p.metadata} == {
      f"Say a number bigger than {i}." for i in range(3)}  # unlabeled rows only train
  p = next(p for p in train if "hidden_reference" in p.metadata)
  assert task.score(p, f"#### {p.metadata['hidden_reference']}") == 0.0
  assert task.score(held[0], f"#### {held[0].reference}") == 1.0


def test_label_free_rewards_read_no_reference(tmp_path, monkeypatch):
  task = get_task(f"jsonl:{_hidden_jsonl(tmp_path / 'h.jsonl')}", answer_kind="number")
  problems = [p for p in task.train_problems(0, 30) if "hidden_reference" in p.metadata][:3]
  truth = [p.metadata["hidden_reference"] for p in problems]
  votes = {problems[0].prompt: [truth[0], truth[0], truth[0], "1"],   # right majority
           problems[1].prompt: ["3", "3", "3", truth[1]],             # wrong majority
           problems[2].prompt: ["3", "3", truth[2], truth[2]]}        # tie: no label
  gen = Scripted(lambda prompt, j, g: f"I get {votes[prompt][j]}.0")
  config = _config("loop.algorithm=ttrl", "loop.samples_per_prompt=4",
                   "acquire.min_vote_share=0.5")
  scored = []
  real_score = type(task).score
  monkeypatch.setattr(type(task), "score",
                      lambda self, p, c: scored.append(p.reference) or real_score(self, p, c))
  samples = ttrl.ttrl_round(_round(gen, config, task=task), problems)
  assert len(scored) == 12 and "" not in scored   # hidden checks only, for the logs
  assert [s.reward for s in samples] == [1, 1, 1, 0] + [1, 1, 1, 0] + [0, 0, 0, 0]
  assert [s.pseudo_label for s in samples[::4]] == [truth[0], "3", None]
  assert [s.verifier_reward for s in samples[:4]] == [1.0, 1.0, 1.0, 0.0]
  row = ttrl.ttrl_metrics(samples, config.select.reward_threshold)
  assert row["ttrl_labeled_share"] == pytest.approx(2 / 3)
  assert row["ttrl_label_precision"] == 0.5   # one of the two labels was right
  assert row["ttrl_hidden_pass_rate"] == 0.5


# ----------------------------------------------------------------------------- the tiny run

# The random tiny model never writes a problem, so in this run its proposer replies are
# mapped to one-digit additions (a function of the reply's text): the loop then sees
# valid, duplicate and held-out proposals, solver groups and both rewards.
_RUN = """
import sys
from selfimprove_jax import cli
from selfimprove_jax.acquire import self_instruct
def propose(text, max_chars=1000):
  h = sum(map(ord, text or ""))
  return f"What is {h % 10} + {h // 10 % 10}?"
self_instruct.clean_proposal = propose
sys.exit(cli.main(sys.argv[1:]))
"""
SELF_PLAY = ["--config.loop.algorithm=self_play", "--config.loop.rl_steps=2",
             "--config.loop.prompts_per_iteration=4", "--config.loop.samples_per_prompt=2",
             "--config.select.filters=", "--config.self_instruct.max_new_tokens=8",
             "--config.log.tensorboard=false", "--config.log.plot=false"]


def _run_self_play(workdir, cache_dir, fault=None):
  cmd = [sys.executable, "-c", _RUN, "run", "--config", TINY, "--workdir", str(workdir),
         *SELF_PLAY]
  return subprocess.run(cmd, env=run_env(cache_dir, fault), capture_output=True, text=True,
                        timeout=600, cwd=ROOT)


def test_tiny_self_play_run_resumes_after_sigkill_to_the_same_result(cache_dir, tmp_path):
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  out = _run_self_play(reference, cache_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = metrics(reference)
  assert [r["iteration"] for r in rows] == [0, 1, 2]
  for r in rows[1:]:
    assert r["optimizer_steps"] == 2 and r["self_play_proposals"] == 8
    assert r["self_play_valid_share"] > 0 and r["self_play_mean_p"] is not None
  records = read_records(str(reference / "records" / "iter_0002" / "acquire_1.parquet"))
  assert {s.role for s in records} == {"proposer", "solver"}
  # no problem is a valid proposal twice in a run, across rounds and iterations
  valid = [s.proposal_id for path in sorted(reference.glob("records/iter_*/acquire_*.parquet"))
           for s in read_records(str(path)) if s.proposal_status == "valid"]
  assert valid and len(valid) == len(set(valid))
  assert all(s.proposal_status for s in records if s.role == "proposer")
  killed = _run_self_play(resumed, cache_dir, fault="optimize@2")
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert len(metrics(resumed)) == 2                        # killed in iteration 2
  out = _run_self_play(resumed, cache_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert metrics(resumed) == rows
  assert_same_state(final_state(resumed), final_state(reference))
