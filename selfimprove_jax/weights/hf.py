"""HF checkpoints: config.json <-> ModelConfig, HF tensor names <-> our params layout,
and reading/writing `*.safetensors` (single file or the sharded-index form).

HF stores every projection as `[out, in]` (torch Linear); our params are einsum
operands named by shape letters (see model/config.py), e.g. q_proj.weight [N*H, D]
is our q [D, N, H]. The GGUF reader maps its tensors to the HF names below so both
formats share one conversion.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import ModelConfig, RopeScaling

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                 "MistralForCausalLM", "Gemma3ForCausalLM")

# ----------------------------------------------------------------------------- config


def _rope(cfg: dict, path: str) -> tuple[float, RopeScaling | None]:
  """rope_theta and Llama-3 scaling from either the transformers<5 keys (rope_theta,
  rope_scaling) or the transformers>=5 `rope_parameters` dict."""
  params = dict(cfg.get("rope_parameters") or {})
  scaling = dict(cfg.get("rope_scaling") or {})
  theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
  spec = scaling or params
  kind = spec.get("rope_type", spec.get("type", "default"))
  if kind in (None, "default"):
    return float(theta), None
  if kind != "llama3":   # yarn, linear, dynamic, longrope: other frequency maths
    field = "rope_scaling" if scaling else "rope_parameters"
    raise UserError(f"{path}: unsupported {field} rope_type {kind!r} (supported: default, "
                    f"llama3)")
  try:
    return float(theta), RopeScaling(
        factor=float(spec["factor"]), low_freq_factor=float(spec["low_freq_factor"]),
        high_freq_factor=float(spec["high_freq_factor"]),
        original_max_position_embeddings=int(spec["original_max_position_embeddings"]))
  except KeyError as e:
    raise UserError(f"{path}: llama3 rope scaling lacks {e.args[0]!r}") from None


def _gemma3_fields(cfg: dict, path: str) -> dict:
  """The Gemma 3 group of ModelConfig from a Gemma3TextConfig's config.json (the
  transformers>=5 `rope_parameters` per layer type, or the older rope_theta /
  rope_local_base_freq / sliding_window_pattern keys)."""
  if cfg.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
    raise UserError(f"{path}: unsupported hidden_activation {cfg['hidden_activation']!r} "
                    f"(supported: gelu_pytorch_tanh)")
  for key in ("final_logit_softcapping", "attn_logit_softcapping", "rope_scaling"):
    if cfg.get(key) is not None:
      raise UserError(f"{path}: Gemma 3 {key}={cfg[key]!r} is not supported")
  if cfg.get("use_bidirectional_attention") or cfg.get("attention_bias"):
    raise UserError(f"{path}: Gemma 3 bidirectional attention / attention_bias are not supported")
  rope = cfg.get("rope_parameters") or {}
  for kind in ("full_attention", "sliding_attention"):
    if (rope.get(kind) or {}).get("rope_type", "default") != "default":
      raise UserError(f"{path}: Gemma 3 {kind} rope_type {rope[kind]['rope_type']!r} is "
                      f"not supported (supported: default)")
  theta = (rope.get("full_attention") or {}).get("rope_theta", cfg.get("rope_theta", 1e6))
  local = (rope.get("sliding_attention") or {}).get("rope_theta",
                                                     cfg.get("rope_local_base_freq", 1e4))
  L = int(cfg["num_hidden_layers"])
  types = cfg.get("layer_types")
  pattern = int(cfg.get("sliding_window_pattern", 6))
  if types is not None:  # our config holds a pattern: accept the layer types it makes
    pattern = next((n for n in range(1, L + 2)
                    if [(i + 1) % n != 0 for i in range(L)]
                    == [t == "sliding_attention" for t in types]), None)
    if pattern is None:
      raise UserError(f"{path}: layer_types is not every N-th layer global; unsupported")
  return dict(mlp_activation="gelu_tanh", norm_scale_offset=1.0, post_norms=True,
              qk_norm=True, embed_scale=True, rope_theta=float(theta),
              rope_local_theta=float(local),
              query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
              sliding_window=int(cfg.get("sliding_window") or 4096),
              sliding_window_pattern=pattern)


def config_from_hf(cfg: dict, path: str) -> ModelConfig:
  """ModelConfig from a parsed config.json; `path` is named in errors."""
  archs = cfg.get("architectures") or []
  arch = next((a for a in archs if a in ARCHITECTURES), None)
  if arch is None:
    field = (f"architectures={archs!r}" if archs
             else f"model_type={cfg.get('model_type')!r}")   # the field that said so
    raise UserError(f"{path}: unsupported architecture ({field}) "
                    f"(supported: {', '.join(ARCHITECTURES)})")
  if arch == "Gemma3ForCausalLM":
    return _gemma3_config(cfg, path)
  if cfg.get("hidden_act", "silu") != "silu":
    raise UserError(f"{path}: unsupported hidden_act {cfg['hidden_act']!r} (supported: silu)")
  for key in ("attention_bias", "mlp_bias"):   # Qwen2's q/k/v bias is implied, not a key
    if arch != "Qwen2ForCausalLM" and cfg.get(key):
      raise UserError(f"{path}: {key}={cfg[key]!r} is not supported for {arch}")
  for key in ("num_experts", "num_local_experts"):   # a dense name on an MoE config
    if cfg.get(key):
      raise UserError(f"{path}: {key}={cfg[key]!r}: mixture-of-experts models are not "
                      f"supported")
  if cfg.get("use_sliding_window"):
    raise UserError(f"{path}: use_sliding_window=true is not supported (Qwen's sliding "
                    f"window on the top layers)")
  try:
    D, N = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    theta, scaling = _rope(cfg, path)
    window = _mistral_window(cfg, path, scaling) if arch == "MistralForCausalLM" else None
    return ModelConfig(
        vocab_size=int(cfg["vocab_size"]), num_layers=int(cfg["num_hidden_layers"]),
        embed_dim=D, num_heads=N, num_kv_heads=int(cfg.get("num_key_value_heads") or N),
        head_dim=int(cfg.get("head_dim") or D // N), mlp_dim=int(cfg["intermediate_size"]),
        rope_theta=theta, rope_scaling=scaling, norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", arch == "LlamaForCausalLM")),
        qkv_bias=arch == "Qwen2ForCausalLM", qk_norm=arch == "Qwen3ForCausalLM",
        sliding_window=window,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=_ids(cfg.get("eos_token_id")),
        architecture=arch)
  except KeyError as e:
    raise UserError(f"{path}: config.json lacks {e.args[0]!r}") from None
  except (TypeError, ValueError) as e:
    raise UserError(f"{path}: invalid config.json ({e})") from None


def _mistral_window(cfg: dict, path: str, scaling) -> int | None:
  """Mistral v0.1's sliding window: every layer sees its last `sliding_window` keys
  (our pattern 0; v0.2 and later set it to null). Our local layers never scale RoPE,
  so a window together with rope_scaling is refused rather than computed wrong."""
  window = cfg.get("sliding_window")
  if window is None:
    return None
  if cfg.get("layer_types") and set(cfg["layer_types"]) != {"sliding_attention"}:
    raise UserError(f"{path}: Mistral layer_types mixing full and sliding attention are "
                    f"not supported")
  if scaling is not None:
    raise UserError(f"{path}: Mistral sliding_window together with rope_scaling is not "
                    f"supported")
  return int(window)


def _gemma3_config(cfg: dict, path: str) -> ModelConfig:
  try:
    D, N = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    return ModelConfig(
        vocab_size=int(cfg["vocab_size"]), num_layers=int(cfg["num_hidden_layers"]),
        embed_dim=D, num_heads=N, num_kv_heads=int(cfg.get("num_key_value_heads") or N),
        head_dim=int(cfg.get("head_dim") or 256), mlp_dim=int(cfg["intermediate_size"]),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 131072)),
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=_ids(cfg.get("eos_token_id")),
        architecture="Gemma3ForCausalLM", **_gemma3_fields(cfg, path))
  except KeyError as e:
    raise UserError(f"{path}: config.json lacks {e.args[0]!r}") from None
  except (TypeError, ValueError) as e:
    raise UserError(f"{path}: invalid config.json ({e})") from None


def _ids(x):
  return tuple(x) if isinstance(x, list) else x


def config_to_hf(config: ModelConfig) -> dict:
  """config.json contents for `config`, written through the installed transformers'
  own config class so the file matches what that version expects."""
  import transformers  # heavy import, only when exporting
  kw = dict(
      vocab_size=config.vocab_size, hidden_size=config.embed_dim,
      intermediate_size=config.mlp_dim, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.norm_eps,
      rope_theta=config.rope_theta, tie_word_embeddings=config.tie_embeddings,
      bos_token_id=config.bos_token_id,
      eos_token_id=(list(config.eos_token_id) if isinstance(config.eos_token_id, tuple)
                    else config.eos_token_id),
      hidden_act="silu")
  if config.architecture == "Gemma3ForCausalLM":
    return _gemma3_to_hf(config, kw, transformers)
  if config.rope_scaling is not None:
    s = config.rope_scaling
    kw["rope_scaling"] = dict(rope_type="llama3", factor=s.factor,
                              low_freq_factor=s.low_freq_factor,
                              high_freq_factor=s.high_freq_factor,
                              original_max_position_embeddings=s.original_max_position_embeddings)
  if config.architecture == "LlamaForCausalLM":
    hf = transformers.LlamaConfig(head_dim=config.head_dim, **kw)
  elif config.architecture == "Qwen3ForCausalLM":
    hf = transformers.Qwen3Config(head_dim=config.head_dim, attention_bias=False,
                                  use_sliding_window=False, **kw)
  elif config.architecture == "MistralForCausalLM":
    hf = transformers.MistralConfig(head_dim=config.head_dim,
                                    sliding_window=config.sliding_window, **kw)
  elif config.architecture == "Qwen2ForCausalLM":
    if config.head_dim * config.num_heads != config.embed_dim:
      raise UserError(f"Qwen2 needs head_dim*num_heads == embed_dim, got {config.head_dim}"
                      f"*{config.num_heads} != {config.embed_dim}")
    hf = transformers.Qwen2Config(use_sliding_window=False, **kw)
  else:
    raise UserError(f"cannot export architecture {config.architecture!r} "
                    f"(supported: {', '.join(ARCHITECTURES)})")
  hf.architectures = [config.architecture]
  out = hf.to_dict()
  out["torch_dtype" if "torch_dtype" in out else "dtype"] = "float32"
  return out


def _int_if_whole(x):
  return int(x) if float(x).is_integer() else float(x)


def _gemma3_to_hf(config: ModelConfig, kw: dict, transformers) -> dict:
  for key in ("rope_theta", "hidden_act"):
    kw.pop(key)
  hf = transformers.Gemma3TextConfig(
      head_dim=config.head_dim, hidden_activation="gelu_pytorch_tanh",
      query_pre_attn_scalar=_int_if_whole(config.query_pre_attn_scalar or config.head_dim),
      sliding_window=config.sliding_window,
      layer_types=["sliding_attention" if local else "full_attention"
                   for local in config.local_layers],
      rope_parameters={
          "full_attention": {"rope_type": "default", "rope_theta": config.rope_theta},
          "sliding_attention": {"rope_type": "default",
                                "rope_theta": config.rope_local_theta or config.rope_theta}},
      **kw)
  hf.architectures = [config.architecture]
  out = hf.to_dict()
  out["torch_dtype" if "torch_dtype" in out else "dtype"] = "float32"
  return out


# ----------------------------------------------------------------------------- names

# our params key -> HF name ({i} = layer); per-layer keys are stacked on axis 0.
GLOBAL_NAMES = {"embedding": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
                "lm_head": "lm_head.weight"}
LAYER_NAMES = {
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "q": "model.layers.{i}.self_attn.q_proj.weight",
    "k": "model.layers.{i}.self_attn.k_proj.weight",
    "v": "model.layers.{i}.self_attn.v_proj.weight",
    "o": "model.layers.{i}.self_attn.o_proj.weight",
    "q_bias": "model.layers.{i}.self_attn.q_proj.bias",
    "k_bias": "model.layers.{i}.self_attn.k_proj.bias",
    "v_bias": "model.layers.{i}.self_attn.v_proj.bias",
    "mlp_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "gate": "model.layers.{i}.mlp.gate_proj.weight",
    "up": "model.layers.{i}.mlp.up_proj.weight",
    "down": "model.layers.{i}.mlp.down_proj.weight",
    "q_norm": "model.layers.{i}.self_attn.q_norm.weight",
    "k_norm": "model.layers.{i}.self_attn.k_norm.weight",
    "post_attn_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "post_mlp_norm": "model.layers.{i}.post_feedforward_layernorm.weight",
}
# Gemma 3 names its four layer norms by place: its post_attention_layernorm is our
# post_attn_norm (on the attention output), Llama's is our mlp_norm (before the MLP).
_GEMMA3_LAYER_NAMES = dict(LAYER_NAMES,
                           mlp_norm="model.layers.{i}.pre_feedforward_layernorm.weight")


def layer_name(config: ModelConfig, key: str, i: int) -> str:
  """HF name of layer i's tensor for our per-layer `key`."""
  names = _GEMMA3_LAYER_NAMES if config.architecture == "Gemma3ForCausalLM" else LAYER_NAMES
  return names[key].format(i=i)


def hf_shape(key: str, c: ModelConfig) -> tuple[int, ...]:
  """Shape of one HF tensor (one layer's slice for per-layer keys)."""
  V, D, N, K, H, F = (c.vocab_size, c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim,
                      c.mlp_dim)
  return {"embedding": (V, D), "final_norm": (D,), "lm_head": (V, D), "attn_norm": (D,),
          "mlp_norm": (D,), "q_norm": (H,), "k_norm": (H,), "post_attn_norm": (D,),
          "post_mlp_norm": (D,), "q": (N * H, D), "k": (K * H, D), "v": (K * H, D),
          "o": (D, N * H), "q_bias": (N * H,), "k_bias": (K * H,), "v_bias": (K * H,),
          "gate": (F, D), "up": (F, D), "down": (D, F)}[key]


def to_ours(key: str, w: np.ndarray, c: ModelConfig) -> np.ndarray:
  """One HF tensor (already shape-checked) -> our layout for `key`."""
  N, K, H = c.num_heads, c.num_kv_heads, c.head_dim
  fn: dict[str, Callable] = {
      "lm_head": lambda w: w.T, "gate": lambda w: w.T, "up": lambda w: w.T,
      "down": lambda w: w.T,
      "q": lambda w: w.T.reshape(-1, N, H), "k": lambda w: w.T.reshape(-1, K, H),
      "v": lambda w: w.T.reshape(-1, K, H), "o": lambda w: w.T.reshape(N, H, -1),
      "q_bias": lambda w: w.reshape(N, H), "k_bias": lambda w: w.reshape(K, H),
      "v_bias": lambda w: w.reshape(K, H)}
  return fn.get(key, lambda w: w)(w)


def to_hf(key: str, w: np.ndarray) -> np.ndarray:
  """Our layout for `key` (one layer's slice) -> the HF [out, in] tensor."""
  if key in ("lm_head", "gate", "up", "down"):
    return w.T
  if key in ("q", "k", "v"):       # [D, N, H] -> [N*H, D]
    return w.reshape(w.shape[0], -1).T
  if key == "o":                   # [N, H, D] -> [D, N*H]
    return w.reshape(-1, w.shape[-1]).T
  return w.reshape(-1) if key.endswith("_bias") else w


def param_keys(c: ModelConfig) -> tuple[list[str], list[str]]:
  """(global keys, per-layer keys) present for this config."""
  glob = ["embedding", "final_norm"] + ([] if c.tie_embeddings else ["lm_head"])
  layer = [k for k in LAYER_NAMES if (c.qkv_bias or not k.endswith("_bias"))
           and (c.qk_norm or k not in ("q_norm", "k_norm"))
           and (c.post_norms or not k.startswith("post_"))]
  return glob, layer


# ----------------------------------------------------------------------------- safetensors

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
           "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsFile:
  """Minimal memory-mapped safetensors reader. The `safetensors` package's numpy
  reader cannot return bfloat16 (most HF checkpoints), so the format (8-byte header
  length, JSON header, raw little-endian data) is parsed here, with checks that name
  the file when it is truncated or malformed."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    try:
      with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or 8 + n > size:
          raise ValueError(f"header of {n} bytes does not fit in {size} bytes")
        header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
      raise UserError(f"{path}: not a valid safetensors file (truncated or malformed: {e})") \
          from None
    header.pop("__metadata__", None)
    self._data = np.memmap(path, np.uint8, "r", offset=8 + n) if size > 8 + n else None
    self.entries = {}
    for name, e in header.items():
      try:
        dtype, shape, (start, end) = _DTYPES[e["dtype"]], tuple(e["shape"]), e["data_offsets"]
      except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: malformed safetensors entry for {name!r}: {e}") from None
      nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
      if end - start != nbytes or 8 + n + end > size:
        raise UserError(f"{path}: tensor {name!r} runs past the end of the file "
                        f"(truncated or malformed safetensors)")
      self.entries[name] = (dtype, shape, start, end)

  def shape(self, name: str) -> tuple[int, ...]:
    return self.entries[name][1]

  def get(self, name: str) -> np.ndarray:
    dtype, shape, start, end = self.entries[name]
    if start == end:
      return np.zeros(shape, np.float32)
    return self._data[start:end].view(dtype).reshape(shape).astype(np.float32)


class SafetensorsDir:
  """HF-named tensors of a directory: `model.safetensors`, the sharded
  `model.safetensors.index.json` form, or any single `*.safetensors` file."""

  def __init__(self, directory: str):
    self.directory = directory
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
      except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{index}: malformed safetensors index ({e})") from None
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
      if "model.safetensors" in files:
        files = ["model.safetensors"]
    if not files:
      raise UserError(f"{directory}: no model.safetensors or model.safetensors.index.json")
    self.files: dict[str, SafetensorsFile] = {}
    self.where: dict[str, SafetensorsFile] = {}
    for name in files:
      path = os.path.join(directory, name)
      if not os.path.exists(path):
        raise UserError(f"{path}: listed in the safetensors index but missing")
      st = SafetensorsFile(path)
      self.files[name] = st
      for tensor in st.entries:
        self.where[tensor] = st

  @property
  def names(self) -> Iterable[str]:
    return self.where.keys()

  def origin(self, name: str) -> str:
    return self.where[name].path if name in self.where else self.directory

  def shape(self, name: str) -> tuple[int, ...]:
    return self.where[name].shape(name)

  def get(self, name: str) -> np.ndarray:
    return self.where[name].get(name)


def write_safetensors(tensors: dict[str, np.ndarray], path: str, dtype=np.float32) -> None:
  """Writes the tensors as `dtype` (a numpy / ml_dtypes float type) with the metadata
  transformers checks for ("format": "pt")."""
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v, dtype) for k, v in tensors.items()}, path,
            metadata={"format": "pt"})
  os.chmod(path, 0o644)  # save_file creates it owner-only (0600), unlike the other files


def read_config_json(directory: str) -> ModelConfig:
  """ModelConfig of an HF directory (errors name the file)."""
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{directory}: directory has no config.json (not an HF model directory)")
  try:
    with open(path) as f:
      cfg = json.load(f)
  except ValueError as e:
    raise UserError(f"{path}: malformed JSON ({e})") from None
  if not isinstance(cfg, dict):
    raise UserError(f"{path}: malformed config.json (not a JSON object)")
  return config_from_hf(cfg, path)
