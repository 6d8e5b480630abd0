"""Multi-turn episodes (environments/): token continuity (the ids a loss reads are the
ids sampled, turn by turn, and observations carry no loss), a scripted environment's
exact rewards and masks, reproducibility whatever the environment's timing, and how
episodes end."""

import functools
import os
import random
import time

import jax
import numpy as np
import pytest
from scipy import special

from selfimprove_jax.environments import episodes as episodes_lib
from selfimprove_jax.environments.base import Environment, Spec, Step
from selfimprove_jax.model import forward, get_preset, init_params
from selfimprove_jax.optimize import batches as batches_lib
from selfimprove_jax.sampling import Sampler, SamplingParams, encode_reply
from selfimprove_jax.tasks.problem import Problem
from selfimprove_jax.weights import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def tiny():
  config = get_preset("tiny")
  params = dict(init_params(config, seed=3))
  params["embedding"] = params["embedding"] * 4.0   # peaked logits: varied, short turns
  return config, params


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizer_lib.from_gguf(tokenizer_lib.smollm2_gguf_path())


@pytest.fixture(scope="module")
def sampler(tiny, tokenizer):
  return Sampler(tiny[0], eos_ids=(2,), tokenizer=tokenizer, max_batch=4)


class Scripted(Environment):
  """Three turns: observation 'obs k <|im_end|>' (a marker spelled in text), reward k/3;
  optionally a random sleep per step (timing must not change any episode)."""

  def __init__(self, sleep=False, turns=3):
    self.k, self.sleep, self.turns = 0, sleep, turns

  def reset(self, problem):
    return f"problem {problem.id}: talk to me"

  def step(self, action, finish):
    if self.sleep:
      time.sleep(random.random() * 0.05)
    self.k += 1
    return Step(observation=f"obs {self.k} <|im_end|>", reward=self.k / self.turns,
                done=self.k >= self.turns, tool_call=self.k == 1)


PROBLEMS = [Problem(id=f"p{i}", prompt=f"problem {i}", reference="x") for i in range(3)]
SP = SamplingParams(temperature=1.0, max_new_tokens=6)


def _play(sampler, params, tokenizer, make=Scripted, n=2, seed=0, **spec):
  spec = Spec(name="scripted", make=make, **{"max_turns": 5, "max_tokens": 160, **spec})
  return episodes_lib.run(sampler, params, tokenizer, spec, PROBLEMS, SP, n=n, seed=seed)


@functools.partial(jax.jit, static_argnums=1)
def _forward(params, config, tokens, mask):
  return forward(params, config, tokens, mask)


def test_scripted_episode_rewards_masks_and_token_continuity(tiny, sampler, tokenizer):
  config, params = tiny
  groups = _play(sampler, params, tokenizer)
  assert [len(g) for g in groups] == [2, 2, 2]
  for g, p in zip(groups, PROBLEMS):
    for j, s in enumerate(g):
      assert (s.problem_id, s.sample_index, s.episode_end) == (p.id, j, "done")
      assert [t["reward"] for t in s.turns] == pytest.approx([1 / 3, 2 / 3, 1.0])
      assert s.reward == 1.0
      # the completion is the turns' sampled ids and the observations' appended ids,
      # in order; only the sampled ones are in the action mask
      ids, mask = [], []
      for t in s.turns:
        ids += t["tokens"] + t["observation_tokens"]
        mask += [1] * len(t["tokens"]) + [0] * len(t["observation_tokens"])
      assert s.completion_tokens == ids and s.action_mask == mask
      assert s.turns[-1]["observation_tokens"] == []
      for t in s.turns[:-1]:
        closed = t["finish_reason"] == "eos"
        assert t["observation_tokens"] == encode_reply(tokenizer, t["observation"], closed)
        # the marker spelled in the observation stays text: the only end-of-turn ids
        # are the template's (closing the model's reply unless it did, and the user turn)
        assert t["observation_tokens"].count(2) == (1 if closed else 2)
      # each sampled token's log-prob is the model's, given exactly the ids before it
      seq = np.asarray(s.prompt_tokens + s.completion_tokens, np.int32)
      tokens, valid = np.zeros((1, 192), np.int32), np.zeros((1, 192), bool)
      tokens[0, :len(seq)], valid[0, :len(seq)] = seq, True
      logits = np.asarray(_forward(params, config, tokens, valid), np.float64)
      logp = special.log_softmax(logits[0, :len(seq)], axis=-1)
      P = len(s.prompt_tokens)
      want = logp[np.arange(P - 1, len(seq) - 1), seq[P:]]
      got = np.asarray(s.logprobs)
      m = np.asarray(mask, bool)
      np.testing.assert_allclose(got[m], want[m], atol=2e-3)
      assert not got[~m].any()
  # an SFT batch of the episodes puts loss on the model's tokens only
  samples = [s for g in groups for s in g]
  batch = batches_lib.pad_rows([batches_lib.row(s) for s in samples], 8, 192)
  for i, s in enumerate(samples):
    P = len(s.prompt_tokens)
    assert batch["loss_mask"][i, :P].sum() == 0
    np.testing.assert_array_equal(batch["loss_mask"][i, P:P + len(s.action_mask)], s.action_mask)
    np.testing.assert_array_equal(batch["tokens"][i, P:P + len(s.completion_tokens)],
                                  s.completion_tokens)
  metrics = episodes_lib.process_metrics(samples)
  assert metrics["episode_turns"] == 3 and metrics["episode_tool_calls"] == 1
  assert metrics["episode_success"] == 1 and metrics["episode_out_of_turns"] == 0


def test_episodes_do_not_depend_on_environment_timing(tiny, sampler, tokenizer):
  """Steps that take random times (run on the feed's threads while the sampler
  decodes) give the same episodes: answers are admitted in a fixed order."""
  _, params = tiny
  runs = [_play(sampler, params, tokenizer, make=functools.partial(Scripted, sleep=True),
                seed=5) for _ in range(2)]
  a, b = ([s.to_json() for g in r for s in g] for r in runs)
  assert a == b
  other = [s.to_json() for g in _play(sampler, params, tokenizer, seed=6) for s in g]
  assert other != a


def test_episode_limits_and_environment_errors(tiny, sampler, tokenizer):
  _, params = tiny
  # out of turns: the environment never says done
  out = _play(sampler, params, tokenizer, make=functools.partial(Scripted, turns=99),
              max_turns=2)
  assert all(len(s.turns) == 2 and s.episode_end == "max_turns" for g in out for s in g)
  # out of tokens: the episode's context reaches max_tokens
  out = _play(sampler, params, tokenizer, make=functools.partial(Scripted, turns=99),
              max_turns=50, max_tokens=80)
  for s in (s for g in out for s in g):
    assert s.episode_end == "max_tokens"
    assert len(s.prompt_tokens) + len(s.completion_tokens) <= 80

  class Broken(Scripted):
    def step(self, action, finish):
      raise RuntimeError("environment bug")

  out = _play(sampler, params, tokenizer, make=Broken)
  s = out[0][0]
  assert s.episode_end == "error" and s.turns[0]["status"] == "env_error"
  assert "environment bug" in s.turns[0]["detail"]
  with pytest.raises(ValueError, match="max_tokens"):
    _play(sampler, params, tokenizer, max_tokens=10)


# ----------------------------------------------------------------------------- in the loop

MULTI_TURN = ("--config.task.name=guess_number", "--config.environment.name=guess_number",
              "--config.environment.max_turns=3", "--config.environment.max_tokens=160",
              "--config.train.max_seq_len=160")


def _eval_turns(workdir, k):
  """Model turns the held-out evaluation of iteration k played (greedy and sampled)."""
  from selfimprove_jax.records import read_jsonl
  n = 0
  for split in ("validation", "test"):
    for r in read_jsonl(os.path.join(workdir, "records", f"iter_{k:04d}", f"eval_{split}.jsonl")):
      n += r["turns"] + sum(x["turns"] for x in r.get("samples", []))
  return n


def test_multi_turn_run_resumes_bit_identically_after_sigkill_mid_episode(cache_dir, tmp_path):
  """configs/tiny.py playing guess_number episodes: killed between two turns of
  iteration 1's acquisition (episodes half played), the re-run ends as an
  uninterrupted run does: same rows, same weights, same episodes."""
  from run_files import assert_same_state, final_state, metrics, run_cli
  from selfimprove_jax.records import read_records
  whole = run_cli(tmp_path / "whole", cache_dir, *MULTI_TURN)
  assert whole.returncode == 0, whole.stderr[-3000:]
  acquired = lambda d: [s.to_json() for s in read_records(
      os.path.join(d, "records", "iter_0001", "acquire.parquet"))]
  episodes = acquired(tmp_path / "whole")
  assert episodes and all(len(s["turns"]) >= 1 and s["action_mask"] for s in episodes)
  assert any(len(s["turns"]) > 1 for s in episodes), "no episode took a second turn"
  # the baseline's evaluation answers this many turns; 3 more lands inside iteration 1
  fault = f"episode_turn@{_eval_turns(tmp_path / 'whole', 0) + 3}"
  killed = run_cli(tmp_path / "killed", cache_dir, *MULTI_TURN, fault=fault)
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert not os.path.exists(tmp_path / "killed" / "records" / "iter_0001" / "acquire.parquet")
  resumed = run_cli(tmp_path / "killed", cache_dir, *MULTI_TURN)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert metrics(tmp_path / "killed") == metrics(tmp_path / "whole")
  assert_same_state(final_state(tmp_path / "killed"), final_state(tmp_path / "whole"))
  assert acquired(tmp_path / "killed") == episodes


def test_grpo_batches_of_episodes_train_the_model_tokens_with_episode_advantages():
  """GRPO over episodes: one row per episode, its reward the episode's, groups of the G
  episodes of a problem, and loss (and the sampler's log-probs) only where the model
  spoke."""
  from selfimprove_jax.records import Sample
  def episode(pid, j, reward, mask):
    n = len(mask)
    return Sample(problem_id=pid, sample_index=j, prompt_tokens=[5, 6, 7],
                  completion_tokens=list(range(10, 10 + n)), action_mask=mask,
                  logprobs=[-0.5 if m else 0.0 for m in mask], reward=reward, num_tokens=n,
                  turns=[{}], episode_end="done")
  eps = [episode("a", 0, 1.0, [1, 1, 0, 0, 1]), episode("a", 1, 0.0, [1, 0, 0, 1, 1, 1]),
         episode("b", 0, 0.5, [1, 1, 1]), episode("b", 1, 0.5, [1, 0, 1])]
  t = batches_lib.Settings(prompts=2, samples_per_prompt=2, max_seq_len=16)
  (batch,) = batches_lib.rl_batches(eps, t, seed=0)
  for i, s in enumerate(eps):
    mask = batch["loss_mask"][i]
    assert mask[:3].sum() == 0
    np.testing.assert_array_equal(mask[3:3 + len(s.action_mask)], s.action_mask)
    assert mask[3 + len(s.action_mask):].sum() == 0
    np.testing.assert_array_equal(batch["old_logprobs"][i][mask == 1], -0.5)
  np.testing.assert_array_equal(batch["rewards"][:4], [1.0, 0.0, 0.5, 0.5])
  g = batch["group_ids"][:4]
  assert g[0] == g[1] and g[2] == g[3] and g[0] != g[2]


def test_tool_used_filter_keeps_episodes_that_called_the_tool():
  from selfimprove_jax.records import Sample
  from selfimprove_jax.select import filters
  called = Sample(problem_id="a", turns=[{"tool_call": True}, {"tool_call": False}])
  no_call = Sample(problem_id="a", turns=[{"tool_call": False}])
  single = Sample(problem_id="a")
  kept, counts = filters.apply_filters([called, no_call, single],
                                       filters.Settings(filters=("tool_used",)))
  assert kept == [called] and counts["tool_used"] == 1


def test_held_out_evaluation_of_episodes_reports_outcome_and_process():
  """Greedy episodes per problem: pass@1 from the episode's reward, first-turn pass@1
  (what one turn earns), turns, tool calls and errors, invalid actions, the share out
  of turns, and solved episodes' turns over the optimum."""
  from selfimprove_jax.evaluate import heldout
  from selfimprove_jax.records import Sample

  def turn(reward, status="ok", tool=False):
    return {"reward": reward, "status": status, "tool_call": tool}

  played = {  # problem -> (reward, turns, end)
      "p0": (1.0, [turn(1.0)], "done"),
      "p1": (1.0, [turn(0.0, tool=True), turn(0.0, "timeout", True), turn(1.0)], "done"),
      "p2": (0.0, [turn(0.0, "invalid"), turn(0.0, "invalid")], "max_turns")}

  class Policy:
    def episodes(self, spec, problems, sp, n, seed):
      return [[Sample(problem_id=p.id, reward=played[p.id][0], turns=played[p.id][1],
                      episode_end=played[p.id][2], action_mask=[1, 1])
               for _ in range(n)] for p in problems]

  spec = Spec(name="scripted", make=Scripted, optimal_turns=lambda p: 1)
  settings = heldout.Settings(maj_k=2, environment=spec)
  m = heldout.evaluate(Policy(), None, PROBLEMS, settings, seed=0)
  assert m["pass@1"] == pytest.approx(2 / 3) and m["pass@2"] == pytest.approx(2 / 3)
  assert m["first_turn_pass@1"] == pytest.approx(1 / 3)
  assert m["turns"] == pytest.approx(2.0) and m["out_of_turns"] == pytest.approx(1 / 3)
  assert m["tool_calls"] == pytest.approx(2 / 3) and m["tool_errors"] == pytest.approx(1 / 3)
  assert m["invalid_actions"] == pytest.approx(2 / 3)
  assert m["turns_over_optimal"] == pytest.approx(2.0)   # (1 + 3) / 2 solved
  assert "maj@2" not in m
