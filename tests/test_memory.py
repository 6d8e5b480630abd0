"""Memory regressions on the tiny preset: the sampler frees its KV cache when a call
returns, bf16 Adam moments halve the optimizer state and still train, and the train
step's peak live device bytes (XLA's account) stay under a stated figure."""

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove_jax import optimize as opt
from selfimprove_jax.model import get_preset, init_params
from selfimprove_jax.runtime import memory
from selfimprove_jax.runtime.sharding import single_device_mesh
from selfimprove_jax.sampling import Sampler, SamplingParams

CONFIG = get_preset("tiny").replace(vocab_size=512)
MB = 1 << 20


def _nbytes(tree):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def params():
  return init_params(CONFIG, seed=0)


@pytest.mark.parametrize("batching", ["bucketed", "continuous"])
def test_sampler_frees_its_cache(params, batching):
  """Nothing the sampler allocated outlives `generate`: the loop can start the train
  step right after acquisition without the KV cache still held."""
  sampler = Sampler(CONFIG, eos_ids=(3,), max_batch=8, batching=batching)
  prompts = [list(range(5, 5 + k)) for k in (3, 9, 20, 4, 7, 11)]
  sp = SamplingParams(temperature=1.0, max_new_tokens=48)
  sampler.generate(params, prompts, sp, n=2)           # compiles
  gc.collect()
  before = {id(x): x for x in jax.live_arrays()}
  out = sampler.generate(params, prompts, sp, n=2, seed=1)
  assert len(out) == 12 and isinstance(out[0].tokens, np.ndarray)
  gc.collect()
  # only arrays born during this call count: other tests in this process (one xdist
  # worker runs many files) may hold or free their own arrays meanwhile
  new = [x for x in jax.live_arrays() if id(x) not in before]
  # KV cache of 8 rows x (32 + 48) slots: 2 x L x 8 x 80 x K x H x 4 bytes = 164 kB.
  cache = 2 * CONFIG.num_layers * 8 * 80 * CONFIG.num_kv_heads * CONFIG.head_dim * 4
  assert sum(x.nbytes for x in new) < cache // 4, [x.shape for x in new]


def test_train_step_memory_and_bf16_moments(params):
  """A grpo step on 16 rows x 96 tokens of the tiny preset (vocab 512), with fp32 and
  with bf16 Adam moments: XLA's peak live bytes (arguments + outputs + temporaries -
  donated) stay under a stated budget (44.6 MB measured for fp32 when written, ~25%
  room: a step that stops donating its state or keeps logits it used to chunk breaks
  it); bf16 halves the moments, keeps them bf16 across steps, and trains like fp32."""
  mesh = single_device_mesh()
  rs = np.random.RandomState(0)
  rows, T = 16, 96
  tokens = rs.randint(0, CONFIG.vocab_size, (rows, T)).astype(np.int32)
  loss_mask = np.ones((rows, T), np.float32)
  loss_mask[:, :64] = 0
  batch = {"tokens": tokens, "input_mask": np.ones_like(tokens), "loss_mask": loss_mask,
           "rewards": rs.randint(0, 2, (rows,)).astype(np.float32),
           "group_ids": np.repeat(np.arange(4), 4).astype(np.int32),
           "ref_logprobs": np.zeros((rows, T), np.float32) - 6.0}
  out = {}
  for dtype in ("float32", "bfloat16"):
    cfg = opt.default_optim_config()
    cfg.update(loss="grpo", learning_rate=1e-3, schedule="constant", logprob_chunk=32,
               moment_dtype=dtype)
    state = opt.create_train_state(CONFIG, cfg, params, mesh)
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype(dtype)}
    state_bytes = _nbytes(state)
    step = opt.make_train_step(CONFIG, cfg, mesh).lower(state, batch).compile()
    m = memory.compiled_bytes(step)
    assert m["aliased"] >= state_bytes * 0.99, "the state is donated"
    assert m["peak"] < 56 * MB, m
    losses = []
    for _ in range(3):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype(dtype)}
    out[dtype] = (_nbytes(state.opt_state), losses, state.params, m["peak"])
  (b32, l32, p32, peak32), (b16, l16, p16, peak16) = out["float32"], out["bfloat16"]
  assert b16 <= b32 // 2 + 1024                  # two moments, 4 -> 2 bytes each
  assert peak16 < peak32
  np.testing.assert_allclose(l16, l32, rtol=2e-3, atol=1e-4)
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), p32, p16)
  assert 0 < max(jax.tree.leaves(diff)) < 1e-4   # 3 steps of lr 1e-3: bf16 rounding only


def test_update_per_array_holds_no_copy_of_the_state():
  """optim.update_per_array: the gradient pass (XLA's account, plus the moments it
  does not read but which stay resident) peaks at least half the weights' bytes below
  the fused step, whose in-place update keeps a copy of every weight and moment; each
  array's own update then holds about one array. A model whose layers, not its
  vocabulary, hold the weights (as in the 1B preset); 4.85 x against 3.55 x the
  weights' bytes when written."""
  config = get_preset("tiny").replace(vocab_size=64, embed_dim=128, mlp_dim=384,
                                      num_layers=4, remat=True)
  mesh = single_device_mesh()
  rs = np.random.RandomState(0)
  tokens = rs.randint(0, 64, (2, 16)).astype(np.int32)      # activations << weights
  batch = {"tokens": tokens, "input_mask": np.ones_like(tokens),
           "loss_mask": np.ones(tokens.shape, np.float32)}
  params = init_params(config, seed=0)
  weights = _nbytes(params)
  peaks = {}
  for per_array in (False, True):
    cfg = opt.default_optim_config()
    cfg.update(moment_dtype="bfloat16", update_per_array=per_array)
    state = opt.create_train_state(config, cfg, params, mesh)
    step = opt.make_train_step(config, cfg, mesh)
    m = memory.compiled_bytes(getattr(step, "gradients", step).lower(state, batch).compile())
    unread = _nbytes(state) - m["arguments"] if per_array else 0
    peaks[per_array] = m["peak"] + unread
    state, metrics = step(state, batch)           # and it runs
    assert np.isfinite(float(metrics["update_norm"]))
  assert peaks[True] <= peaks[False] - weights // 2, (peaks, weights)


def _buffer_bytes(arrays) -> int:
  """Bytes of the distinct device buffers behind `arrays` (a replicated array's copy on
  each device counted once per device; a shard view of a buffer already counted, not
  again)."""
  seen = {}
  for x in arrays:
    for shard in x.addressable_shards:
      seen[shard.data.unsafe_buffer_pointer()] = shard.data.nbytes
  return sum(seen.values())


def _tiny_loop(tmp_path, overrides=()):
  import os
  from selfimprove_jax.config import load_config
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return load_config(os.path.join(root, "configs", "tiny.py"),
                     ["log.plot=false", "log.tensorboard=false", *overrides])


@pytest.mark.parametrize("algorithm,extra,want", [
    ("sft", [], 3), ("dpo", [], 4),
    # the 1B options: bf16 moments (P/2 each), the update one array at a time
    ("sft", ["optim.moment_dtype=bfloat16", "optim.update_per_array=true"], 2)])
def test_loop_trains_with_one_copy_of_the_weights(algorithm, extra, want, tmp_path,
                                                  monkeypatch):
  """While an SFT iteration trains, the only weights alive are the train state's (no
  base copy, no kept copy: the checkpoint is the rollback's copy); DPO also keeps its
  reference, the kept weights. Counted in live arrays born during the run, at the
  first train step, in units of the weights' buffer bytes P: the train state is 3P
  (params and two Adam moments; 2P with bf16 moments); before this rule the loop held
  5P for SFT."""
  from selfimprove_jax import loop
  from selfimprove_jax.optimize import phase
  seen = []
  update = phase.Weights.update

  def spy(weights, host_batches, iteration, progress):
    gc.collect()
    born = [x for x in jax.live_arrays() if id(x) not in before]
    seen.append(_buffer_bytes(born) / _buffer_bytes(jax.tree.leaves(weights._train.params)))
    return update(weights, host_batches, iteration, progress)

  monkeypatch.setattr(phase.Weights, "update", spy)
  config = _tiny_loop(tmp_path, [f"loop.algorithm={algorithm}", "loop.iterations=1",
                                 "select.filters=" + ("" if algorithm == "dpo" else "dedup"),
                                 *extra])
  gc.collect()
  before = {id(x) for x in jax.live_arrays()}
  row = loop.run(config, str(tmp_path), log=lambda *_: None)["history"][1]
  assert seen, "no train step ran"
  # the row reports each stage's peak and the run's, which no stage exceeds
  stages = [row[f"peak_rss_{n}_gb"] for n in ("acquire", "optimize", "evaluate")]
  assert 0 < max(stages) <= row["peak_rss_gb"], row
  assert want - 0.05 < seen[0] < want + 0.5, seen


def test_a_train_step_out_of_memory_is_a_one_line_error(tmp_path, monkeypatch):
  """XLA's RESOURCE_EXHAUSTED from the train step (surfacing when its metrics are
  fetched) ends the run with a UserError that names the batch and the settings that
  shrink the step, not a bare runtime error (configs/grpo_countdown.py once asked for
  67.7 GB on a 24 GB machine this way)."""
  from selfimprove_jax import loop
  from selfimprove_jax.errors import UserError

  def oom_step(*args, **kwargs):
    def step(state, batch, *base):
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Out of memory allocating 67689956528 bytes.")
    return step
  monkeypatch.setattr(loop, "make_train_step", oom_step)
  config = _tiny_loop(tmp_path, ["loop.iterations=1", "select.filters=dedup"])
  with pytest.raises(UserError) as e:
    loop.run(config, str(tmp_path), log=lambda *_: None)
  text = str(e.value)
  assert "ran out of memory" in text and "optim.micro_batch_size" in text, text
  assert "rows x" in text and "\n" not in text, text

def test_rollback_rereads_the_kept_weights(tmp_path, monkeypatch):
  """A rolled-back iteration whose kept weights were handed to the train state reads
  them back from their checkpoint: the next iteration trains from exactly the weights
  a run that held them in memory trains from (same rows, same final weights)."""
  from run_files import results
  from selfimprove_jax import loop
  from selfimprove_jax.optimize import phase
  from selfimprove_jax.runtime.checkpoint import FAULT_ENV, Checkpointer
  monkeypatch.setenv(FAULT_ENV, "nan_update@1")
  runs = []
  for hold in (False, True):
    if hold:
      monkeypatch.setattr(phase.Weights, "_holds_kept", lambda weights: True)
    workdir = tmp_path / f"hold{hold}"
    state = loop.run(_tiny_loop(tmp_path, ["loop.iterations=2"]), str(workdir),
                     log=lambda *_: None)
    ckpt = Checkpointer(str(workdir))
    params = jax.tree.map(np.asarray, ckpt.restore_arrays(2))["params"]
    ckpt.close()
    rows = [results(r) for r in state["history"]]
    runs.append((rows, params))
  (rows_a, params_a), (rows_b, params_b) = runs
  assert rows_a[1]["accepted"] is False and rows_a[2]["accepted"] is True, rows_a
  assert rows_a == rows_b
  for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(x, y)


def test_trim_host_heap_returns_freed_pages():
  """Memory freed into the C heap stays resident until `trim_host_heap`: 128 MB of
  64 kB blocks (below glibc's mmap threshold, so they live in the heap), freed under
  one block still held at the top, are resident until the trim hands them back."""
  import ctypes
  libc = ctypes.CDLL("libc.so.6")
  libc.malloc.restype = ctypes.c_void_p
  libc.free.argtypes = [ctypes.c_void_p]
  blocks = [libc.malloc(64 << 10) for _ in range(2048)]
  for b in blocks:
    ctypes.memset(b, 1, 64 << 10)
  top = libc.malloc(64 << 10)
  ctypes.memset(top, 1, 64 << 10)
  for b in blocks:
    libc.free(b)
  held = memory.host_rss()
  assert memory.trim_host_heap()
  released = held - memory.host_rss()
  libc.free(top)
  assert released > 64 * MB, released / MB


def test_process_peak_survives_stage_resets():
  """Resetting the kernel's high-water mark per stage must not lose the run's peak:
  a 200 MB block touched and freed before a reset still counts in process_peak_rss."""
  block = np.ones(200 * MB // 8)
  del block
  before = memory.process_peak_rss()
  assert memory.reset_host_peak()
  assert memory.host_peak_rss() < before          # the kernel's mark was reset
  assert memory.process_peak_rss() >= before
