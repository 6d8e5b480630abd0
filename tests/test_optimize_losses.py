"""Losses, advantages, weights and the schedule against tiny cases worked out by hand
(the expected numbers come from the formulas written out here, not from our code)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove_jax import optimize as opt
from selfimprove_jax.errors import UserError


def _cfg(**kw):
  c = opt.default_optim_config()
  c.update(kw)
  return c


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def test_sft_token_and_sequence_aggregation():
  logp = np.array([[0.0, -1.0, -2.0, 0.0], [0.0, -3.0, 0.0, 0.0]], np.float32)
  loss_mask = np.array([[0, 1, 1, 0], [0, 1, 0, 0]], np.float32)
  batch = {"loss_mask": loss_mask}
  # token mean over the 3 completion tokens: (1 + 2 + 3) / 3
  loss, _ = opt.sft_loss(logp, None, opt.prepare_batch(batch, _cfg()), _cfg())
  assert float(loss) == pytest.approx(2.0, abs=1e-6)
  # sequence mean: ((1 + 2) / 2 + 3 / 1) / 2
  cfg = _cfg(aggregation="sequence")
  loss, _ = opt.sft_loss(logp, None, opt.prepare_batch(batch, cfg), cfg)
  assert float(loss) == pytest.approx(2.25, abs=1e-6)


def test_dpo_hand_case_with_label_smoothing():
  # Two pairs. Rows: chosen0, rejected0, chosen1, rejected1; one completion token each
  # plus one masked-out token that must not count.
  logp = np.array([[-1.0, 9.0], [-3.0, 9.0], [-2.0, 9.0], [-1.0, 9.0]], np.float32)
  ref = np.array([[-2.0, 0.0], [-2.0, 0.0], [-2.0, 0.0], [-2.0, 0.0]], np.float32)
  mask = np.array([[1, 0]] * 4, np.float32)
  beta, ls = 0.5, 0.1
  cfg = _cfg(loss="dpo", dpo_beta=beta, dpo_label_smoothing=ls)
  batch = opt.prepare_batch({"loss_mask": mask, "ref_logprobs": ref}, cfg)
  loss, m = opt.dpo_loss(logp, None, batch, cfg)
  # pair 0: chosen reward 0.5*(-1+2)=0.5, rejected 0.5*(-3+2)=-0.5 -> z=1
  # pair 1: chosen 0.5*(0)=0, rejected 0.5*(1)=0.5 -> z=-0.5
  def pair(z):
    return -(1 - ls) * math.log(_sigmoid(z)) - ls * math.log(_sigmoid(-z))
  assert float(loss) == pytest.approx((pair(1.0) + pair(-0.5)) / 2, abs=1e-6)
  assert float(m["accuracy"]) == pytest.approx(0.5)
  assert float(m["margin"]) == pytest.approx(0.25, abs=1e-6)
  assert float(m["chosen_reward"]) == pytest.approx(0.25, abs=1e-6)


def test_advantages_by_hand():
  r = np.array([1.0, 0.0, 0.0, 3.0, 1.0, 2.0], np.float32)
  ids = np.array([7, 7, 2, 2, 2, 9])      # groups {0,1}, {2,3,4}, {5}
  eps = 1e-4
  grpo = np.asarray(opt.advantages(r, ids, "grpo", eps=eps))
  # group {1,0}: mean .5, sample std sqrt(.5); group {0,3,1}: mean 4/3,
  # sample var ((16/9)+(25/9)+(1/9))/2 = 7/3; singleton: 0.
  s1, s2 = math.sqrt(0.5), math.sqrt(7 / 3)
  want = [0.5 / (s1 + eps), -0.5 / (s1 + eps), (0 - 4 / 3) / (s2 + eps),
          (3 - 4 / 3) / (s2 + eps), (1 - 4 / 3) / (s2 + eps), 0.0]
  np.testing.assert_allclose(grpo, want, rtol=1e-5, atol=1e-6)
  rloo = np.asarray(opt.advantages(r, ids, "rloo"))
  # r_i minus the mean of the others
  np.testing.assert_allclose(rloo, [1 - 0, 0 - 1, 0 - 2, 3 - 0.5, 1 - 1.5, 0.0], atol=1e-6)
  dr = np.asarray(opt.advantages(r, ids, "dr_grpo"))
  np.testing.assert_allclose(dr, [0.5, -0.5, -4 / 3, 5 / 3, -1 / 3, 0.0], atol=1e-6)
  # an int is a contiguous group size
  np.testing.assert_allclose(np.asarray(opt.advantages(r[:4], 2, "dr_grpo")),
                             [0.5, -0.5, -1.5, 1.5], atol=1e-6)


def test_policy_gradient_clip_and_k3_kl_by_hand():
  # One row, tokens at t=1,2 in the loss. Advantage +1.
  logp = np.array([[0.0, -1.0, -2.0]], np.float32)
  old = np.array([[0.0, -1.5, -2.0]], np.float32)    # ratio e^.5 at t=1, 1 at t=2
  ref = np.array([[0.0, -0.7, -2.0]], np.float32)    # ref - logp = .3 at t=1, 0 at t=2
  cfg = _cfg(loss="grpo", clip_eps=0.2, clip_eps_high=0.28, kl_coef=0.1)
  batch = {"loss_mask": np.array([[0, 1, 1]], np.float32), "old_logprobs": old,
           "ref_logprobs": ref, "rewards": np.array([1.0], np.float32),
           "group_ids": np.array([0])}
  batch = opt.prepare_batch(batch, cfg)
  batch["advantages"] = jnp.array([1.0])      # a singleton group would give 0
  entropy = np.array([[5.0, 1.0, 3.0]], np.float32)
  loss, m = opt.policy_gradient_loss(logp, entropy, batch, cfg)
  k3 = math.exp(0.3) - 0.3 - 1
  # t=1: min(e^.5 * 1, 1.28 * 1) = 1.28 (clip-higher active); t=2: ratio 1 -> 1
  per_token = [-1.28 + 0.1 * k3, -1.0 + 0.0]
  assert float(loss) == pytest.approx(sum(per_token) / 2, abs=1e-6)
  assert float(m["kl"]) == pytest.approx(k3 / 2, abs=1e-6)
  assert float(m["entropy"]) == pytest.approx(2.0, abs=1e-6)
  assert float(m["clip_fraction"]) == pytest.approx(0.5)
  # Negative advantage: the pessimistic (unclipped, larger) term is kept.
  batch["advantages"] = jnp.array([-1.0])
  loss, _ = opt.policy_gradient_loss(logp, entropy, batch, cfg)
  assert float(loss) == pytest.approx((math.exp(0.5) + 0.1 * k3 + 1.0) / 2, abs=1e-5)


def test_dr_grpo_constant_normaliser():
  # Dr. GRPO: sum over tokens / (rows * T), no length normalisation.
  logp = np.zeros((2, 4), np.float32)
  mask = np.array([[0, 1, 1, 1], [0, 1, 0, 0]], np.float32)
  cfg = _cfg(loss="dr_grpo", kl_coef=0.0)
  batch = opt.prepare_batch({"loss_mask": mask, "rewards": np.array([1.0, 0.0]),
                             "group_ids": np.array([0, 0])}, cfg)
  loss, _ = opt.policy_gradient_loss(logp, np.zeros_like(logp), batch, cfg)
  # advantages +-0.5, ratio 1: -(3 * 0.5 + 1 * -0.5) / (2 * 4)
  assert float(loss) == pytest.approx(-1.0 / 8, abs=1e-6)


def test_schedule_and_decay_mask():
  cfg = _cfg(learning_rate=1.0, warmup_steps=10, total_steps=110, schedule="cosine",
             min_lr_ratio=0.1)
  lr = opt.learning_rate_schedule(cfg)
  assert float(lr(0)) == pytest.approx(0.0)
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  # halfway through the cosine: 0.1 + 0.9 * (1 + cos(pi/2)) / 2
  assert float(lr(60)) == pytest.approx(0.55, abs=1e-6)
  assert float(lr(110)) == pytest.approx(0.1, abs=1e-6)
  lin = opt.learning_rate_schedule(_cfg(learning_rate=1.0, total_steps=100, schedule="linear"))
  assert float(lin(25)) == pytest.approx(0.75)
  const = opt.learning_rate_schedule(_cfg(learning_rate=2.0, schedule="constant"))
  assert float(const(10**6)) == pytest.approx(2.0)
  # the horizon is optimizer state: a fresh optimizer sized to 4 steps decays in 4
  # (SGD-like check: Adam's first update of a constant gradient is -lr * sign)
  cfg = _cfg(learning_rate=1.0, warmup_steps=0, total_steps=1000, schedule="cosine",
             min_lr_ratio=0.0, weight_decay=0.0, grad_clip_norm=0.0, eps=1e-12)
  tx = opt.make_optimizer(cfg)
  state = opt.TrainState(params={"w": jnp.zeros(())}, opt_state=tx.init({"w": jnp.zeros(())}),
                         step=jnp.zeros((), jnp.int32), rng=jnp.zeros(2, jnp.uint32))
  state = opt.with_horizon(state, 4)
  seen = []
  for _ in range(5):
    seen.append(float(opt.state.current_learning_rate(cfg, state.opt_state)))
    upd, o = tx.update({"w": jnp.ones(())}, state.opt_state, state.params)
    state = state.replace(opt_state=o)
    assert float(upd["w"]) == pytest.approx(-seen[-1], abs=1e-6)
  want = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)] + [0.0]
  assert seen == pytest.approx(want, abs=1e-6)
  params = {"embedding": 0, "final_norm": 0,
            "layers": {"q": 0, "attn_norm": 0, "q_bias": 0, "down": 0}}
  assert opt.decay_mask(params) == {"embedding": False, "final_norm": False,
                                    "layers": {"q": True, "attn_norm": False,
                                               "q_bias": False, "down": True}}


def test_bad_config_is_one_user_error():
  with pytest.raises(UserError, match="optim.loss='ppo'"):
    opt.check_optim_config(_cfg(loss="ppo"))
  with pytest.raises(UserError, match="optim.schedule"):
    opt.check_optim_config(_cfg(schedule="step"))


@pytest.mark.parametrize("loss,aggregation", [("grpo", "token"), ("grpo", "sequence"),
                                              ("dr_grpo", "token")])
def test_rl_batch_rows_follow_the_kept_samples_and_padding_leaves_the_loss(loss, aggregation):
  """rl_batches pads the kept samples to prompts x G rows halved while they fit (and the
  micro-batches still split them); the loss, its gradient and its metrics on the small
  batch equal those on the full prompts x G batch."""
  from selfimprove_jax import settings
  from selfimprove_jax.config import base_config
  from selfimprove_jax.model import get_preset, init_params
  from selfimprove_jax.optimize import batches as batches_lib
  from selfimprove_jax.records import Sample
  from selfimprove_jax.runtime.sharding import single_device_mesh
  config = base_config()
  config.loop.prompts_per_iteration, config.loop.samples_per_prompt = 16, 8
  config.train.max_seq_len = 24
  rs = np.random.RandomState(0)
  samples = [Sample(problem_id=f"p{i // 4}", prompt_tokens=rs.randint(3, 60, 5).tolist(),
                    completion_tokens=rs.randint(3, 60, 3 + i % 5).tolist(),
                    logprobs=list(-rs.rand(3 + i % 5)), reward=float(i % 3 == 0))
                 for i in range(10)]
  rows = lambda: batches_lib.rl_batches(samples, settings.batches(config), 0)[0]["tokens"].shape[0]
  assert rows() == 16
  config.optim.micro_batch_size = 32
  assert rows() == 32                       # still splits into micro-batches of 32
  config.optim.micro_batch_size = 0
  config.optim.grad_accum_steps = 3          # 128 rows cannot halve into thirds
  assert rows() == 128
  config.optim.grad_accum_steps = 1
  small = batches_lib.rl_batches(samples, settings.batches(config), 0)[0]
  full = batches_lib.policy_gradient_batch(samples, settings.batches(config), 128,
                                           lambda s: s.problem_id)[0]
  model = get_preset("tiny").replace(vocab_size=64)
  params = init_params(model, seed=0)
  cfg = _cfg(loss=loss, aggregation=aggregation, kl_coef=0.0)
  out = []
  for b in (small, full):
    state = opt.create_train_state(model, cfg, params, single_device_mesh())
    state, m = opt.make_train_step(model, cfg, single_device_mesh())(state, b)
    out.append((float(m["loss"]), float(m["grad_norm"]), jax.tree.leaves(state.params)[1]))
  assert out[0][0] == pytest.approx(out[1][0], rel=1e-5, abs=1e-7)
  assert out[0][1] == pytest.approx(out[1][1], rel=1e-4)
  np.testing.assert_allclose(np.asarray(out[0][2]), np.asarray(out[1][2]), rtol=1e-5, atol=1e-7)
