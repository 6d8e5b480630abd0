"""Sampler tests: greedy parity with transformers, log-probs against a teacher-forced
forward, first-token distributions (chi-square), shared prefill, padding invariance,
bounded compilations, sharding on 8 fake devices, stops, and the CLI entry point."""

import contextlib
import functools
import io
import json

import jax
import numpy as np
import pytest
from scipy import special, stats

from selfimprove_jax.errors import UserError
from selfimprove_jax.model import forward, get_preset, init_params, param_shardings
from selfimprove_jax.runtime import sharding as sharding_lib
from selfimprove_jax.sampling import Sampler, SamplingParams, bucket_length, generate_text

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain gravity to a child in one sentence.",
    "List three prime numbers.",
    "hi",
]


def _peaked(params, scale=10.0):
  """Random params with a larger embedding, so the (tied) logits are far from
  uniform and greedy/sampled outputs are not trivial."""
  params = dict(params)
  params["embedding"] = params["embedding"] * scale
  return params


@pytest.fixture(scope="module")
def tiny():
  config = get_preset("tiny")
  return config, _peaked(init_params(config, seed=1), scale=4.0)


@pytest.fixture(scope="module")
def sampler(tiny):
  """One sampler for the tiny-model tests, so they share its compiled functions."""
  return Sampler(tiny[0], eos_ids=(), max_batch=8)


@pytest.fixture(scope="module")
def small_vocab():
  config = get_preset("tiny").replace(vocab_size=64)
  return config, _peaked(init_params(config, seed=2), scale=3.0)


GREEDY = SamplingParams(greedy=True, max_new_tokens=8)
SAMPLED = SamplingParams(temperature=1.2, top_k=20, top_p=0.9, max_new_tokens=8)
_FORWARD_LEN = 64  # teacher-forced sequences are right-padded to this: one compilation


@functools.partial(jax.jit, static_argnums=1)
def _forward(params, config, tokens, mask):
  return forward(params, config, tokens, mask)


def _teacher_forced(params, config, prompt, tokens):
  """(logits [n,V], log-prob of each generated token) from one full forward over
  prompt + tokens, the reference for the sampler's incremental decode."""
  seq = np.concatenate([prompt, tokens]).astype(np.int32)
  L = max(_FORWARD_LEN, len(seq))
  padded, mask = np.zeros((1, L), np.int32), np.zeros((1, L), bool)
  padded[0, :len(seq)], mask[0, :len(seq)] = seq, True
  logits = np.asarray(_forward(params, config, padded, mask), np.float64)[0, :len(seq)]
  logp = special.log_softmax(logits, axis=-1)
  P = len(prompt)
  return logits[P - 1:-1], logp[np.arange(P - 1, len(seq) - 1), tokens]


def _truncated_logprobs(logits, temperature, top_k, top_p):
  """Reference sampling distribution (float64): logits/T, top-k, then top-p."""
  z = np.asarray(logits, np.float64) / temperature
  if top_k:
    kth = np.sort(z)[::-1][top_k - 1]
    z = np.where(z >= kth, z, -np.inf)
  if top_p < 1.0:
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]
    keep = np.zeros_like(p, bool)
    keep[order[before < top_p]] = True
    z = np.where(keep, z, -np.inf)
  m = z[np.isfinite(z)].max()
  return z - (m + np.log(np.exp(z[np.isfinite(z)] - m).sum()))


# ----------------------------------------------------------------------------- outside reference


def test_greedy_matches_transformers_smollm2(smollm2, smollm2_torch):
  """5 chat prompts, 32 greedy tokens, fp32: identical to transformers' generate."""
  import torch
  loaded, ref = smollm2, smollm2_torch
  sp = SamplingParams(greedy=True, max_new_tokens=32)
  ours = generate_text(loaded, CHAT_PROMPTS, sp)  # one batch: prompts padded together
  from selfimprove_jax.sampling import encode_prompts
  ids = encode_prompts(loaded.tokenizer, CHAT_PROMPTS)
  for i, (prompt, c) in enumerate(zip(ids, ours)):
    with torch.no_grad():
      out = ref.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                          dtype=torch.long),
                         do_sample=False, max_new_tokens=32, eos_token_id=2, pad_token_id=2)
    theirs = out[0, len(prompt):].tolist()
    assert c.tokens.tolist() == theirs, (i, c.text)
    assert c.finish_reason == ("eos" if theirs[-1] == 2 else "length")
  # Returned log-probs on the real model equal a teacher-forced forward.
  c = ours[0]
  _, ref_lp = _teacher_forced(loaded.params, loaded.config, np.asarray(ids[0]), c.tokens)
  np.testing.assert_allclose(c.logprobs, ref_lp, atol=1e-4)
  assert all(c.text for c in ours)


# ----------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("sp", [SAMPLED, SamplingParams(temperature=0.8, max_new_tokens=8)],
                         ids=["topk_topp", "temperature"])
def test_logprobs_match_teacher_forced_forward(tiny, sampler, sp):
  config, params = tiny
  prompts = [[1, 17, 300, 5000, 42], list(range(100, 140))]
  out = sampler.generate(params, prompts, sp, n=2, seed=3)
  assert len(out) == 4
  for c in out:
    logits, ref_lp = _teacher_forced(params, config, np.asarray(prompts[c.prompt_index]),
                                     c.tokens)
    np.testing.assert_allclose(c.logprobs, ref_lp, atol=1e-4)
    ref_sample = [_truncated_logprobs(l, sp.temperature, sp.top_k, sp.top_p)[t]
                  for l, t in zip(logits, c.tokens)]
    np.testing.assert_allclose(c.sample_logprobs, ref_sample, atol=1e-4)
    assert c.num_tokens == 8 and c.finish_reason == "length"


# ----------------------------------------------------------------------------- distribution


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 8, 1.0),
                                                     (1.5, 0, 0.8)])
def test_first_token_distribution_chi_square(small_vocab, temperature, top_k, top_p):
  config, params = small_vocab
  prompt = [3, 14, 15, 9, 26]
  draws = 20_000
  sp = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=1)
  out = Sampler(config, eos_ids=(), max_batch=draws).generate(params, [prompt], sp, n=draws,
                                                               seed=7)
  counts = np.bincount([int(c.tokens[0]) for c in out], minlength=config.vocab_size)

  logits = np.asarray(forward(params, config, np.asarray([prompt], np.int32)),
                      np.float64)[0, -1]  # the first token's distribution
  expected = np.exp(_truncated_logprobs(logits, temperature, top_k, top_p)) * draws
  support = expected > 0
  assert counts[~support].sum() == 0, "sampled a token the truncation removed"
  assert support.sum() > 3  # the setting leaves a real choice
  # Merge bins expected below 5 so the chi-square approximation holds.
  big = expected >= 5
  obs = np.append(counts[support & big], counts[support & ~big].sum())
  exp = np.append(expected[support & big], expected[support & ~big].sum())
  keep = exp > 0
  p = stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue
  assert p > 0.001, (p, obs, exp)


# ----------------------------------------------------------------------------- shared prefill


def test_shared_prefill_equals_separate_runs(tiny, sampler):
  config, params = tiny
  prompt = [1, 200, 3000, 45, 6]
  grouped = sampler.generate(params, [prompt], GREEDY, n=4)
  prefills = [shapes for name, shapes in sampler.traces if name == "prefill"]
  assert prefills[-1][0] == (1, bucket_length(len(prompt))), "one prompt row prefilled"
  single = sampler.generate(params, [prompt], GREEDY, n=1)[0]
  for c in grouped:
    np.testing.assert_array_equal(c.tokens, single.tokens)
    np.testing.assert_allclose(c.logprobs, single.logprobs, atol=1e-6)

  sampled = sampler.generate(params, [prompt], SAMPLED, n=4)
  assert len({tuple(c.tokens) for c in sampled}) > 1, "the 4 samples should differ"
  for c in sampled:
    _, ref_lp = _teacher_forced(params, config, np.asarray(prompt), c.tokens)
    np.testing.assert_allclose(c.logprobs, ref_lp, atol=1e-4)


# ----------------------------------------------------------------------------- padding


def test_padding_invariance(tiny, sampler):
  config, params = tiny
  prompts = [[5], list(range(1000, 1020)), list(range(7, 47)), [9, 99, 999]]
  together = sampler.generate(params, prompts, GREEDY)   # all padded to 64
  for i, p in enumerate(prompts):
    alone = sampler.generate(params, [p], GREEDY)[0]     # padded to 32 or 64
    np.testing.assert_array_equal(together[i].tokens, alone.tokens)
    np.testing.assert_allclose(together[i].logprobs, alone.logprobs, atol=1e-5)
  assert len({tuple(c.tokens) for c in together}) > 1


# ----------------------------------------------------------------------------- compilations


def test_compilations_bounded_across_batches(tiny):
  config, params = tiny
  sampler = Sampler(config, eos_ids=(), max_batch=8)
  rng = np.random.default_rng(0)
  for i in range(5):  # 5 batches of 4 prompts, lengths 5..30 (one bucket), new T and top_p
    prompts = [rng.integers(3, 1000, size=rng.integers(5, 31)).tolist() for _ in range(4)]
    sp = SamplingParams(temperature=0.5 + 0.2 * i, top_k=5, top_p=0.5 + 0.1 * i,
                        max_new_tokens=4)
    sampler.generate(params, prompts, sp, n=2, seed=i)
  assert sampler.num_compilations == 2  # one prefill + one decode
  # 12 prompts x 2 rows = 24 rows > max_batch: three chunks of the same shapes.
  prompts = [rng.integers(3, 1000, size=10).tolist() for _ in range(12)]
  out = sampler.generate(params, prompts, sp, n=2, seed=9)
  assert sampler.num_compilations == 2 and len(out) == 24
  assert [(c.prompt_index, c.sample_index) for c in out] == [(p, s) for p in range(12)
                                                              for s in range(2)]


def test_samples_do_not_depend_on_chunking(tiny, sampler):
  config, params = tiny
  prompts = [[1, 2, 3], list(range(50, 90)), [7, 8]]
  a = Sampler(config, eos_ids=(), max_batch=2).generate(params, prompts, SAMPLED, n=3, seed=11)
  b = sampler.generate(params, prompts, SAMPLED, n=3, seed=11)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.tokens, y.tokens)


# ----------------------------------------------------------------------------- sharding


def test_sharded_8_devices_matches_single_device(tiny, sampler):
  config, params = tiny
  assert len(jax.devices()) == 8
  mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = jax.device_put(params, param_shardings(config, mesh))
  prompts = [[1, 2, 3, 4], list(range(300, 320)), [77], [5, 6]]
  one = sampler.generate(params, prompts, SAMPLED, n=2, seed=5)
  many = Sampler(config, mesh=mesh, eos_ids=(), max_batch=8).generate(sharded, prompts,
                                                                      SAMPLED, n=2, seed=5)
  assert many and len(many) == len(one) == 8
  # The continuous schedule on the same mesh: 8 rows over 4 slots, so slots refill.
  slots = Sampler(config, mesh=mesh, eos_ids=(), max_batch=4, batching="continuous").generate(
      sharded, prompts, SAMPLED, n=2, seed=5)
  for x, y, z in zip(one, many, slots):
    np.testing.assert_array_equal(x.tokens, y.tokens)
    np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-5)
    np.testing.assert_array_equal(x.tokens, z.tokens)
    np.testing.assert_allclose(x.logprobs, z.logprobs, atol=1e-5)


# ----------------------------------------------------------------------------- stops


def test_eos_stop_sequences_and_length(tiny, sampler):
  config, params = tiny
  prompt = [1, 400, 4000, 40, 4]
  free = sampler.generate(params, [prompt], GREEDY)[0].tokens.tolist()
  assert len(free) == 8

  eos = free[3]
  c = Sampler(config, eos_ids=(eos,), max_batch=8).generate(params, [prompt], GREEDY)[0]
  first = free.index(eos)
  assert c.finish_reason == "eos" and c.tokens.tolist() == free[:first + 1]
  assert c.num_stop_tokens == 1 and c.content_tokens.tolist() == free[:first]

  stop = tuple(free[4:6])
  at = next(i for i in range(1, 8) if tuple(free[i - 1:i + 1]) == stop)
  c = sampler.generate(params, [prompt], SamplingParams(
      greedy=True, max_new_tokens=8, stop_sequences=(stop, (49000, 49001, 49002))))[0]
  assert c.finish_reason == "stop" and c.tokens.tolist() == free[:at + 1]
  assert c.num_stop_tokens == 2 and len(c.logprobs) == c.num_tokens == at + 1


def test_sampling_params_config_and_errors():
  import ml_collections
  cfg = ml_collections.ConfigDict({"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 16,
                                   "stop_sequences": ["\n\n"]})
  sp = SamplingParams.from_config(cfg)
  assert sp.top_p == 0.9 and sp.stop_sequences == ("\n\n",) and not sp.is_greedy
  assert SamplingParams(temperature=0.0).is_greedy
  for bad in ({"top_p": 0.0}, {"temperature": -1.0}, {"max_new_tokens": 0}, {"top_k": -2}):
    with pytest.raises(UserError):
      SamplingParams(**bad)
  with pytest.raises(UserError):
    SamplingParams.from_config({"temprature": 1.0})
  config = get_preset("tiny")
  with pytest.raises(UserError):
    Sampler(config).generate({}, [[]], SamplingParams())
  with pytest.raises(UserError):
    Sampler(config).generate({}, [[1]], SamplingParams(stop_sequences=("x",)))


# ----------------------------------------------------------------------------- CLI


def test_cli_generate_json_and_prompts_file(tmp_path):
  from selfimprove_jax.cli import main
  pf = tmp_path / "prompts.jsonl"
  pf.write_text(json.dumps({"prompt": "one"}) + "\n" + json.dumps({"prompt": "two"}) + "\n")
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    rc = main(["generate", "--model", "tiny", "--prompts_file", str(pf), "--prompt", "three",
               "--n", "2", "--max_new_tokens", "3", "--temperature", "0.8", "--json"])
  assert rc == 0
  rows = [json.loads(l) for l in buf.getvalue().splitlines() if l.strip()]
  assert len(rows) == 6
  assert [r["prompt_index"] for r in rows] == [0, 0, 1, 1, 2, 2]
  for r in rows:
    assert set(r) >= {"prompt_index", "text", "num_tokens", "sum_logprob", "finish_reason"}
    assert 1 <= r["num_tokens"] <= 3 and r["sum_logprob"] <= 0

  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "no prompt key"}\n')
  assert main(["generate", "--model", "tiny", "--prompts_file", str(bad)]) == 2


# ----------------------------------------------------------------------------- continuous batching

# 9 prompts of 1 to 45 tokens (buckets 32 and 48), each with its own token budget.
_MIXED = [[5], list(range(1000, 1020)), list(range(7, 47)), [9, 99, 999], list(range(300, 345)),
          [1, 2], list(range(60, 95)), [44] * 12, list(range(2000, 2003))]
_BUDGETS = [8, 3, 8, 6, 8, 1, 7, 8, 5]


@pytest.fixture(scope="module")
def schedules(tiny, sampler):
  """(bucketed, continuous) samplers with 4 slots and an EOS id that ends some of
  _MIXED's greedy rows early, and a stop sequence that ends others."""
  config, params = tiny
  free = sampler.generate(params, _MIXED, GREEDY)
  eos = (int(free[2].tokens[3]),)
  stop = tuple(int(t) for t in free[6].tokens[2:4])
  make = lambda batching: Sampler(config, eos_ids=eos, max_batch=4, batching=batching)
  return make("bucketed"), make("continuous"), stop


def _both(schedules, params, sp, n=2, seed=4):
  """Completions of _MIXED from both schedules: 18 rows over 4 slots, so the
  continuous path refills its slots many times."""
  bucketed, continuous, _ = schedules
  return [s.generate(params, _MIXED, sp, n=n, seed=seed, max_new_per_prompt=_BUDGETS)
          for s in (bucketed, continuous)]


def test_continuous_greedy_equals_bucketed(tiny, schedules):
  """Greedy on mixed prompt lengths with EOS, a stop sequence and per-prompt budgets:
  the same tokens, finish reasons and log-probs from both schedules."""
  config, params = tiny
  sp = SamplingParams(greedy=True, max_new_tokens=8, stop_sequences=(schedules[2],))
  bucketed, continuous = _both(schedules, params, sp)
  assert any(name == "run" for name, _ in schedules[1].traces), "the continuous loop ran"
  assert {c.finish_reason for c in bucketed} == {"eos", "stop", "length"}
  assert len({c.num_tokens for c in bucketed}) >= 4
  for x, y in zip(bucketed, continuous):
    assert (x.prompt_index, x.sample_index) == (y.prompt_index, y.sample_index)
    np.testing.assert_array_equal(x.tokens, y.tokens)
    assert (x.finish_reason, x.num_stop_tokens) == (y.finish_reason, y.num_stop_tokens)
    assert x.num_tokens <= _BUDGETS[x.prompt_index]
    np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-5)


def test_continuous_sampled_logprobs_match_model(tiny, schedules):
  """Sampled rows (top-k, top-p): log-probs of the chosen tokens equal a teacher-
  forced forward, and the same seed gives the bucketed path's samples."""
  config, params = tiny
  bucketed, continuous = _both(schedules, params, SAMPLED, seed=8)
  assert len({tuple(c.tokens) for c in continuous}) > 9
  for x, c in zip(bucketed, continuous):
    np.testing.assert_array_equal(x.tokens, c.tokens)
    logits, ref_lp = _teacher_forced(params, config, np.asarray(_MIXED[c.prompt_index]),
                                     c.tokens)
    np.testing.assert_allclose(c.logprobs, ref_lp, atol=1e-4)
    ref_sample = [_truncated_logprobs(l, SAMPLED.temperature, SAMPLED.top_k, SAMPLED.top_p)[t]
                  for l, t in zip(logits, c.tokens)]
    np.testing.assert_allclose(c.sample_logprobs, ref_sample, atol=1e-4)


def test_continuous_compilations_bounded(tiny):
  """Varied prompt lengths, budgets, temperatures and request sizes: one loop, one
  initial state and one admission per prompt bucket, compiled once each."""
  config, params = tiny
  sampler = Sampler(config, eos_ids=(11,), max_batch=8, batching="continuous")
  rng = np.random.default_rng(1)
  for i in range(4):
    prompts = [rng.integers(3, 1000, size=rng.integers(33, 49)).tolist()  # bucket 48
               for _ in range(9 + 2 * i)]                                  # 18..30 rows: N 32
    prompts[0] = prompts[0][:5]                                            # bucket 32
    budgets = rng.integers(1, 7, size=len(prompts)).tolist()
    sp = SamplingParams(temperature=0.6 + 0.2 * i, top_k=7, max_new_tokens=6)
    out = sampler.generate(params, prompts, sp, n=2, seed=i, max_new_per_prompt=budgets)
    assert [c.num_tokens <= budgets[c.prompt_index] for c in out] == [True] * len(out)
  names = sorted(name for name, _ in sampler.traces)
  assert names == ["admit", "admit", "init_slots", "run"], names


def test_batching_auto_choice(tiny):
  """auto: continuous only when rows outnumber slots and rows can end early."""
  config, params = tiny
  prompts = [[1, 2, 3], [4, 5], [6]]
  chose = lambda eos, n, limits=None: {name for name, _ in _traced(
      Sampler(config, eos_ids=eos, max_batch=4), params, prompts, n, limits)}
  assert "run" in chose((2,), n=2)                    # 6 rows, 4 slots, EOS
  assert "decode" in chose((), n=2)                   # fixed length: bucketed
  assert "run" in chose((), n=2, limits=[2, 4, 3])    # budgets make it ragged
  assert "decode" in chose((2,), n=1)                 # 3 rows fit the slots
  with pytest.raises(UserError):
    Sampler(config, batching="paged")
  with pytest.raises(UserError):
    Sampler(config).generate(params, prompts, GREEDY, max_new_per_prompt=[1, 2])
  # sliding-window models (Gemma 3) always stay bucketed: the ring cache would break
  # the window mask
  windowed = config.replace(sliding_window=8, sliding_window_pattern=2)
  assert Sampler(windowed, eos_ids=(2,), max_batch=4).schedule(ragged=True, rows=64) \
      == "bucketed"
  assert Sampler(config, eos_ids=(2,), max_batch=4).schedule(ragged=True, rows=64) \
      == "continuous"
  with pytest.raises(UserError, match="sliding-window"):
    Sampler(windowed, batching="continuous")


def _traced(sampler, params, prompts, n, limits):
  sampler.generate(params, prompts, SamplingParams(greedy=True, max_new_tokens=4), n=n,
                   max_new_per_prompt=limits)
  return sampler.traces
