"""Model shapes for every preset, scan/unrolled equivalence, cache decode, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from selfimprove_jax import model as M
from selfimprove_jax.runtime import sharding

EXPECTED_PARAMS = {
    "tiny": 3_219_776,
    "smollm2_135m": 134_515_008,
    "smollm2_360m": 361_821_120,
    "llama3_2_1b": 1_235_814_400,
    "qwen2_5_0_5b": 494_032_768,
    "gemma3_270m": 268_098_176,   # Gemma 3 270M as published (the GGUF's count too)
    "gemma3_1b": 999_885_952,
    "gemma3_tiny": 3_257_248,
    # Qwen3 and Mistral: checked against their published config.json files in
    # tests/test_qwen3_mistral.py
    "qwen3_0_6b": 596_049_920,
    "qwen3_1_7b": 1_720_574_976,
    "qwen3_4b": 4_022_468_096,
    "mistral_7b_v0_3": 7_248_023_552,
}


@pytest.mark.parametrize("name", sorted(M.PRESETS))
def test_preset_param_count(name):
  config = M.get_preset(name)
  assert M.count_params(M.abstract_params(config)) == EXPECTED_PARAMS[name]
  assert config.num_params == EXPECTED_PARAMS[name]


def test_every_param_has_logical_axes():
  axes = M.logical_axes(M.get_preset("qwen2_5_0_5b"))
  shapes = M.abstract_params(M.get_preset("qwen2_5_0_5b"))
  for names, box in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple)),
                        jax.tree.leaves(shapes, is_leaf=lambda x: hasattr(x, "names"))):
    assert len(names) == box.value.ndim and all(isinstance(n, str) for n in names)


def _tokens(config, B=2, T=12, seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, config.vocab_size)


def test_scan_and_unrolled_agree():
  config = M.get_preset("tiny")
  params = M.init_params(config, seed=1)
  tokens = _tokens(config)
  a = M.forward(params, config, tokens)
  b = M.forward(params, config.replace(scan_layers=False), tokens)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_cached_decode_matches_full_forward():
  config = M.get_preset("tiny").replace(qkv_bias=True)
  params = M.init_params(config, seed=2)
  tokens = _tokens(config, B=2, T=10)
  full = M.forward(params, config, tokens)
  model = M.Transformer(config)
  cache = M.init_cache(config, 2, 16)
  pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
  slots = jnp.arange(16)
  # prefill 6 tokens, then decode 4 one at a time
  mask = (slots[None, :] <= pos[:, :6, None]) 
  logits, cache = model.apply({"params": params}, tokens[:, :6], pos[:, :6], mask, cache, 0)
  outs = [logits]
  for t in range(6, 10):
    mask = (slots[None, None, :] <= t) & jnp.ones((2, 1, 1), bool)
    logits, cache = model.apply({"params": params}, tokens[:, t:t + 1], pos[:, t:t + 1], mask,
                                cache, t)
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


def test_left_and_right_padding_do_not_change_real_logits():
  config = M.get_preset("tiny")
  params = M.init_params(config, seed=3)
  tokens = _tokens(config, B=1, T=8)
  ref = M.forward(params, config, tokens)
  pad = jnp.zeros((1, 3), tokens.dtype)
  left = M.forward(params, config, jnp.concatenate([pad, tokens], 1),
                   jnp.concatenate([jnp.zeros((1, 3)), jnp.ones((1, 8))], 1))
  np.testing.assert_allclose(left[:, 3:], ref, atol=1e-5)
  right = M.forward(params, config, jnp.concatenate([tokens, pad], 1),
                    jnp.concatenate([jnp.ones((1, 8)), jnp.zeros((1, 3))], 1))
  np.testing.assert_allclose(right[:, :8], ref, atol=1e-5)


def test_rope_llama3_scaling_changes_low_frequencies_only():
  base = M.get_preset("llama3_2_1b").replace(rope_scaling=None)
  scaled = M.get_preset("llama3_2_1b")
  from selfimprove_jax.model.llama import rope_inv_freq
  a, b = rope_inv_freq(base), rope_inv_freq(scaled)
  assert np.allclose(a[:8], b[:8])             # high frequencies untouched
  np.testing.assert_allclose(b[-1], a[-1] / 32.0, rtol=1e-6)  # lowest scaled by factor


@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"fsdp": 2, "tensor": 4},
                                        {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_forward_equals_single_device(mesh_shape):
  config = M.get_preset("tiny")
  tokens = _tokens(config, B=8, T=12)
  ref = M.forward(M.init_params(config, seed=4), config, tokens)

  mesh = sharding.make_mesh(mesh_shape)
  params = M.init_params(config, seed=4, mesh=mesh)
  assert len(params["embedding"].sharding.device_set) == 8
  fwd = jax.jit(lambda p, t: M.forward(p, config, t),
                in_shardings=(M.param_shardings(config, mesh),
                              sharding.batch_sharding(mesh, 2, 8)))
  out = fwd(params, tokens)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_param_shardings_follow_rule_table():
  config = M.get_preset("tiny")  # N=4 heads, K=2 kv heads, F=128, D=64
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  params = M.init_params(config, seed=0, mesh=mesh)
  assert params["embedding"].sharding.spec == P("tensor", "fsdp")      # vocab, embed
  assert params["layers"]["q"].sharding.spec == P(None, "fsdp", "tensor", None)
  assert params["layers"]["down"].sharding.spec == P(None, "tensor", "fsdp")
  # 2 kv heads do not divide tensor=4: replicated on that axis, not an error.
  assert params["layers"]["k"].sharding.spec == P(None, "fsdp", None, None)
  assert params["final_norm"].sharding.spec == P(None)
  # data-parallel mesh: everything replicated
  mesh = sharding.make_mesh({"data": -1})
  assert mesh.shape["data"] == 8
  params = M.init_params(config, seed=0, mesh=mesh)
  assert params["layers"]["q"].sharding.spec == P(None, None, None, None)


def test_make_mesh_errors():
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.make_mesh({"data": 2, "tensor": 3})
  with pytest.raises(ValueError, match="unknown mesh axes"):
    sharding.make_mesh({"model": 8})
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh({"data": -1, "fsdp": -1})


def _find_eqns(jaxpr, name):
  """Equations of primitive `name` in a jaxpr and every jaxpr nested in its params."""
  found = []
  for e in jaxpr.eqns:
    if e.primitive.name == name:
      found.append(e)
    for v in e.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          found += _find_eqns(sub, name)
  return found


def _head_grads(fn, hidden, w):
  return jax.grad(lambda h, w: jnp.sum(jnp.sin(fn(h, w))), argnums=(0, 1))(hidden, w)


def test_output_head_gradient():
  """fp32: exactly the plain gradient. bf16: the backward matmuls take a bf16
  cotangent (no fp32 matmul against the vocabulary) and stay within bf16 rounding of
  the fp32 gradient; the forward logits are the fp32 product of the bf16 inputs."""
  from selfimprove_jax.model.llama import output_head
  plain = lambda h, w: jnp.einsum("btd,vd->btv", h, w, preferred_element_type=jnp.float32)
  k1, k2 = jax.random.split(jax.random.key(0))
  hidden = jax.random.normal(k1, (2, 5, 16))
  w = jax.random.normal(k2, (40, 16)) * 0.3
  for ours, ref in zip(_head_grads(output_head, hidden, w), _head_grads(plain, hidden, w)):
    np.testing.assert_array_equal(ours, ref)

  h16, w16 = hidden.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  np.testing.assert_array_equal(output_head(h16, w16), plain(h16, w16))
  jaxpr = jax.make_jaxpr(lambda h, w: _head_grads(output_head, h, w))(h16, w16)
  dots = _find_eqns(jaxpr.jaxpr, "dot_general")
  backward = [e for e in dots if any(v.aval.shape[-1] == 40 for v in e.invars)]  # cotangent
  assert len(backward) == 2, backward
  assert all(v.aval.dtype == jnp.bfloat16 for e in backward for v in e.invars)
  ref = _head_grads(plain, h16.astype(jnp.float32), w16.astype(jnp.float32))
  for ours, r in zip(_head_grads(output_head, h16, w16), ref):
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ours, np.float32), r, rtol=0.05, atol=0.05)
