"""The cache of dequantised GGUF tensors (weights/gguf_cache.py): a cached load is
bit-identical to an uncached one and does not dequantise; a truncated, corrupt or
foreign entry is a miss with one warning line and is rewritten; the file's hash is
remembered by its identity; where the cache goes, how it is turned off, its size cap."""

import json
import os

import jax
import numpy as np
import pytest

from selfimprove_jax import weights
from selfimprove_jax.errors import UserError
from selfimprove_jax.runtime import files
from selfimprove_jax.weights import gguf_cache, gguf_file

D, F, V, L, N, K = 64, 96, 128, 2, 4, 2
H = D // N


def _write_gguf(path, seed=0, quant=True):
  """A tiny llama GGUF: projections and embedding in Q8_0 (or F32), norms in F32."""
  import gguf
  rng = np.random.default_rng(seed)
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(L)
  w.add_context_length(256)
  w.add_embedding_length(D)
  w.add_feed_forward_length(F)
  w.add_head_count(N)
  w.add_head_count_kv(K)
  w.add_rope_freq_base(10000.0)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_dimension_count(H)

  def add(name, shape):
    a = rng.standard_normal(shape).astype(np.float32) * 0.1
    if quant and len(shape) == 2:
      w.add_tensor(name, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                   raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      w.add_tensor(name, a + (1.0 if len(shape) == 1 else 0.0))

  add("token_embd.weight", (V, D))
  add("output_norm.weight", (D,))
  for i in range(L):
    for name, shape in (("attn_norm", (D,)), ("ffn_norm", (D,)), ("attn_q", (N * H, D)),
                        ("attn_k", (K * H, D)), ("attn_v", (K * H, D)),
                        ("attn_output", (D, N * H)), ("ffn_gate", (F, D)),
                        ("ffn_up", (F, D)), ("ffn_down", (D, F))):
      add(f"blk.{i}.{name}.weight", shape)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  old = os.stat(path).st_mtime - 60   # settled: its hash may be remembered
  os.utime(path, (old, old))
  return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  d = tmp_path / "wcache"
  monkeypatch.setenv(gguf_cache.ENV, str(d))
  return d


@pytest.fixture
def model(tmp_path):
  return _write_gguf(tmp_path / "m.gguf")


def _bits(params):
  return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(params)]


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def _entries(cache):
  return sorted(p for p in cache.iterdir() if (p / gguf_cache.MANIFEST).exists())


def _no_dequantising(monkeypatch):
  """A hit reads neither the GGUF file's metadata nor its tensors."""
  def refuse(*args):
    raise AssertionError(f"read the GGUF file on a cache hit: {args}")
  monkeypatch.setattr(gguf_file.GGUFTensors, "get", refuse)
  monkeypatch.setattr(gguf_file, "read_gguf", refuse)


def test_cached_load_is_bit_identical_and_does_not_dequantise(model, cache, monkeypatch,
                                                              capfd):
  monkeypatch.setenv(gguf_cache.ENV, "off")
  uncached = _bits(weights.load(model).params)
  assert not cache.exists()
  monkeypatch.setenv(gguf_cache.ENV, str(cache))
  first = weights.load(model)   # a miss: dequantised, written, read back
  _same(_bits(first.params), uncached)
  (entry,) = _entries(cache)
  manifest = json.loads((entry / gguf_cache.MANIFEST).read_text())
  assert len(manifest["tensors"]) == 2 + 9 * L
  with monkeypatch.context() as m:
    _no_dequantising(m)
    again = weights.load(model)
    bf16 = weights.load(model, dtype="bfloat16")
  _same(_bits(again.params), uncached)
  assert again.config == first.config and bf16.config == first.config.replace(dtype="bfloat16")
  assert again.tokenizer is None and again.source == model
  assert capfd.readouterr().err == ""


def test_the_entry_keeps_the_files_config_not_the_callers_dtype(model, cache):
  first = weights.load(model, dtype="bfloat16")   # writes the entry
  assert first.config.dtype == "bfloat16"
  assert weights.load(model).config == first.config.replace(dtype="float32")


def _truncate(entry):
  big = max(entry.glob("*.npy"), key=os.path.getsize)
  data = big.read_bytes()
  big.write_bytes(data[:len(data) // 2])


def _scribble(entry):   # same length, same header, different numbers: the checksum sees it
  big = max(entry.glob("*.npy"), key=os.path.getsize)
  data = bytearray(big.read_bytes())
  data[-64:] = os.urandom(64)
  big.write_bytes(bytes(data))


def _foreign(entry):   # another format's entry under the same name
  m = entry / gguf_cache.MANIFEST
  manifest = json.loads(m.read_text())
  m.write_text(json.dumps(dict(manifest, format=gguf_cache.FORMAT + 1)))


def _garbage_manifest(entry):
  (entry / gguf_cache.MANIFEST).write_bytes(os.urandom(200))


def _missing_file(entry):
  next(entry.glob("*.npy")).unlink()


def _wrong_shape(entry):
  big = max(entry.glob("*.npy"), key=os.path.getsize)
  np.save(big, np.zeros((3, 5), np.float32))


@pytest.mark.parametrize("damage", [_truncate, _scribble, _foreign, _garbage_manifest,
                                    _missing_file, _wrong_shape])
def test_a_bad_entry_is_a_miss_with_one_warning_and_is_rewritten(model, cache, monkeypatch,
                                                                 capfd, damage):
  good = _bits(weights.load(model).params)
  (entry,) = _entries(cache)
  damage(entry)
  capfd.readouterr()
  again = weights.load(model)
  _same(_bits(again.params), good)
  lines = capfd.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "weights cache" in lines[0] and str(entry) in lines[0], lines
  (rewritten,) = _entries(cache)
  assert rewritten == entry
  with monkeypatch.context() as m:   # the rewritten entry is good: a hit, no warning
    _no_dequantising(m)
    _same(_bits(weights.load(model).params), good)
  assert capfd.readouterr().err == ""


def test_the_files_hash_is_remembered_by_its_identity(model, cache, monkeypatch):
  real = files.hash_tree
  calls = []
  monkeypatch.setattr(files, "hash_tree", lambda *a, **k: calls.append(a) or real(*a, **k))
  monkeypatch.setattr(gguf_cache, "_hashed", {})
  first = gguf_cache.content_hash(model, str(cache))
  gguf_cache._hashed.clear()   # as a new process: the record on disk answers
  assert gguf_cache.content_hash(model, str(cache)) == first and len(calls) == 1
  assert first == real(model)[os.path.basename(model)]["sha256"]
  # the same bytes under a new inode (a copy): hashed again, same hash
  os.replace(model, model + ".old")
  with open(model + ".old", "rb") as src, open(model, "wb") as dst:
    dst.write(src.read())
  old = os.stat(model + ".old").st_mtime
  os.utime(model, (old, old))
  assert gguf_cache.content_hash(model, str(cache)) == first and len(calls) == 2
  # other bytes with the old size and mtime but a new inode: hashed, a different hash
  other = _write_gguf(os.path.dirname(model) + "/other.gguf", seed=1)
  os.replace(other, model)
  os.utime(model, (old, old))
  assert gguf_cache.content_hash(model, str(cache)) != first and len(calls) == 3


def test_a_file_still_being_written_is_hashed_but_not_remembered(model, cache, monkeypatch):
  os.utime(model)   # modified just now
  calls = []
  real = files.hash_tree
  monkeypatch.setattr(files, "hash_tree", lambda *a, **k: calls.append(a) or real(*a, **k))
  gguf_cache.content_hash(model, str(cache))
  gguf_cache.content_hash(model, str(cache))
  assert len(calls) == 2


def test_where_it_goes_and_how_it_is_turned_off(model, tmp_path, monkeypatch):
  monkeypatch.delenv(gguf_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert gguf_cache.chosen_dir() == str(tmp_path / "xdg" / "selfimprove_jax" / "weights")
  monkeypatch.setenv(gguf_cache.ENV, "off")
  assert gguf_cache.chosen_dir() is None
  loaded = weights.load(model)   # loads, writes nothing anywhere
  assert not (tmp_path / "xdg").exists() and loaded.config.num_layers == L
  (tmp_path / "a_file").write_text("x")
  monkeypatch.setenv(gguf_cache.ENV, str(tmp_path / "a_file"))
  with pytest.raises(UserError, match=gguf_cache.ENV):
    weights.load(model)


def test_unquantised_files_are_not_cached(tmp_path, cache):
  path = _write_gguf(tmp_path / "f32.gguf", quant=False)
  weights.load(path)
  assert not cache.exists() or _entries(cache) == []


def test_least_recently_used_entries_go_past_the_cap(tmp_path, cache, monkeypatch):
  a = _write_gguf(tmp_path / "a.gguf", seed=1)
  b = _write_gguf(tmp_path / "b.gguf", seed=2)
  weights.load(a)
  (entry_a,) = _entries(cache)
  size = sum(f.stat().st_size for f in entry_a.iterdir())
  monkeypatch.setattr(gguf_cache, "MAX_BYTES", int(size * 1.5))   # room for one
  weights.load(b)
  (entry_b,) = _entries(cache)
  assert entry_b != entry_a
  assert sorted(os.listdir(cache)) == sorted([entry_b.name, "hashes"])


def test_a_cached_gguf_tokenizer_loads_without_torch_as_autotokenizer_would():
  """The converted tokenizer is read back through its own class, not AutoTokenizer
  (which imports torch): a fresh process imports no torch, and the tokenizer encodes,
  templates and names its special tokens exactly as AutoTokenizer's does."""
  import subprocess
  import sys
  import transformers
  from selfimprove_jax.weights import tokenizer as tokenizer_lib
  path = tokenizer_lib.smollm2_gguf_path()
  ours = tokenizer_lib.from_gguf(path)   # converted and cached here if it was not
  code = ("import sys; from selfimprove_jax.weights import tokenizer as t; "
          "tok = t.from_gguf(t.smollm2_gguf_path()); "
          "print(type(tok).__name__, 'torch' in sys.modules, len(tok))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["TokenizersBackend", "False", "49152"], out.stdout
  auto = transformers.AutoTokenizer.from_pretrained(tokenizer_lib.gguf_cache_dir(path))
  assert type(ours) is type(auto)
  chat = [{"role": "system", "content": "Be concise."},
          {"role": "user", "content": "What is 7 times 8? ü ∑ 🙂"}]
  for tok_kw in (dict(tokenize=False), dict(tokenize=True)):
    assert (ours.apply_chat_template(chat, add_generation_prompt=True, **tok_kw)
            == auto.apply_chat_template(chat, add_generation_prompt=True, **tok_kw))
  for text in ("hello world", "<|im_start|>user\n12+30=<|im_end|>", "  def f(x):\n\treturn x"):
    assert ours(text)["input_ids"] == auto(text)["input_ids"]
    assert ours.decode(auto(text)["input_ids"]) == auto.decode(auto(text)["input_ids"])
  assert ours.get_vocab() == auto.get_vocab() and ours.all_special_ids == auto.all_special_ids
  assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == \
      (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id)


def test_the_one_program_finiteness_check_names_the_bad_tensors():
  """load's finiteness check runs one program over every tensor (start-up compiles it
  once) and still names the first bad one and how many there are."""
  import jax.numpy as jnp
  load_module = __import__("selfimprove_jax.weights.load", fromlist=["_check_finite"])
  params = {"embedding": jnp.ones((4, 3)), "layers": {"q": jnp.zeros((2, 3, 2)),
                                                       "k": jnp.ones((2, 3), jnp.int32)}}
  load_module._check_finite(params, "here")   # all finite: no error
  params["layers"]["q"] = params["layers"]["q"].at[1, 2, 0].set(jnp.inf)
  with pytest.raises(UserError, match=r"here: .*in 1 of 3 tensors, e\.g\. layers\.q\)"):
    load_module._check_finite(params, "here")
  params["embedding"] = params["embedding"].at[0, 0].set(jnp.nan)
  with pytest.raises(UserError, match=r"in 2 of 3 tensors, e\.g\. embedding\)"):
    load_module._check_finite(params, "here")


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
  """tensorboardX's writer imports torch for a type annotation (2-3 s of a run's
  start-up); the run's Reporter imports it with torch kept out, and torch can still be
  imported afterwards."""
  import subprocess
  import sys
  code = f"""
import sys
from selfimprove_jax.runtime.reporting import Reporter
r = Reporter({str(tmp_path)!r}, plot=False, log=lambda m: None)
r._tensorboard({{"iteration": 0, "pass@1": 0.5}})
print("torch" in sys.modules)
import torch
print(torch.zeros(2).sum().item())
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["False", "0.0"], out.stdout
  events = os.listdir(tmp_path / "tensorboard")
  assert len(events) == 1 and events[0].startswith("events.out.tfevents"), events
  assert os.path.getsize(tmp_path / "tensorboard" / events[0]) > 0
