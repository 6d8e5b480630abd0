"""Refinement strategies (refine/strategies.py) and their training targets
(refine/targets.py): the decisions, driven by scripted generations (no model), plus the
strategies through the tiny model's sampler."""

import pytest

from selfimprove_jax import policy
from selfimprove_jax.errors import UserError
from selfimprove_jax.records import Sample
from selfimprove_jax.refine import strategies as refine
from selfimprove_jax.refine import targets as refine_targets
from selfimprove_jax.refine.strategies import Context, StrategyConfig
from selfimprove_jax.sampling import SamplingParams
from selfimprove_jax.select import filters as select
from selfimprove_jax.tasks import get_task, make_problem

from scripted import S, Scripted


TASK = get_task("arithmetic", operators="+")


def _problems(count=3):
  return TASK.heldout(count, 2)


# ----------------------------------------------------------------------------- voting


def test_vote_majority_and_tie_breaks():
  s = lambda lp: S("x", lp, 1)
  # clear majority, share over all samples (None counts as a vote for nothing)
  assert refine.vote(["5", "7", "5", None], [s(-1), s(-1), s(-2), s(-1)])[:2] == ("5", 0.5)
  # 2-2 tie: higher summed log-prob wins, whatever comes first
  ans, share, j = refine.vote(["5", "7", "7", "5"], [s(-3), s(-1), s(-1), s(-3)])
  assert (ans, share) == ("7", 0.5) and j in (1, 2)
  # tie in votes and log-prob: the answer seen first
  assert refine.vote(["9", "4"], [s(-1), s(-1)])[0] == "9"
  # the representative sample is the most likely one with the majority answer
  assert refine.vote(["5", "5", "6"], [s(-4), s(-2), s(-1)])[2] == 1
  assert refine.vote([None, None], [s(0), s(0)]) == (None, 0.0, None)


def test_self_consistency_reports_majority_and_share():
  problems = _problems(2)
  wrong = lambda p: str(int(p.reference) + 1)
  answers = {p.prompt: [p.reference, wrong(p), p.reference, "no idea"] for p in problems}
  gen = Scripted(lambda prompt, j, g: f"The answer is {answers[prompt][j]}")
  ctx = Context(gen, TASK, problems)
  out = refine.run_strategy("self_consistency", ctx, [p.prompt for p in problems],
                            StrategyConfig(n=4), seed=0)
  for p, r in zip(problems, out):
    assert r.answer == p.reference and r.info["vote_share"] == 0.5
    assert TASK.score(p, r.text) == 1.0
  assert len(gen.calls) == 1 and gen.calls[0][1] == 4   # one batched call


# ----------------------------------------------------------------------------- best of n


def test_pick_best_ties_go_to_likelihood_then_first():
  samples = [S("a", -8, 4), S("b", -2, 4), S("c", -2, 4)]
  assert refine.pick_best([1.0, 1.0, 0.0], samples) == 1
  assert refine.pick_best([0.0, 1.0, 1.0], samples) == 1
  assert refine.pick_best([0.0, 0.0, 0.0], [S("x", -1, 1)] * 3) == 0


def test_best_of_n_verifier_never_below_greedy():
  """Candidate 0 is greedy; the verifier picks a correct candidate whenever one exists."""
  problems = _problems(3)
  ref = {p.prompt: p.reference for p in problems}
  prompts = [p.prompt for p in problems]
  # prompt 0: greedy right, samples wrong; prompt 1: greedy wrong, sample 2 right;
  # prompt 2: all wrong.
  def reply(prompt, j, greedy):
    k = prompts.index(prompt)
    right = (k == 0 and greedy) or (k == 1 and not greedy and j == 2)
    return S(f"#### {ref[prompt] if right else '-1'}", -5.0 if right else -1.0, 4)
  ctx = Context(Scripted(reply), TASK, problems)
  out = refine.run_strategy("best_of_n", ctx, prompts, StrategyConfig(n=4), seed=0)
  assert [TASK.score(p, r.text) for p, r in zip(problems, out)] == [1.0, 1.0, 0.0]
  assert out[0].info["scorer"] == "verifier" and out[0].info["chosen_index"] == 0
  assert out[1].info["chosen_index"] == 3          # greedy + sample index 2
  assert len(out[2].candidates) == 4
  # wrong everywhere: ties broken by mean log-prob, so a likely answer is returned
  assert out[2].chosen.mean_logprob == max(c.mean_logprob for c in out[2].candidates)


def test_best_of_n_scorer_fallbacks():
  gen = Scripted(lambda p, j, g: S(f"answer {j}", -float(j if not g else 9), 1))
  # no task: logprob unless a judge is given
  ctx = Context(gen)
  out = refine.run_strategy("best_of_n", ctx, ["q"], StrategyConfig(n=3), seed=0)
  assert out[0].info["scorer"] == "logprob" and out[0].text == "answer 0"
  # the judge prefers the response mentioning "1"
  judge_gen = Scripted(lambda p, j, g: "Score: 5" if "answer 1" in p else "Score: 2")
  out = refine.run_strategy("best_of_n", Context(gen, judge=judge_gen), ["q"],
                            StrategyConfig(n=3), seed=0)
  assert out[0].info["scorer"] == "judge" and out[0].text == "answer 1"
  assert out[0].info["scores"] == [0.4, 0.4, 1.0]
  with pytest.raises(UserError, match="needs a task"):
    refine.run_strategy("best_of_n", ctx, ["q"], StrategyConfig(n=2, scorer="verifier"), 0)


# ----------------------------------------------------------------------------- self-refine


def test_self_refine_stops_when_critique_approves_and_keeps_rounds():
  problems = _problems(2)
  ref = {p.prompt: p.reference for p in problems}
  prompts = [p.prompt for p in problems]
  def reply(prompt, j, greedy):
    if prompt.startswith("Here is a question"):      # a critique
      return "NO ISSUES." if "#### " + ref[prompts[0]] in prompt else "The sum is wrong."
    if "Feedback on it" in prompt:                    # a revision
      return f"#### {ref[prompts[1]]}" if prompts[1] in prompt else "#### 0"
    return f"#### {ref[prompt] if prompt == prompts[0] else '0'}"   # first answers
  gen = Scripted(reply)
  out = refine.run_strategy("self_refine", Context(gen, TASK, problems), prompts,
                            StrategyConfig(rounds=3), seed=0)
  # prompt 0 was right at once: one round, approved, not revised
  assert out[0].info["stopped"] == "approved" and len(out[0].info["rounds"]) == 1
  assert not out[0].info["revised"] and "revision" not in out[0].info["rounds"][0]
  # prompt 1: critique, revision (now right), and the round after that approves? No: the
  # scripted critic approves only prompt 0's answer, so it runs all 3 rounds
  r1 = out[1].info["rounds"]
  assert out[1].info["stopped"] == "max_rounds" and len(r1) == 3
  assert all("revision" in r for r in r1) and out[1].info["revised"]
  assert TASK.score(problems[1], out[1].text) == 1.0
  # batched: first answers, then per round one critique call and one revision call
  assert [len(c[0]) for c in gen.calls] == [2, 2, 1, 1, 1, 1, 1]


def test_critique_approval_parsing():
  assert refine.critique_approves("NO ISSUES")
  assert refine.critique_approves("There are no errors, the answer is right.")
  assert not refine.critique_approves("The answer is wrong: 3 + 4 is 7.")
  assert not refine.critique_approves(None)


# ----------------------------------------------------------------------------- training targets


def _record(pid, prompt, text, reward, lp=-1.0, idx=0):
  return Sample(problem_id=pid, prompt=prompt, reference="", prompt_tokens=[1, 2],
                completion=text, completion_tokens=[5, 6, 0], logprobs=[lp, lp, lp],
                reward=reward, finish_reason="eos", num_tokens=3, sample_index=idx,
                iteration=1)


def test_refine_records_targets():
  problems = _problems(2)
  p0, p1 = problems
  recs = [_record(p0.id, p0.prompt, f"#### {p0.reference}", 1.0, idx=0),
          _record(p0.id, p0.prompt, "#### 1", 0.0, idx=1),
          _record(p0.id, p0.prompt, f"it is {p0.reference}", 1.0, idx=2),
          _record(p1.id, p1.prompt, "#### 3", 0.0, idx=0),
          _record(p1.id, p1.prompt, "#### 4", 0.0, idx=1)]
  ctx = Context(Scripted(lambda p, j, g: "x"), TASK, problems)
  sc = refine_targets.refine_records("self_consistency", recs, problems, ctx,
                                     StrategyConfig(), 0, min_vote_share=0.6)
  assert [r.refined for r in sc] == [True, False, True, False, False]
  bon = refine_targets.refine_records("best_of_n", recs, problems, ctx, StrategyConfig(), 0)
  # p1: all wrong, equal likelihood -> the first sample
  assert [r.refined for r in bon] == [True, False, False, True, False]
  cfg = type("C", (), {})
  assert [r.problem_id for r in select.refined(bon, cfg)] == [p0.id, p1.id]
  # self_refine: p0's first answer approved (kept); p1's revised to the right answer (added)
  def reply(prompt, j, greedy):
    if prompt.startswith("Here is a question"):
      return "NO ISSUES" if f"#### {p0.reference}" in prompt else "wrong"
    return S(f"#### {p1.reference}", -0.5, 2, [7, 0], [-0.25, -0.25])
  sr = refine_targets.refine_records("self_refine", recs, problems,
                                     Context(Scripted(reply), TASK, problems),
                                     StrategyConfig(rounds=1), 0)
  assert len(sr) == 6 and sr[0].refined and not any(r.refined for r in sr[1:5])
  added = sr[5]
  assert added.refined and added.reward == 1.0 and added.prompt == p1.prompt
  assert added.completion_tokens == [7, 0] and added.prompt_tokens == [1, 2]


def test_one_labelling_rule_for_self_labelled_targets():
  """label_votes is the rule label-free SFT targets, TTRL rewards and self-instruct
  references share: numbers vote by value, a tie or a thin majority gives no label,
  and neither the reference nor a hidden reference is read (other metadata is)."""
  p = make_problem("What is 2 + 2? Answer with just the number.", "4", 1,
                   {"hidden_reference": "4", "entry_point": "f"})
  seen = []
  task = type("T", (), {"extract_answer": lambda self, t, pr=None: (
      seen.append((pr.reference, dict(pr.metadata))), t.split()[-1])[1]})()
  votes, label, share = refine.label_votes(task, p, [S("it is 4.0"), S("so 4"), S("5")], 0.5)
  assert votes == ["4", "4", "5"] and label == "4" and share == pytest.approx(2 / 3)
  assert seen == [("", {"entry_point": "f"})] * 3
  # a 2-2 tie: no label, even though inference (vote) would break it by log-prob
  tie = [S("4", -1.0), S("4", -1.0), S("5", -0.1), S("5", -0.1)]
  assert refine.label_votes(task, p, tie, 0.0)[1] is None
  assert refine.vote(["4", "4", "5", "5"], tie)[0] == "5"
  assert refine.label_votes(task, p, [S("4"), S("5"), S("6")], 0.5)[1] is None   # thin
  # a reply cut off at its token budget casts no vote: here the cut replies would
  # have elected the operand they restate
  cut = [S("first add 2"), S("we take 2"), S("so 4"), S("4")]
  for c in cut[:2]:
    c.finish_reason = "length"
  votes, label, share = refine.label_votes(task, p, cut, 0.5)
  assert votes == [None, None, "4", "4"] and label == "4" and share == 0.5
  # label-free SFT: a tied prompt contributes no target
  p0, p1 = _problems(2)
  recs = [_record(p0.id, p0.prompt, "#### 7", 0.0, idx=0),
          _record(p0.id, p0.prompt, "#### 8", 0.0, idx=1),
          _record(p1.id, p1.prompt, "#### 3", 0.0, idx=0),
          _record(p1.id, p1.prompt, "#### 3.0", 0.0, idx=1)]
  ctx = Context(Scripted(lambda pr, j, g: "x"), TASK, [p0, p1])
  sc = refine_targets.refine_records("self_consistency", recs, [p0, p1], ctx, StrategyConfig(), 0)
  assert [r.refined for r in sc] == [False, False, True, True]
  assert sc[0].majority_answer is None and sc[2].majority_answer == "3"


def test_unknown_strategy_is_a_user_error():
  with pytest.raises(UserError, match="unknown refinement strategy 'beam'"):
    refine.check_strategies(("best_of_n", "beam"))


# ----------------------------------------------------------------------------- tiny model


def test_strategies_through_the_tiny_model_sampler():
  """The real GenerateFn on the tiny preset: shapes, determinism, best_of_n >= greedy."""
  from selfimprove_jax.sampling import make_sampler
  from selfimprove_jax.weights import load
  model = load("tiny")
  sampler = make_sampler(model, max_batch=32)
  gen = policy.model_generate(sampler, model.params, model.tokenizer)
  problems = _problems(3)
  ctx = Context(gen, TASK, problems, judge=gen)
  cfg = StrategyConfig(n=3, rounds=1, sample=SamplingParams(max_new_tokens=6),
                       critique_tokens=6, judge_tokens=6)
  m1 = refine.heldout_metrics(ctx, ("best_of_n", "self_consistency", "self_refine"), cfg,
                              seed=3)
  m2 = refine.heldout_metrics(ctx, ("best_of_n", "self_consistency", "self_refine"), cfg,
                              seed=3)
  assert m1 == m2
  assert set(m1) == {"best_of_n@3", "self_consistency@3", "self_consistency@3_vote_share",
                     "self_refine@1", "self_refine@1_revised"}
  out = refine.run_strategy("best_of_n", ctx, [p.prompt for p in problems], cfg, seed=3)
  assert all(len(r.candidates) == 3 and r.chosen.completion_tokens for r in out)
  g = refine.run_strategy("greedy", ctx, [p.prompt for p in problems], cfg, seed=3)
  assert [r.candidates[0].completion for r in out] == [r.text for r in g]   # candidate 0 = greedy
  # the judge as scorer on real (random) output: unparsed judgments never crash
  jcfg = StrategyConfig(n=2, scorer="judge", sample=SamplingParams(max_new_tokens=4),
                        judge_tokens=4)
  out = refine.run_strategy("best_of_n", ctx, [p.prompt for p in problems[:1]], jcfg, seed=0)
  assert out[0].info["scorer"] == "judge" and len(out[0].info["scores"]) == 2
