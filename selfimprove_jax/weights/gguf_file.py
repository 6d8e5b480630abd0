"""GGUF files (llama.cpp): metadata -> ModelConfig, tensors -> HF-named fp32 arrays.

Tensors are dequantised with the `gguf` package. llama.cpp's converter permutes the
rows of q/k projections of `llama` models (from HF rotate-half RoPE to its
interleaved layout, convert_hf_to_gguf.py `LlamaModel.permute`); reading undoes it so
the weights match HF and our rotate-half `apply_rope`. Qwen2 is stored unpermuted.
Llama-3 RoPE scaling is stored as a `rope_freqs` tensor of per-frequency divisors; we
recover the RopeScaling it was computed from and check that it reproduces them.
Qwen3 (`qwen3`) is Qwen2 without the q/k/v bias and with per-head q/k RMSNorm weights
(`attn_q_norm`, `attn_k_norm`), also unpermuted.
Gemma 3 (`gemma3`): the converter stores every RMSNorm weight as 1 + w (llama.cpp
multiplies by the weight alone), so reading subtracts 1 back to HF's w, as
transformers' own GGUF loader does; what GGUF does not record (five local layers per
global one, the local RoPE base 10000, the query scale head_dim**-0.5) is fixed in
llama.cpp's gemma3 graph too and taken from there.
"""

from __future__ import annotations

import os
import re

import numpy as np

from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import ModelConfig, RopeScaling
from selfimprove_jax.model.llama import rope_inv_freq

# GGUF general.architecture -> HF architecture
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}

_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight",
           "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_LAYER = {"attn_norm.weight": "input_layernorm.weight",
          "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
          "attn_v.weight": "self_attn.v_proj.weight",
          "attn_output.weight": "self_attn.o_proj.weight",
          "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
          "attn_v.bias": "self_attn.v_proj.bias",
          "ffn_norm.weight": "post_attention_layernorm.weight",
          "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
          "ffn_down.weight": "mlp.down_proj.weight"}
# Gemma 3's four layer norms and q/k norms (its ffn_norm comes before the MLP).
_GEMMA3_LAYER = dict(_LAYER, **{
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight"})
# Qwen3: Llama's names plus the per-head q/k norms (stored unpermuted, like Qwen2).
_QWEN3_LAYER = dict(_LAYER, **{
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight"})
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def open_reader(path: str):
  """gguf.GGUFReader for `path`; a truncated or malformed file is a UserError."""
  import gguf
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError/IndexError/... on bad bytes
    raise UserError(f"{path}: not a valid GGUF file (truncated or malformed: {e})") from None
  size = os.path.getsize(path)
  for t in reader.tensors:
    if t.data_offset + t.n_bytes > size:
      raise UserError(f"{path}: tensor {t.name!r} runs past the end of the file (truncated)")
  return reader


def _field(reader, key, default=None):
  f = reader.fields.get(key)
  if f is None:
    return default
  return f.contents()


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute` (which views rows as (head, 2, H/2) and swaps
  the last two): view them as (head, H/2, 2) and swap back."""
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2) \
      .reshape(w.shape)


class GGUFTensors:
  """The tensors of a GGUF file under HF names, dequantised to fp32 on `get`."""

  def __init__(self, path: str, reader, arch: str, num_heads: int, num_kv_heads: int):
    self.path = path
    self._arch, self._n, self._k = arch, num_heads, num_kv_heads
    self.has_tokenizer = _field(reader, "tokenizer.ggml.model") is not None
    self.data_offset = int(reader.data_offset)  # header + metadata (tokenizer) bytes
    self._tensors = {}
    layer = {"gemma3": _GEMMA3_LAYER, "qwen3": _QWEN3_LAYER}.get(arch, _LAYER)
    for t in reader.tensors:
      hf = _GLOBAL.get(t.name)
      m = _BLOCK.fullmatch(t.name)
      if m and m.group(2) in layer:
        hf = f"model.layers.{m.group(1)}.{layer[m.group(2)]}"
      self._tensors[hf or t.name] = t

  @property
  def names(self):
    return self._tensors.keys()

  @property
  def block_quantised(self) -> bool:
    """True when some tensor is stored in quantised blocks (Q4_1, Q8_0, K-quants...),
    whose dequantisation is worth caching (weights/gguf_cache.py)."""
    import gguf
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
             gguf.GGMLQuantizationType.BF16)
    return any(t.tensor_type not in plain for t in self._tensors.values())

  def origin(self, name: str) -> str:
    return self.path

  def shape(self, name: str) -> tuple[int, ...]:
    # GGUF lists dims fastest-first (ggml `ne`); numpy/HF order is the reverse.
    return tuple(int(d) for d in reversed(self._tensors[name].shape))

  def get(self, name: str) -> np.ndarray:
    import gguf
    t = self._tensors[name]
    try:
      w = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError:
      raise UserError(f"{self.path}: tensor {t.name!r} uses quantisation {t.tensor_type.name}, "
                      f"which the gguf package cannot dequantise") from None
    w = np.asarray(w, np.float32).reshape(self.shape(name))
    if self._arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
      w = _unpermute(w, self._n)
    elif self._arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
      w = _unpermute(w, self._k)
    elif self._arch == "gemma3" and name.endswith("norm.weight"):
      w = w - 1.0
    return w


def _llama3_scaling(path: str, factors: np.ndarray, config: ModelConfig) -> RopeScaling | None:
  """RopeScaling that reproduces llama.cpp's rope_freqs divisors. The converter only
  stores the resulting divisors, so try Llama 3.x's published parameters (factor =
  the largest divisor) and accept them only if they match."""
  factors = np.asarray(factors, np.float64).reshape(-1)
  if np.allclose(factors, 1.0):
    return None
  base = rope_inv_freq(config.replace(rope_scaling=None)).astype(np.float64)
  for low, high, orig in ((1.0, 4.0, 8192), (1.0, 4.0, 2048), (1.0, 4.0, 4096)):
    s = RopeScaling(factor=float(factors.max()), low_freq_factor=low, high_freq_factor=high,
                    original_max_position_embeddings=orig)
    if np.allclose(base / factors, rope_inv_freq(config.replace(rope_scaling=s)), rtol=1e-5):
      return s
  raise UserError(f"{path}: rope_freqs does not match Llama-3 RoPE scaling; unsupported")


def read_gguf(path: str) -> tuple[ModelConfig, GGUFTensors]:
  """ModelConfig and HF-named tensors of a GGUF file."""
  reader = open_reader(path)
  arch = _field(reader, "general.architecture")
  if arch not in ARCHITECTURES:
    raise UserError(f"{path}: unsupported GGUF architecture {arch!r} "
                    f"(supported: {', '.join(ARCHITECTURES)})")

  def meta(key, default=None, required=True):
    v = _field(reader, f"{arch}.{key}", default)
    if v is None and required:
      raise UserError(f"{path}: GGUF metadata lacks {arch}.{key}")
    return v

  scaling_type = meta("rope.scaling.type", "none", required=False)
  if scaling_type not in ("none", None):
    raise UserError(f"{path}: unsupported RoPE scaling {scaling_type!r} in GGUF metadata")
  D, N = int(meta("embedding_length")), int(meta("attention.head_count"))
  K = int(meta("attention.head_count_kv", N))
  names = {t.name: t for t in reader.tensors}
  if "token_embd.weight" not in names:
    raise UserError(f"{path}: GGUF file has no token_embd.weight tensor")
  V = int(names["token_embd.weight"].shape[-1])
  eos = _field(reader, "tokenizer.ggml.eos_token_id")
  gemma = {}
  if arch == "gemma3":
    H = int(meta("attention.key_length"))
    gemma = dict(mlp_activation="gelu_tanh", norm_scale_offset=1.0, post_norms=True,
                 embed_scale=True, query_pre_attn_scalar=float(H),
                 sliding_window=int(meta("attention.sliding_window")),
                 sliding_window_pattern=6, rope_local_theta=10_000.0)
  config = ModelConfig(
      vocab_size=V, num_layers=int(meta("block_count")), embed_dim=D, num_heads=N,
      num_kv_heads=K,
      head_dim=int(meta("attention.key_length", None, required=False)
                   or meta("rope.dimension_count", D // N)),
      mlp_dim=int(meta("feed_forward_length")),
      rope_theta=float(meta("rope.freq_base", 10000.0)),
      norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="output.weight" not in names,
      qkv_bias=arch == "qwen2", qk_norm=arch in ("qwen3", "gemma3"),
      max_position_embeddings=int(meta("context_length", 2048)),
      bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
      # Gemma 3 chat turns end with <end_of_turn> (106), a second eos as in its
      # generation_config.json.
      eos_token_id=(None if eos is None else (int(eos), 106) if arch == "gemma3"
                    else int(eos)),
      architecture=ARCHITECTURES[arch], **gemma)
  if "rope_freqs.weight" in names:
    import gguf
    t = names["rope_freqs.weight"]
    factors = gguf.quants.dequantize(t.data, t.tensor_type)
    config = config.replace(rope_scaling=_llama3_scaling(path, factors, config))
  return config, GGUFTensors(path, reader, arch, N, K)
