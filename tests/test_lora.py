"""LoRA on the tiny model (vocab 64, fp32): the trainable count of the formula, a
zero-B adapter equals the base model, merged weights equal the low-rank product
added on the fly, adapters only in the optimizer state, SFT / DPO / GRPO steps
learn, and the sharded step equals one device."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from selfimprove_jax import optimize as opt
from selfimprove_jax.errors import UserError
from selfimprove_jax.model import count_params, forward, get_preset, init_params
from selfimprove_jax.model import lora as lora_lib
from selfimprove_jax.runtime.sharding import make_mesh, single_device_mesh
from selfimprove_jax.sampling import SamplingParams, Sampler

V = 64
CONFIG = get_preset("tiny").replace(vocab_size=V)
LORA = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "o", "down"))


def _cfg(**kw):
  c = opt.default_optim_config()
  c.update(kw)
  return c


def _batch(rs, B, T, prompt=2):
  tokens = rs.randint(0, V, (B, T)).astype(np.int32)
  input_mask = np.ones((B, T), np.int32)
  loss_mask = np.ones((B, T), np.float32)
  loss_mask[:, :prompt] = 0
  return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask}


@pytest.fixture(scope="module")
def base():
  return init_params(CONFIG, seed=0)


@pytest.fixture(scope="module")
def learnable_base(base):
  """The base with embeddings of std 1 instead of 0.02. The (tied) head is frozen
  under LoRA and sees unit-RMS normed hiddens, so with std 0.02 rows no logit can
  exceed about 0.02 * sqrt(D) * sqrt(D) = 1.3 and no adapter could lower the loss much."""
  return dict(base, embedding=base["embedding"] * 50.0)


def _random_adapters(seed=1):
  """Adapters with B != 0 (a trained adapter), so merges actually change weights."""
  ad = lora_lib.init_lora(CONFIG, LORA, seed=seed)
  return jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(seed), x.shape), ad)


def test_trainable_count_is_the_formula_and_only_adapters_are_in_adam(base):
  ad = lora_lib.init_lora(CONFIG, LORA)
  L, r, D, F = CONFIG.num_layers, LORA.rank, CONFIG.embed_dim, CONFIG.mlp_dim
  NH, KH = CONFIG.num_heads * CONFIG.head_dim, CONFIG.num_kv_heads * CONFIG.head_dim
  want = L * r * ((D + NH) + (D + KH) + (NH + D) + (F + D))   # q, v, o, down
  assert count_params(ad) == lora_lib.count_lora_params(CONFIG, LORA) == want == 4352
  assert want < 0.1 * count_params(base)
  state = opt.create_train_state(CONFIG, _cfg(), ad, single_device_mesh(), lora=LORA)
  adam = state.opt_state[-1][0]
  assert count_params(adam.mu) == count_params(adam.nu) == want
  every = lora_lib.from_config(ml_collections.ConfigDict(
      dict(rank=2, alpha=4.0, targets="*", dropout=0.0)))
  per_layer = (D + NH) + 2 * (D + KH) + (NH + D) + 2 * (D + F) + (F + D)
  assert lora_lib.count_lora_params(CONFIG, every) == L * 2 * per_layer


def test_zero_b_adapter_equals_the_base_model(base):
  ad = lora_lib.init_lora(CONFIG, LORA, seed=3)
  assert all(float(jnp.abs(ab["a"]).sum()) > 0 for ab in ad["layers"].values())
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, V, (2, 12)))
  merged = lora_lib.merge(base, ad, LORA)
  np.testing.assert_array_equal(np.asarray(forward(merged, CONFIG, tokens)),
                                np.asarray(forward(base, CONFIG, tokens)))
  # A LoRA step's loss at B = 0 is the base model's loss (same batch, same loss code).
  batch = _batch(np.random.RandomState(1), 4, 12)
  mesh = single_device_mesh()
  _, m_lora = opt.make_train_step(CONFIG, _cfg(), mesh, lora=LORA)(
      opt.create_train_state(CONFIG, _cfg(), ad, mesh, lora=LORA), batch, base)
  _, m_full = opt.make_train_step(CONFIG, _cfg(), mesh)(
      opt.create_train_state(CONFIG, _cfg(), base, mesh), batch)
  assert float(m_lora["loss"]) == pytest.approx(float(m_full["loss"]), abs=1e-6)


def test_merged_weights_equal_the_low_rank_product_on_the_fly(base):
  """x @ (W + s A B) == x @ W + s (x @ A) @ B for every target, in our einsum layout;
  and the sampler on merged weights gives the log-probs of the train step's path."""
  ad = _random_adapters()
  merged = lora_lib.merge(base, ad, LORA)
  rs = np.random.RandomState(2)
  for key, ab in ad["layers"].items():
    W = base["layers"][key][0]
    n_in = lora_lib.MATRICES[key]
    x = jnp.asarray(rs.randn(5, *W.shape[:n_in]), jnp.float32)
    ins = "dn"[:n_in] if n_in == 2 else "d"
    outs = "ef"[:W.ndim - n_in]
    spec = f"b{ins},{ins}{outs}->b{outs}"
    a, b = ab["a"][0], ab["b"][0]
    fly = (jnp.einsum(spec, x, W)
           + LORA.scale * jnp.einsum(f"b{ins},{ins}r,r{outs}->b{outs}", x, a, b))
    got = jnp.einsum(spec, x, merged["layers"][key][0])
    np.testing.assert_allclose(np.asarray(got), np.asarray(fly), rtol=1e-5, atol=1e-5)
  # Sampling with the merged weights: its log-probs equal the LoRA loss path's.
  sampler = Sampler(CONFIG, eos_ids=(), pad_id=0)
  prompt = [5, 9, 11, 3]
  c = sampler.generate(merged, [prompt], SamplingParams(greedy=True, max_new_tokens=6))[0]
  tokens = jnp.asarray([prompt + c.tokens.tolist()])
  lp = opt.token_logprobs(lora_lib.merge(base, ad, LORA), CONFIG, tokens)[0, len(prompt):]
  np.testing.assert_allclose(c.logprobs, np.asarray(lp), atol=1e-5)


@pytest.mark.parametrize("per_array", [False, True])   # optim.update_per_array too
def test_lora_sft_reduces_the_loss_and_leaves_the_base_alone(learnable_base, per_array):
  base = learnable_base
  mesh = single_device_mesh()
  batch = _batch(np.random.RandomState(3), 8, 16, prompt=1)
  batch["tokens"] = ((np.arange(8)[:, None] + 5 * np.arange(16)[None]) % V).astype(np.int32)
  cfg = _cfg(learning_rate=3e-2, schedule="constant", logprob_chunk=8,
             update_per_array=per_array)
  lora = lora_lib.LoraConfig(rank=8, alpha=16.0, targets=("*",))
  state = opt.create_train_state(CONFIG, cfg, lora_lib.init_lora(CONFIG, lora), mesh,
                                 lora=lora)
  step = opt.make_train_step(CONFIG, cfg, mesh, lora=lora)
  before = jax.tree.map(np.asarray, base)
  state, first = step(state, batch, base)
  for _ in range(29):
    state, m = step(state, batch, base)
  assert float(m["loss"]) < 0.3 * float(first["loss"]), (float(first["loss"]), float(m["loss"]))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, np.asarray(b))


def test_lora_dpo_reference_is_the_base(learnable_base):
  """The DPO reference is the base params without the adapter: at B = 0 the margin is
  0, and training the adapter raises it."""
  base = learnable_base
  mesh = single_device_mesh()
  batch = _batch(np.random.RandomState(4), 8, 10, prompt=4)
  batch["tokens"][1::2, :4] = batch["tokens"][0::2, :4]
  batch["ref_logprobs"] = np.asarray(opt.make_logprob_fn(CONFIG, mesh, chunk=0)(
      base, batch["tokens"], batch["input_mask"]))
  cfg = _cfg(loss="dpo", learning_rate=2e-2, schedule="constant")
  state = opt.create_train_state(CONFIG, cfg, lora_lib.init_lora(CONFIG, LORA), mesh, lora=LORA)
  step = opt.make_train_step(CONFIG, cfg, mesh, lora=LORA)
  state, first = step(state, batch, base)
  assert abs(float(first["margin"])) < 1e-5
  for _ in range(9):
    state, m = step(state, batch, base)
  assert float(m["margin"]) > 0.5, m


def test_sharded_lora_step_matches_single_device(base):
  """GRPO (KL to the base as reference) with LoRA on data=8 and fsdp=2 x tensor=4, two
  micro-batches, equals one device. Adam eps=1, lr=1 as in test_optimize."""
  rs = np.random.RandomState(5)
  batch = _batch(rs, 16, 12)
  batch["rewards"] = rs.rand(16).astype(np.float32)
  batch["group_ids"] = np.arange(16) // 4
  ad = jax.tree.map(np.asarray, _random_adapters(seed=4))
  host_base = jax.tree.map(np.asarray, base)
  batch["ref_logprobs"] = np.asarray(opt.make_logprob_fn(CONFIG, single_device_mesh(), 0)(
      host_base, batch["tokens"], batch["input_mask"]))
  results = []
  for shape, accum in (({}, 1), ({"data": 8}, 2), ({"fsdp": 2, "tensor": 4}, 2)):
    mesh = make_mesh(shape) if shape else single_device_mesh()
    cfg = _cfg(loss="grpo", learning_rate=1.0, eps=1.0, grad_accum_steps=accum,
               logprob_chunk=5)
    state = opt.create_train_state(CONFIG, cfg, ad, mesh, lora=LORA)
    state, metrics = opt.make_train_step(CONFIG, cfg, mesh, lora=LORA)(state, batch, host_base)
    if shape == {"fsdp": 2, "tensor": 4}:
      a = state.params["layers"]["down"]["a"]       # [L, F, r]: F on tensor like W
      assert a.sharding.spec[1] == "tensor"
      assert state.opt_state[-1][0].mu["layers"]["down"]["a"].sharding == a.sharding
    results.append((jax.tree.map(np.asarray, state.params),
                    {k: float(v) for k, v in metrics.items()}))
  ref_params, ref_metrics = results[0]
  assert ref_metrics["grad_norm"] > 0 and ref_metrics["kl"] > 0
  for got_params, got_metrics in results[1:]:
    for k in ref_metrics:
      assert got_metrics[k] == pytest.approx(ref_metrics[k], abs=1e-5, rel=1e-5), k
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(got_params)):
      np.testing.assert_allclose(b, a, atol=1e-5)


@pytest.mark.parametrize("kw, match", [
    (dict(rank=-1), "lora.rank"),
    (dict(rank=4, targets="q,attn"), "'attn' matches none"),
    (dict(rank=4, dropout=0.1), "lora.dropout"),
    (dict(rank=4, alpha=0.0), "lora.alpha"),
])
def test_bad_lora_config_is_one_line(kw, match):
  c = lora_lib.default_lora_config()
  c.update(kw)
  with pytest.raises(UserError, match=match):
    lora_lib.from_config(c)
  assert lora_lib.from_config(lora_lib.default_lora_config()) is None


def test_loop_trains_adapters_and_checkpoints_only_them(tmp_path):
  """configs/tiny.py with LoRA on the 8 fake devices: one SFT iteration, the checkpoint
  holds adapters (a fraction of the model's bytes), and the workdir loads as the base
  with the adapters merged (frozen weights unchanged, targeted ones moved)."""
  import os
  from selfimprove_jax import loop, weights
  from selfimprove_jax.config import load_config
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = load_config(os.path.join(root, "configs", "tiny.py"), [
      "lora.rank=4", "lora.alpha=8.0", "lora.targets=q,v", "loop.iterations=1",
      "optim.learning_rate=1e-2", "log.plot=false"])
  state = loop.run(config, str(tmp_path), log=lambda *_: None)
  assert state["iteration"] == 1
  ckpt = os.path.join(tmp_path, "checkpoints", "1")
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ckpt) for f in fs)
  base = weights.load("tiny")
  assert size < 0.1 * 4 * count_params(base.params), size
  tuned = weights.load(f"{tmp_path}@1")
  np.testing.assert_array_equal(np.asarray(tuned.params["embedding"]),
                                np.asarray(base.params["embedding"]))
  np.testing.assert_array_equal(np.asarray(tuned.params["layers"]["k"]),
                                np.asarray(base.params["layers"]["k"]))
  assert not np.allclose(np.asarray(tuned.params["layers"]["q"]),
                         np.asarray(base.params["layers"]["q"]))
