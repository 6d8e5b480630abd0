"""Weights in and out against transformers: HF directories written by transformers'
own save_pretrained (Llama tied/untied/llama3-scaled, Qwen2 with biases, sharded
index), GGUF files written like llama.cpp's converter, export round trips, loading
onto an 8-device mesh, and the one-line errors for bad input."""

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

try:
  import torch
  import transformers
except ImportError as e:  # no silent skip: the reference model is required
  raise ImportError("tests/test_weights.py needs torch and transformers: "
                    "pip install -e '.[test]'") from e

from selfimprove_jax import cli, weights
from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import RopeScaling
from selfimprove_jax.model.llama import forward
from selfimprove_jax.model.params import param_shardings
from selfimprove_jax.runtime import sharding
from selfimprove_jax.weights import tokenizer as tokenizer_lib

_BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
_LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
               original_max_position_embeddings=16)
CASES = {
    "llama_tied": ("llama", dict(tie_word_embeddings=True), None),
    "llama_untied": ("llama", dict(tie_word_embeddings=False), None),
    "llama3_scaled": ("llama", dict(tie_word_embeddings=False, rope_theta=500000.0,
                                    rope_scaling=_LLAMA3), None),
    "qwen2_bias": ("qwen2", dict(tie_word_embeddings=False, rope_theta=1e6), None),
    "llama_sharded_index": ("llama", dict(tie_word_embeddings=True), "60KB"),
}
TOKENS = np.random.default_rng(0).integers(3, 128, size=(2, 24))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _hf_model(arch: str, kw: dict):
  cfg_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
  torch.manual_seed(0)
  model = model_cls(cfg_cls(**{**_BASE, **kw})).eval()
  with torch.no_grad():  # HF inits norms to 1 and biases to 0: randomise so a mix-up shows
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.normal_(0.0, 0.08)
  return model


def _torch_logits(model, tokens=TOKENS):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens))).logits.float().numpy()


def _our_logits(loaded, tokens=TOKENS):
  return np.asarray(forward(loaded.params, loaded.config, jnp.asarray(tokens)))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """case -> (directory written by transformers' save_pretrained, reference logits)."""
  out = {}
  for case, (arch, kw, shard) in CASES.items():
    d = str(tmp_path_factory.mktemp(case))
    model = _hf_model(arch, kw)
    model.save_pretrained(d, **({"max_shard_size": shard} if shard else {}))
    out[case] = (d, _torch_logits(model))
  return out


# ----------------------------------------------------------------------------- HF in


@pytest.mark.parametrize("case", list(CASES))
def test_hf_dir_matches_transformers(hf_dirs, case):
  d, ref = hf_dirs[case]
  loaded = weights.load(d)
  ours = _our_logits(loaded)
  assert _rel(ours, ref) <= 1e-5, case
  assert (ours.argmax(-1) == ref.argmax(-1)).all()
  c = loaded.config
  assert c.tie_embeddings == CASES[case][1]["tie_word_embeddings"]
  assert ("lm_head" in loaded.params) == (not c.tie_embeddings)
  assert c.qkv_bias == (case == "qwen2_bias")
  assert c.architecture == ("Qwen2ForCausalLM" if case == "qwen2_bias" else "LlamaForCausalLM")
  assert loaded.tokenizer is None and loaded.source == d
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(loaded.params))
  if case == "llama3_scaled":
    assert c.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 16) and c.rope_theta == 500000.0
  if case == "llama_sharded_index":
    assert os.path.exists(os.path.join(d, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(d) if f.endswith(".safetensors")]) > 1


def test_dtype_override_keeps_fp32_params(hf_dirs):
  d, ref = hf_dirs["llama_untied"]
  loaded = weights.load(d, dtype="bfloat16")
  assert loaded.config.dtype == "bfloat16"
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(loaded.params))
  assert _rel(_our_logits(loaded), ref) < 0.05  # bf16 compute, same model


# ----------------------------------------------------------------------------- GGUF in


def _write_gguf(model, path: str, arch: str, rope_freqs=None):
  """Writes `model` as llama.cpp's converter would (F32): GGUF names, q/k rows
  permuted for `llama`, Llama-3 scaling as a rope_freqs tensor."""
  import gguf
  c = model.config
  N, K = c.num_attention_heads, c.num_key_value_heads
  H = c.hidden_size // N

  def permute(w, n_head):  # convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)

  w = gguf.GGUFWriter(path, arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(N)
  w.add_head_count_kv(K)
  w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_rope_dimension_count(H)
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight", "lm_head.weight": "output.weight"}
  layer = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight":
           "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
           "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
           "self_attn.o_proj.weight": "attn_output.weight"}
  for proj in "qkv":
    layer[f"self_attn.{proj}_proj.weight"] = f"attn_{proj}.weight"
    layer[f"self_attn.{proj}_proj.bias"] = f"attn_{proj}.bias"
  state = model.state_dict()
  if c.tie_word_embeddings:
    state.pop("lm_head.weight", None)
  for name, t in state.items():
    a = t.float().numpy()
    if name.startswith("model.layers."):
      i, rest = name[len("model.layers."):].split(".", 1)
      gname = f"blk.{i}.{layer[rest]}"
      if arch == "llama" and rest.startswith(("self_attn.q_proj", "self_attn.k_proj")):
        a = permute(a, N if "q_proj" in rest else K)
    else:
      gname = names[name]
    w.add_tensor(gname, np.ascontiguousarray(a))
  if rope_freqs is not None:
    w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def _llama_cpp_rope_freqs(theta, H, factor, low, high, orig):
  """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors for rope_type llama3."""
  freqs = 1.0 / (theta ** (np.arange(0, H, 2, dtype=np.float64) / H))
  out = []
  for f in freqs:
    wavelen = 2 * math.pi / f
    if wavelen < orig / high:
      out.append(1.0)
    elif wavelen > orig / low:
      out.append(factor)
    else:
      smooth = (orig / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out)


@pytest.mark.parametrize("case", ["llama_untied", "llama3_8k", "qwen2_bias"])
def test_gguf_like_llama_cpp_matches_transformers(tmp_path, case):
  arch = "qwen2" if case == "qwen2_bias" else "llama"
  kw = dict(CASES["qwen2_bias" if arch == "qwen2" else "llama_untied"][1])
  freqs = None
  if case == "llama3_8k":  # llama.cpp stores only divisors; the loader must recover these
    kw.update(rope_theta=500000.0,
              rope_scaling=dict(_LLAMA3, original_max_position_embeddings=8192))
    freqs = _llama_cpp_rope_freqs(500000.0, 16, 8.0, 1.0, 4.0, 8192)
  model = _hf_model(arch, kw)
  path = str(tmp_path / "m.gguf")
  _write_gguf(model, path, arch, freqs)
  loaded = weights.load(path)
  ref = _torch_logits(model, TOKENS)
  assert _rel(_our_logits(loaded), ref) <= 1e-5
  assert loaded.config.qkv_bias == (arch == "qwen2")
  if case == "llama3_8k":
    assert loaded.config.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)
  else:
    assert loaded.config.rope_scaling is None


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("case", ["llama_tied", "llama3_scaled", "qwen2_bias"])
def test_export_round_trip_hf_dirs(hf_dirs, tmp_path, case):
  loaded = weights.load(hf_dirs[case][0])
  out = weights.export(loaded, out_dir=str(tmp_path / "out"))
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ours = _our_logits(loaded)
  assert _rel(_torch_logits(back), ours) <= 1e-5
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["architectures"] == [loaded.config.architecture]
  # and back into our loader: the same config and params
  again = weights.load(out)
  assert again.config == loaded.config.replace()
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_export_preset_with_tokenizer_and_cli(tmp_path):
  out = str(tmp_path / "tiny")
  assert cli.main(["export", "--model", "tiny", "--out", out]) == 0
  for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
    assert os.path.exists(os.path.join(out, f)), f
  loaded = weights.load("tiny")  # same seed -> same params as the CLI exported
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tokens = np.random.default_rng(1).integers(0, 49152, size=(2, 16))
  assert _rel(_torch_logits(back, tokens), _our_logits(loaded, tokens)) <= 1e-5
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.chat_template and tok.chat_template == loaded.tokenizer.chat_template
  assert len(tok) == len(loaded.tokenizer) == 49152
  with open(os.path.join(out, "generation_config.json")) as f:
    assert json.load(f)["eos_token_id"] == 2


def test_export_refuses_non_empty_dir(tmp_path, capsys):
  out = tmp_path / "o"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  assert cli.main(["export", "--model", "tiny", "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip()
  assert "not empty" in err and str(out) in err and len(err.splitlines()) == 1
  assert os.listdir(out) == ["keep.txt"]
  assert cli.main(["export", "--model", "tiny", "--out", str(out), "--force"]) == 0
  assert os.path.exists(out / "model.safetensors")


# ----------------------------------------------------------------------------- sharding


def test_load_onto_8_device_mesh(hf_dirs):
  d, ref = hf_dirs["llama_untied"]
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  loaded = weights.load(d, mesh=mesh)
  want = param_shardings(loaded.config, mesh)
  got = jax.tree.map(lambda x: x.sharding, loaded.params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.is_equivalent_to(w, 4)
  layers = loaded.params["layers"]
  assert layers["q"].sharding.spec == P(None, "fsdp", "tensor", None)
  assert layers["k"].sharding.spec == P(None, "fsdp", None, None)  # 2 kv heads on tensor=4
  assert loaded.params["embedding"].sharding.spec == P("tensor", "fsdp")
  assert loaded.params["embedding"].addressable_shards[0].data.shape == (32, 32)
  single = weights.load(d)
  assert _rel(_our_logits(loaded), _our_logits(single)) <= 1e-5
  assert _rel(_our_logits(loaded), ref) <= 1e-5


# ----------------------------------------------------------------------------- bad input


def _raises(spec, *needles):
  with pytest.raises(UserError) as e:
    weights.load(spec)
  msg = str(e.value)
  assert "\n" not in msg, msg
  for n in needles:
    assert n in msg, msg
  return msg


def test_missing_path():
  _raises("/nonexistent/model", "/nonexistent/model", "no such file")


def test_truncated_and_malformed_gguf(tmp_path):
  src = tokenizer_lib.smollm2_gguf_path()
  with open(src, "rb") as f:
    head = f.read(2_000_000)  # metadata intact, tensor data cut short
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(head)
  _raises(str(cut), str(cut), "truncated")
  junk = tmp_path / "junk.gguf"
  junk.write_bytes(b"not a gguf file at all" * 10)
  _raises(str(junk), str(junk), "not a valid GGUF file")


def test_dir_without_config(tmp_path, hf_dirs):
  shutil.copy(os.path.join(hf_dirs["llama_untied"][0], "model.safetensors"), tmp_path)
  _raises(str(tmp_path), str(tmp_path), "no config.json")


def _copy_dir(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def _edit_config(d, **kw):
  path = os.path.join(d, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  cfg.update(kw)
  with open(path, "w") as f:
    json.dump(cfg, f)
  return path


def test_unsupported_architecture(tmp_path, hf_dirs):
  d = _copy_dir(hf_dirs["llama_untied"][0], tmp_path / "m")
  path = _edit_config(d, architectures=["GPT2LMHeadModel"], model_type="gpt2")
  _raises(d, path, "unsupported architecture", "GPT2LMHeadModel")


def test_truncated_safetensors_missing_tensor_and_shape(tmp_path, hf_dirs):
  d = _copy_dir(hf_dirs["llama_untied"][0], tmp_path / "cut")
  st = os.path.join(d, "model.safetensors")
  size = os.path.getsize(st)
  with open(st, "r+b") as f:
    f.truncate(size - 100)
  _raises(d, st, "truncated")
  with open(st, "r+b") as f:
    f.truncate(5)
  _raises(d, st, "truncated")

  d = _copy_dir(hf_dirs["llama_untied"][0], tmp_path / "missing")
  st = os.path.join(d, "model.safetensors")
  f = weights.hf.SafetensorsFile(st)
  tensors = {n: f.get(n) for n in f.entries if n != "model.layers.1.mlp.up_proj.weight"}
  del f
  weights.hf.write_safetensors(tensors, st)
  _raises(d, d, "missing tensor", "model.layers.1.mlp.up_proj.weight")

  d = _copy_dir(hf_dirs["llama_untied"][0], tmp_path / "shape")
  _edit_config(d, intermediate_size=80)
  _raises(d, "shape", "(80, 64)", "gate_proj")


def test_tokenizer_larger_than_embedding(tmp_path, hf_dirs):
  d = _copy_dir(hf_dirs["llama_tied"][0], tmp_path / "m")
  tokenizer_lib.from_gguf(tokenizer_lib.smollm2_gguf_path()).save_pretrained(d)
  _raises(d, d, "tokenizer vocabulary (49152 tokens)", "embedding table (128 rows)")


def test_cli_prints_one_line_for_user_errors(tmp_path, capsys):
  assert cli.main(["export", "--model", str(tmp_path / "nope"), "--out",
                   str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "no such file" in err


# ----------------------------------------------------------------------------- Hub ids


def _fake_hub_cache(cache, repo_id, src_dir, revision="0123abcd" * 5):
  """`cache`/models--org--name laid out as huggingface_hub writes it: files in blobs/,
  symlinked from snapshots/<revision>/, and refs/main naming that revision."""
  repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
  snap = os.path.join(repo, "snapshots", revision)
  os.makedirs(snap)
  os.makedirs(os.path.join(repo, "blobs"))
  os.makedirs(os.path.join(repo, "refs"))
  for i, name in enumerate(sorted(os.listdir(src_dir))):
    blob = os.path.join(repo, "blobs", f"blob{i}")
    shutil.copy(os.path.join(src_dir, name), blob)
    os.symlink(os.path.relpath(blob, snap), os.path.join(snap, name))
  with open(os.path.join(repo, "refs", "main"), "w") as f:
    f.write(revision)
  return snap


@pytest.mark.parametrize("env", ["HF_HOME", "HF_HUB_CACHE"])
def test_hub_id_loads_from_the_local_cache(hf_dirs, tmp_path, monkeypatch, env):
  d, ref = hf_dirs["qwen2_bias"]
  cache = str(tmp_path / "hub")
  snap = _fake_hub_cache(cache, "test-org/Tiny-Qwen2.5", d)
  for name in ("HF_HOME", "HF_HUB_CACHE"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv(env, str(tmp_path) if env == "HF_HOME" else cache)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  loaded = weights.load("test-org/Tiny-Qwen2.5")
  assert loaded.source == snap
  assert loaded.config.architecture == "Qwen2ForCausalLM"
  assert _rel(_our_logits(loaded), ref) <= 1e-5
  # absent: one line naming the id, the cache it looked in, and how to fill it
  _raises("test-org/absent-model", "test-org/absent-model", cache, "hf download")


def test_local_path_and_preset_are_never_hub_ids(hf_dirs, tmp_path, monkeypatch):
  cache = str(tmp_path / "hub")
  _fake_hub_cache(cache, "test-org/model", hf_dirs["qwen2_bias"][0])
  monkeypatch.setenv("HF_HUB_CACHE", cache)
  monkeypatch.chdir(tmp_path)
  _copy_dir(hf_dirs["llama_tied"][0], tmp_path / "test-org" / "model")
  # the relative directory of the same name wins over the cached repo
  assert weights.load("test-org/model").config.architecture == "LlamaForCausalLM"
  assert weights.resolve("tiny") == ("preset", "tiny")
  _raises("./test-org/absent", "./test-org/absent", "no such file")
  assert "Hugging Face" not in _raises("/abs/org-name", "/abs/org-name")
