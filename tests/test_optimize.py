"""The optimisation core on the tiny model (vocab 64, fp32): chunked log-probs,
gradients vs finite differences, the sharded step vs one device, donation, and
learning with sft, dpo and grpo."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove_jax import optimize as opt
from selfimprove_jax.errors import UserError
from selfimprove_jax.model import forward, get_preset, init_params
from selfimprove_jax.runtime.sharding import make_mesh, single_device_mesh

V = 64
CONFIG = get_preset("tiny").replace(vocab_size=V)


def _cfg(**kw):
  c = opt.default_optim_config()
  c.update(kw)
  return c


def _batch(rs, B, T, prompt=2, pad_rows=()):
  """Random sequences; loss on everything after `prompt` tokens; listed rows padded."""
  tokens = rs.randint(0, V, (B, T)).astype(np.int32)
  input_mask = np.ones((B, T), np.int32)
  for b in pad_rows:
    input_mask[b, T // 2:] = 0
    tokens[b, T // 2:] = 0
  loss_mask = input_mask.astype(np.float32)
  loss_mask[:, :prompt] = 0
  return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask}


@pytest.fixture(scope="module")
def params():
  return init_params(CONFIG, seed=0)


def test_chunked_logprobs_equal_unchunked_and_log_softmax(params):
  rs = np.random.RandomState(0)
  b = _batch(rs, 3, 13, pad_rows=(1,))
  fn = jax.jit(functools.partial(opt.token_logprobs, config=CONFIG, return_entropy=True),
               static_argnames="chunk")
  whole, ent_whole = fn(params, tokens=b["tokens"], input_mask=b["input_mask"], chunk=0)
  part, ent_part = fn(params, tokens=b["tokens"], input_mask=b["input_mask"], chunk=5)
  np.testing.assert_allclose(part, whole, atol=1e-5)
  np.testing.assert_allclose(ent_part, ent_whole, atol=1e-5)
  # Outside reference: log_softmax of the full logits, shifted to the target position.
  logits = np.asarray(forward(params, CONFIG, b["tokens"], b["input_mask"]), np.float64)
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  lsm = logits - logz[..., None]
  want = np.zeros((3, 13))
  want[:, 1:] = np.take_along_axis(lsm[:, :-1], b["tokens"][:, 1:, None], -1)[..., 0]
  want *= b["input_mask"]
  np.testing.assert_allclose(whole, want, atol=1e-5)
  p = np.exp(lsm[:, :-1])
  want_ent = np.zeros((3, 13))
  want_ent[:, 1:] = -(p * lsm[:, :-1]).sum(-1) * b["input_mask"][:, 1:]
  np.testing.assert_allclose(ent_whole, want_ent, atol=1e-4)
  assert whole[1, 7] == 0.0 and whole[0, 0] == 0.0   # padding and t=0


def test_gradients_match_finite_differences(params):
  """Directional derivative of the grpo loss (clipping, k3 KL, chunked log-probs
  with rematerialised chunks) against a central difference."""
  rs = np.random.RandomState(1)
  b = _batch(rs, 4, 9)
  b["old_logprobs"] = np.where(b["loss_mask"] > 0, rs.uniform(-4.5, -3.8, (4, 9)), 0.0)
  b["ref_logprobs"] = np.where(b["loss_mask"] > 0, rs.uniform(-4.5, -3.8, (4, 9)), 0.0)
  b["rewards"] = np.array([1.0, 0.0, 0.5, 0.0], np.float32)
  b["group_ids"] = np.array([0, 0, 1, 1])
  cfg = _cfg(loss="grpo", kl_coef=0.5, clip_eps=0.3)
  prepared = opt.prepare_batch(b, cfg)

  def loss(p):
    logp, ent = opt.token_logprobs(p, CONFIG, b["tokens"], b["input_mask"], chunk=4,
                                   return_entropy=True)
    return opt.policy_gradient_loss(logp, ent, prepared, cfg)[0]

  grads = jax.jit(jax.grad(loss))(params)
  direction = jax.tree.map(lambda x: jnp.asarray(rs.normal(size=x.shape), jnp.float32), params)
  norm = jnp.sqrt(sum(jnp.sum(d * d) for d in jax.tree.leaves(direction)))
  direction = jax.tree.map(lambda d: d / norm, direction)
  analytic = float(sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grads),
                                                       jax.tree.leaves(direction))))
  h = 1e-2
  f = jax.jit(lambda s: loss(jax.tree.map(lambda p, d: p + s * d, params, direction)))
  numeric = (float(f(h)) - float(f(-h))) / (2 * h)
  assert abs(analytic) > 1e-3, analytic   # the check would be vacuous near 0
  assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def _grpo_batch(rs, B, T):
  b = _batch(rs, B, T, pad_rows=(3,))
  b["old_logprobs"] = np.where(b["loss_mask"] > 0, rs.uniform(-4.4, -3.9, (B, T)), 0.0
                               ).astype(np.float32)
  b["ref_logprobs"] = np.where(b["loss_mask"] > 0, rs.uniform(-4.4, -3.9, (B, T)), 0.0
                               ).astype(np.float32)
  b["rewards"] = rs.uniform(0, 1, B).astype(np.float32)
  b["group_ids"] = np.arange(B) // 4
  return b


def test_sharded_step_matches_single_device(params):
  """One step on data=8 and on fsdp=2 x tensor=4 (both with 2 accumulated
  micro-batches) equals the single-device step without accumulation. Adam with
  eps=1 and lr=1 makes the update g / (|g| + 1), so the params compare the
  gradients themselves (with a small eps, Adam's g / |g| would turn rounding noise
  in near-zero gradients into lr-sized differences)."""
  rs = np.random.RandomState(2)
  batch = _grpo_batch(rs, 16, 12)
  host_params = jax.tree.map(np.asarray, params)
  results = []
  for shape, accum in (({}, 1), ({"data": 8}, 2), ({"fsdp": 2, "tensor": 4}, 2)):
    mesh = make_mesh(shape) if shape else single_device_mesh()
    cfg = _cfg(loss="grpo", learning_rate=1.0, eps=1.0, grad_accum_steps=accum,
               logprob_chunk=5, weight_decay=0.1)
    state = opt.create_train_state(CONFIG, cfg, host_params, mesh)
    state, metrics = opt.make_train_step(CONFIG, cfg, mesh)(state, batch)
    if shape == {"fsdp": 2, "tensor": 4}:
      mu = state.opt_state[1][0].mu["layers"]["gate"]
      assert mu.sharding == state.params["layers"]["gate"].sharding
      assert mu.sharding.spec[1:] == ("fsdp", "tensor")
    results.append((jax.tree.map(np.asarray, state.params),
                    {k: float(v) for k, v in metrics.items()}))
  (ref_params, ref_metrics) = results[0]
  assert ref_metrics["grad_norm"] > 0 and ref_metrics["kl"] > 0
  for got_params, got_metrics in results[1:]:
    assert got_metrics.keys() == ref_metrics.keys()
    for k in ref_metrics:
      assert got_metrics[k] == pytest.approx(ref_metrics[k], abs=1e-5, rel=1e-5), k
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(got_params)):
      np.testing.assert_allclose(b, a, atol=1e-5)


def test_micro_batches_keep_dpo_pairs_together():
  rows = np.arange(16)
  split = np.asarray(opt.split_micro_batches({"r": rows}, 4, unit=2)["r"])
  assert split.shape == (4, 4)
  assert sorted(split.ravel().tolist()) == rows.tolist()
  assert (split[:, 0::2] % 2 == 0).all() and (split[:, 1::2] == split[:, 0::2] + 1).all()
  with pytest.raises(UserError, match="micro-batches of whole DPO pairs"):
    opt.accumulation_steps(_cfg(loss="dpo", grad_accum_steps=4), 12)


def test_sft_memorises_eight_sequences_and_donates_state(params):
  mesh = single_device_mesh()
  rs = np.random.RandomState(3)
  batch = _batch(rs, 8, 16, prompt=1)
  cfg = _cfg(learning_rate=1e-2, schedule="constant", logprob_chunk=8)
  state = opt.create_train_state(CONFIG, cfg, params, mesh)
  step = opt.make_train_step(CONFIG, cfg, mesh)
  old = state
  state, m = step(state, batch)
  assert old.params["embedding"].is_deleted()        # donated ...
  assert not params["embedding"].is_deleted()        # ... but the caller's copy lives
  assert m["tokens"] == 8 * 16 and m["loss_tokens"] == 8 * 15
  assert float(m["loss"]) == pytest.approx(np.log(V), abs=0.1)   # near-uniform start
  for _ in range(59):
    state, m = step(state, batch)
  assert int(state.step) == 60
  assert float(m["loss"]) < 0.05, float(m["loss"])


def test_dpo_raises_the_margin(params):
  mesh = single_device_mesh()
  rs = np.random.RandomState(4)
  batch = _batch(rs, 8, 10, prompt=4)
  batch["tokens"][1::2, :4] = batch["tokens"][0::2, :4]      # pairs share the prompt
  batch["ref_logprobs"] = np.asarray(opt.make_logprob_fn(CONFIG, mesh, chunk=0)(
      params, batch["tokens"], batch["input_mask"]))
  cfg = _cfg(loss="dpo", learning_rate=3e-3, schedule="constant", dpo_beta=0.1,
             grad_accum_steps=2)
  state = opt.create_train_state(CONFIG, cfg, params, mesh)
  step = opt.make_train_step(CONFIG, cfg, mesh)
  state, first = step(state, batch)
  assert abs(float(first["margin"])) < 1e-5                  # policy == reference
  assert float(first["loss"]) == pytest.approx(np.log(2), abs=1e-5)
  for _ in range(9):
    state, m = step(state, batch)
  assert float(m["margin"]) > 0.5 and float(m["accuracy"]) == 1.0, m


def _sample(params, key, prompts, steps):
  """Toy ancestral sampling straight from the logits (fixed shapes, one jit)."""
  B, P = prompts.shape
  tokens = jnp.concatenate([prompts, jnp.zeros((B, steps), jnp.int32)], axis=1)
  for t in range(P, P + steps):
    logits = forward(params, CONFIG, tokens)[:, t - 1]
    key, sub = jax.random.split(key)
    tokens = tokens.at[:, t].set(jax.random.categorical(sub, logits))
  return tokens


def test_grpo_raises_a_toy_reward(params):
  """Reward = fraction of sampled tokens equal to 7 (chance: 1/64)."""
  mesh = single_device_mesh()
  G, prompts_n, P, steps, target = 8, 4, 2, 6, 7
  cfg = _cfg(loss="grpo", learning_rate=2e-2, schedule="constant", kl_coef=0.0,
             logprob_chunk=0)
  state = opt.create_train_state(CONFIG, cfg, params, mesh)
  step = opt.make_train_step(CONFIG, cfg, mesh)
  sample = jax.jit(functools.partial(_sample, steps=steps))
  logprob_fn = opt.make_logprob_fn(CONFIG, mesh, chunk=0)
  rs = np.random.RandomState(5)
  key = jax.random.key(0)
  rewards_seen = []
  for it in range(12):
    prompts = np.repeat(rs.randint(10, V, (prompts_n, P)), G, axis=0).astype(np.int32)
    key, sub = jax.random.split(key)
    tokens = np.asarray(sample(state.params, sub, jnp.asarray(prompts)))
    completion = tokens[:, P:]
    rewards = (completion == target).mean(axis=1).astype(np.float32)
    rewards_seen.append(rewards.mean())
    loss_mask = np.zeros(tokens.shape, np.float32)
    loss_mask[:, P:] = 1
    input_mask = np.ones(tokens.shape, np.int32)
    batch = {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask,
             "rewards": rewards, "group_ids": np.arange(len(tokens)) // G,
             "old_logprobs": np.asarray(logprob_fn(state.params, tokens, input_mask)),
             "ref_logprobs": np.asarray(logprob_fn(params, tokens, input_mask))}
    state, m = step(state, batch)
    assert np.isfinite(float(m["entropy"])) and float(m["kl"]) >= 0
  assert np.mean(rewards_seen[:2]) < 0.1
  assert np.mean(rewards_seen[-2:]) > 0.5, rewards_seen


def test_remat_step_equals_plain_step(params):
  """Rematerialised blocks (either policy) change memory and time, not the update."""
  mesh = single_device_mesh()
  batch = _batch(np.random.RandomState(7), 2, 8)
  cfg = _cfg(learning_rate=1e-3)
  out = []
  for config in (CONFIG, CONFIG.replace(remat=True),
                 CONFIG.replace(remat=True, remat_policy="dots")):
    state = opt.create_train_state(config, cfg, params, mesh)
    state, m = opt.make_train_step(config, cfg, mesh)(state, batch)
    out.append((float(m["loss"]), state.params))
  for loss, p in out[1:]:
    assert loss == pytest.approx(out[0][0], abs=1e-6)
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(out[0][1])):
      np.testing.assert_allclose(x, y, atol=1e-6)


def test_bf16_compute_keeps_fp32_master_weights(params):
  """dtype=bfloat16 (+ remat): the step computes in bf16 but params, gradients and
  Adam moments stay fp32; the loss matches the fp32 loss to bf16 precision."""
  mesh = single_device_mesh()
  batch = _batch(np.random.RandomState(6), 2, 8)
  cfg = _cfg(learning_rate=1e-3)
  losses = []
  for config in (CONFIG, CONFIG.replace(dtype="bfloat16", remat=True)):
    state = opt.create_train_state(config, cfg, params, mesh)
    state, m = opt.make_train_step(config, cfg, mesh)(state, batch)
    losses.append(float(m["loss"]))
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert state.opt_state[1][0].mu["layers"]["q"].dtype == jnp.float32
  assert losses[1] == pytest.approx(losses[0], abs=0.05)
  assert losses[1] != losses[0]     # the bf16 path really ran in bf16


@pytest.mark.parametrize("kw", [
    dict(),                                                        # sft, fp32 moments
    dict(moment_dtype="bfloat16", weight_decay=0.1, grad_accum_steps=2),
    dict(loss="grpo", kl_coef=0.04, grad_clip_norm=1e-3),          # clipping triggers
])
def test_update_per_array_matches_the_fused_step(params, kw):
  """optim.update_per_array: the same weights, optimizer state and metrics as the
  one-jit step over three steps (to float rounding), and the state is consumed the
  same way."""
  mesh = single_device_mesh()
  rs = np.random.RandomState(6)
  batch = _batch(rs, 8, 12, prompt=3)
  batch.update(rewards=rs.rand(8).astype(np.float32), group_ids=np.repeat(np.arange(2), 4),
               ref_logprobs=np.zeros((8, 12), np.float32))
  runs = []
  for per_array in (False, True):
    cfg = _cfg(learning_rate=1e-2, schedule="cosine", total_steps=5, warmup_steps=1,
               update_per_array=per_array, **kw)
    state = opt.create_train_state(CONFIG, cfg, params, mesh)
    step = opt.make_train_step(CONFIG, cfg, mesh)
    old, metrics = state, []
    for _ in range(3):
      state, m = step(state, batch)
      metrics.append({k: float(v) for k, v in m.items()})
    assert old.params["embedding"].is_deleted() and old.opt_state[-1][0].mu[
        "embedding"].is_deleted()
    runs.append((state, metrics))
  (fused, m_fused), (arrays, m_arrays) = runs
  assert jax.tree.structure(fused) == jax.tree.structure(arrays)
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(arrays)):
    assert a.dtype == b.dtype and a.sharding == b.sharding
    # XLA fuses the two differently: float rounding apart (one bf16 step in a moment)
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=1e-5 if a.dtype == jnp.float32 else 2 ** -7, atol=1e-6)
  for a, b in zip(m_fused, m_arrays):
    assert a.keys() == b.keys()
    for k in a:
      assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
  if kw.get("grad_clip_norm"):
    assert m_arrays[0]["grad_norm"] > 1e-3        # the clip was taken
