"""The shared-prefix prefill (`decode.prefill_prompts(shared=P)`): prompts' common first
tokens run once, then each prompt's own; the cache and next-token logits equal the
whole-prompt prefill's up to float rounding, and sampling gives the same tokens on both
batching paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove_jax.model import get_preset, init_params
from selfimprove_jax.sampling import Sampler, SamplingParams
from selfimprove_jax.sampling import decode as decode_lib


@pytest.fixture(scope="module")
def tiny():
  config = get_preset("tiny")
  params = init_params(config, seed=3)
  params = dict(params, embedding=params["embedding"] * 4.0)   # logits far from uniform
  return config, params


def _prompts(seed=0, prefix=21, own=(1, 3, 9, 14, 2)):
  rng = np.random.default_rng(seed)
  head = rng.integers(5, 200, prefix).tolist()
  return [head + rng.integers(5, 200, n).tolist() for n in own]


def test_shared_prefix_lengths():
  rows = _prompts()
  assert decode_lib.shared_prefix(rows, 16) == 16      # 21 shared, rounded down to 16
  assert decode_lib.shared_prefix(rows, 8) == 16
  assert decode_lib.shared_prefix(rows, 4) == 20
  # every row keeps one token of its own: a prompt that is all prefix caps it
  assert decode_lib.shared_prefix([rows[0][:21], rows[1]], 4) == 20
  assert decode_lib.shared_prefix([[1] * 40, [1] * 20 + [2] * 20], 16) == 16
  assert decode_lib.shared_prefix([[1] * 40, [2] * 40], 16) == 0
  assert decode_lib.shared_prefix([[1] * 10, [1] * 10], 16) == 0


def test_shared_prefill_equals_whole_prompts(tiny):
  config, params = tiny
  rows = _prompts()
  Tb = 48
  tokens = np.zeros((len(rows), Tb), np.int32)
  mask = np.zeros((len(rows), Tb), bool)
  for i, r in enumerate(rows):
    tokens[i, Tb - len(r):], mask[i, Tb - len(r):] = r, True
  run = jax.jit(decode_lib.prefill_prompts, static_argnames=("config", "shared"))
  c0, l0, n0 = run(params, tokens, mask, config=config, shared=0)
  c1, l1, n1 = run(params, tokens, mask, config=config, shared=16)
  np.testing.assert_array_equal(n0, n1)
  np.testing.assert_allclose(l1, l0, rtol=1e-4, atol=1e-4)
  real = jnp.asarray(mask)[None, :, :, None, None]     # pad slots hold anything
  for key in ("k", "v"):
    np.testing.assert_allclose(jnp.where(real, c1[key], 0), jnp.where(real, c0[key], 0),
                               rtol=1e-4, atol=1e-5)
  assert not np.allclose(l0[0], l0[1])                 # rows differ: a real check


@pytest.mark.parametrize("batching", ["bucketed", "continuous"])
def test_sampling_same_tokens_with_and_without_sharing(tiny, batching):
  config, params = tiny
  prompts = _prompts(1, prefix=40, own=(2, 5, 1, 7, 3, 4, 6, 2, 9, 1))
  greedy = SamplingParams(greedy=True, max_new_tokens=6)
  sampled = SamplingParams(temperature=1.0, max_new_tokens=6)
  out = {}
  for share in (False, True):
    s = Sampler(config, eos_ids=(), max_batch=32, batching=batching, share_prefix=share)
    out[share] = [[list(map(int, c.tokens)) for c in s.generate(params, prompts, sp, n=2, seed=5)]
                  for sp in (greedy, sampled)]
    assert (s.shared_tokens > 0) == share
  assert out[True] == out[False]


def test_sliding_window_models_prefill_whole_prompts():
  config = get_preset("tiny").replace(sliding_window=8)
  assert not Sampler(config, eos_ids=(), max_batch=4, batching="bucketed").share_prefix


def test_shared_prefill_on_an_8_device_mesh(tiny):
  """The shared tokens run for one row, replicated; the rows stay sharded over the
  mesh and sample what one device samples."""
  from selfimprove_jax.model import param_shardings
  from selfimprove_jax.runtime import sharding as sharding_lib
  config, params = tiny
  assert len(jax.devices()) == 8
  mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = jax.device_put(params, param_shardings(config, mesh))
  prompts = _prompts(2, prefix=33, own=(1, 4, 2, 6, 3, 1, 5, 2, 7, 1, 2, 3, 4, 8, 1, 2))
  sp = SamplingParams(temperature=1.0, max_new_tokens=5)
  one = Sampler(config, eos_ids=(), max_batch=32, share_prefix=False).generate(
      params, prompts, sp, n=2, seed=7)
  for batching in ("bucketed", "continuous"):   # continuous: 2 prompts per admission
    s = Sampler(config, mesh=mesh, eos_ids=(), max_batch=32, batching=batching)
    many = s.generate(sharded, prompts, sp, n=2, seed=7)
    assert s.shared_tokens > 0
    for x, y in zip(one, many):
      np.testing.assert_array_equal(x.tokens, y.tokens)
      np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-4)
