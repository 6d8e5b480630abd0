"""Qwen3 (dense) and Mistral against transformers' torch models: the presets against
the published config.json files, random tiny models saved by transformers and read
back by us (HF directory, and for Qwen3 a GGUF written with the `gguf` package's
writer), export round trips, greedy decode through our cached sampler, a LoRA merge
on Qwen3's params, and the variants we refuse."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:
  import gguf
  import torch
  import transformers
except ImportError as e:  # no silent skip: the reference model is required
  raise ImportError("tests/test_qwen3_mistral.py needs torch, transformers and gguf: "
                    "pip install -e '.[test]'") from e

from selfimprove_jax import weights
from selfimprove_jax.errors import UserError
from selfimprove_jax.model import lora as lora_lib
from selfimprove_jax.model.config import get_preset
from selfimprove_jax.model.llama import forward
from selfimprove_jax.model.params import abstract_params, count_params
from selfimprove_jax.sampling import SamplingParams, make_sampler
from selfimprove_jax.weights import hf

# ----------------------------------------------------------------------------- presets

# The source of truth: the fields of the published config.json files (huggingface.co
# Qwen/Qwen3-0.6B, Qwen/Qwen3-1.7B, Qwen/Qwen3-4B, mistralai/Mistral-7B-v0.3), copied
# by hand; keys that do not shape the model (dtype, dropout, use_cache, ...) left out.
_QWEN3_COMMON = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 40960, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
    "tie_word_embeddings": True, "use_sliding_window": False, "vocab_size": 151936}
PUBLISHED = {
    "qwen3_0_6b": dict(_QWEN3_COMMON, hidden_size=1024, intermediate_size=3072,
                       num_attention_heads=16, num_hidden_layers=28),
    "qwen3_1_7b": dict(_QWEN3_COMMON, hidden_size=2048, intermediate_size=6144,
                       num_attention_heads=16, num_hidden_layers=28),
    "qwen3_4b": dict(_QWEN3_COMMON, hidden_size=2560, intermediate_size=9728,
                     num_attention_heads=32, num_hidden_layers=36),
    "mistral_7b_v0_3": {
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
        "vocab_size": 32768},
}
# Parameter counts from the shapes above (Qwen3 model cards: 0.44B / 1.4B / 3.6B
# non-embedding; Mistral 7B v0.3: 7.25B).
PARAMS = {"qwen3_0_6b": 596_049_920, "qwen3_1_7b": 1_720_574_976,
          "qwen3_4b": 4_022_468_096, "mistral_7b_v0_3": 7_248_023_552}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_is_the_published_config(name):
  preset = get_preset(name)
  assert hf.config_from_hf(PUBLISHED[name], name) == preset
  shapes = abstract_params(preset)
  assert count_params(shapes) == preset.num_params == PARAMS[name]
  layers = shapes["layers"]
  if name.startswith("qwen3"):   # head_dim 128 is not hidden_size / heads
    assert layers["q"].value.shape[2:] == (preset.num_heads, 128)
    assert layers["q_norm"].value.shape == (preset.num_layers, 128)
    assert "q_bias" not in layers and "lm_head" not in shapes
  else:
    assert "q_norm" not in layers and shapes["lm_head"].value.shape == (4096, 32768)


# ----------------------------------------------------------------------------- tiny models

WINDOW = 8
TOKENS = np.random.default_rng(0).integers(3, 128, size=(2, 24))   # longer than WINDOW
_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _save(model, d):
  with torch.no_grad():   # norms start at 1: randomise so a q/k-norm mix-up shows
    for name, p in model.named_parameters():
      p.copy_((1 + 0.3 * torch.randn_like(p)) if "norm" in name else 0.08 * torch.randn_like(p))
  model.save_pretrained(d)
  return d, model


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
  """(directory, torch model): head_dim 32 (not 64 / 4), untied, rope theta 1e6."""
  torch.manual_seed(0)
  cfg = transformers.Qwen3Config(head_dim=32, tie_word_embeddings=False,
                                 rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                                 **_TINY)
  model = transformers.Qwen3ForCausalLM(cfg).eval()
  return _save(model, str(tmp_path_factory.mktemp("qwen3_tiny")))


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
  """(directory, torch model): Mistral v0.1 layout with a window of WINDOW keys."""
  torch.manual_seed(1)
  model = transformers.MistralForCausalLM(
      transformers.MistralConfig(sliding_window=WINDOW, **_TINY)).eval()
  return _save(model, str(tmp_path_factory.mktemp("mistral_tiny")))


def _torch_logits(model, tokens=TOKENS):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens))).logits.float().numpy()


def _ours(loaded, tokens=TOKENS):
  return np.asarray(forward(loaded.params, loaded.config, jnp.asarray(tokens)))


@pytest.mark.parametrize("which", ["qwen3", "mistral"])
def test_random_tiny_matches_transformers(which, request):
  d, model = request.getfixturevalue(which)
  loaded = weights.load(d)
  c = loaded.config
  ref, ours = _torch_logits(model), _ours(loaded)
  assert _rel(ours, ref) <= 1e-4, _rel(ours, ref)
  np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))
  if which == "qwen3":
    assert c.architecture == "Qwen3ForCausalLM" and c.qk_norm and not c.qkv_bias
    assert c.head_dim == 32 and not c.tie_embeddings and c.sliding_window is None
    # The q/k norms matter: without them the logits are far off.
    no_norm = jax.tree.map(lambda x: x, loaded.params)
    no_norm["layers"] = {k: v for k, v in no_norm["layers"].items() if "_norm" not in k
                         or k in ("attn_norm", "mlp_norm")}
    off = np.asarray(forward(no_norm, c.replace(qk_norm=False), jnp.asarray(TOKENS)))
    assert _rel(off, ref) > 1e-2
  else:
    assert c.architecture == "MistralForCausalLM" and c.sliding_window == WINDOW
    assert c.local_layers == (True,) * 3    # the window is on every layer
    full = np.asarray(forward(loaded.params, c.replace(sliding_window=None),
                              jnp.asarray(TOKENS)))
    assert _rel(full, ref) > 1e-3            # and 24 tokens exercise it


@pytest.mark.parametrize("which", ["qwen3", "mistral"])
def test_export_round_trip(which, request, tmp_path):
  d, model = request.getfixturevalue(which)
  loaded = weights.load(d)
  out = weights.export(loaded, out_dir=str(tmp_path / "exported"))
  cfg = json.load(open(os.path.join(out, "config.json")))
  assert cfg["architectures"] == [loaded.config.architecture]
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(back).__name__ == loaded.config.architecture
  assert _rel(_torch_logits(back), _torch_logits(model)) <= 1e-6
  assert weights.load(out).config == loaded.config


@pytest.mark.parametrize("which", ["qwen3", "mistral"])
def test_greedy_decode_matches_transformers(which, request):
  """12 greedy tokens through our cached decode (left-padded batch; Mistral's prompts
  longer than its window) equal transformers' generate."""
  d, model = request.getfixturevalue(which)
  loaded = weights.load(d)
  sampler = make_sampler(loaded, eos_ids=(), pad_id=0)
  rng = np.random.default_rng(2)
  prompts = [rng.integers(3, 128, size=n).tolist() for n in (13, 20)]
  outs = sampler.generate(loaded.params, prompts, SamplingParams(greedy=True, max_new_tokens=12))
  for prompt, c in zip(prompts, outs):
    with torch.no_grad():
      ref = model.generate(torch.tensor([prompt]),
                           attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           do_sample=False, max_new_tokens=12, min_new_tokens=12,
                           pad_token_id=0)
    assert c.tokens.tolist() == ref[0, len(prompt):].tolist()


def test_lora_on_qwen3_leaves_the_qk_norms_and_trains_through_them(qwen3):
  loaded = weights.load(qwen3[0])
  lora = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=("*",))
  ad = lora_lib.init_lora(loaded.config, lora, seed=1)
  ad = jax.tree.map(lambda x: x + 0.01, ad)   # B = 0 at init: make the update non-zero
  merged = lora_lib.merge(loaded.params, ad, lora)
  np.testing.assert_array_equal(merged["layers"]["q_norm"], loaded.params["layers"]["q_norm"])

  def loss(a):
    logits = forward(lora_lib.merge(loaded.params, a, lora), loaded.config, jnp.asarray(TOKENS))
    return jax.nn.log_softmax(logits)[..., 5].mean()
  grads = jax.grad(loss)(ad)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["layers"]["q"]["a"]).max()) > 0


# ----------------------------------------------------------------------------- GGUF


def _write_qwen3_gguf(d, model, path):
  """A Qwen3 GGUF of `model`'s fp32 weights, named and described as llama.cpp's
  converter does for qwen3 (no q/k permutation; numpy shapes are HF's [out, in])."""
  c = model.config
  w = gguf.GGUFWriter(path, "qwen3")
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_key_length(c.head_dim)
  w.add_value_length(c.head_dim)
  w.add_rope_freq_base(1e6)
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_eos_token_id(2)
  w.add_bos_token_id(1)
  names = {"model.embed_tokens.weight": "token_embd.weight",
           "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
  layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
           "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
           "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
  for name, t in model.state_dict().items():
    if name.startswith("model.layers."):
      i, rest = name[len("model.layers."):].split(".", 1)
      gname = f"blk.{i}.{layer[rest[:-len('.weight')]]}.weight"
    else:
      gname = names[name]
    w.add_tensor(gname, t.detach().numpy().astype(np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def test_qwen3_gguf_matches_the_hf_directory(qwen3, tmp_path):
  d, model = qwen3
  path = _write_qwen3_gguf(d, model, str(tmp_path / "qwen3_tiny.gguf"))
  from_gguf, from_dir = weights.load(path), weights.load(d)
  # GGUF stores eps as float32; everything else is the directory's config.
  assert from_gguf.config.replace(norm_eps=1e-6) == from_dir.config
  ours, ref = _ours(from_gguf), _torch_logits(model)
  assert _rel(ours, _ours(from_dir)) <= 1e-6
  assert _rel(ours, ref) <= 1e-4
  np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


# ----------------------------------------------------------------------------- refusals

_QWEN3_CFG = dict(PUBLISHED["qwen3_0_6b"])
_MISTRAL_V01 = dict(PUBLISHED["mistral_7b_v0_3"], sliding_window=4096, vocab_size=32000)


@pytest.mark.parametrize("cfg, field", [
    (dict(_QWEN3_CFG, attention_bias=True), "attention_bias"),
    (dict(_QWEN3_CFG, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                    "original_max_position_embeddings": 32768}),
     "rope_scaling rope_type 'yarn'"),
    (dict(_QWEN3_CFG, rope_parameters={"rope_type": "yarn", "factor": 4.0}),
     "rope_parameters rope_type 'yarn'"),
    (dict(_QWEN3_CFG, use_sliding_window=True, sliding_window=4096), "use_sliding_window"),
    (dict(_QWEN3_CFG, num_experts=128), "num_experts"),
    (dict(_QWEN3_CFG, architectures=["Qwen3MoeForCausalLM"]), "Qwen3MoeForCausalLM"),
    (dict(_MISTRAL_V01, num_local_experts=8), "num_local_experts"),
    (dict(_MISTRAL_V01, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}),
     "sliding_window together with rope_scaling"),
])
def test_unsupported_variants_are_refused_naming_the_field(cfg, field):
  with pytest.raises(UserError, match=None) as e:
    hf.config_from_hf(cfg, "x/config.json")
  assert field in str(e.value) and "\n" not in str(e.value)


def test_mistral_v0_1_window_is_read():
  c = hf.config_from_hf(_MISTRAL_V01, "x")
  assert c.sliding_window == 4096 and all(c.local_layers)
  assert c.replace(sliding_window=None, vocab_size=32768) == get_preset("mistral_7b_v0_3")
