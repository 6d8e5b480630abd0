"""Model configurations: one frozen dataclass and named presets for the two decoder
families, Llama (Llama 2/3, SmolLM2, Qwen2, Qwen3, Mistral) and Gemma 3 (text).

The families share one decoder (model/llama.py); a Gemma 3 config differs only in the
fields of the "Gemma 3" group below, each defaulting to the Llama behaviour.

Shape letters used across the package (documented once, here):
  B batch, T time (query positions), S source/cache positions, D model width,
  N query heads, K key/value heads, G query heads per kv head (N // K),
  H head dim, F feed-forward width, V vocabulary, L layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style frequency-dependent RoPE scaling ("llama3" rope_type in HF)."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


ACTIVATIONS = ("silu", "gelu_tanh")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder (Llama or Gemma 3 family). Params are always stored in
  fp32; `dtype` is the compute dtype ("float32" or "bfloat16")."""
  vocab_size: int
  num_layers: int
  embed_dim: int          # D
  num_heads: int          # N
  num_kv_heads: int       # K
  head_dim: int           # H
  mlp_dim: int            # F
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  qkv_bias: bool = False  # Qwen2
  max_position_embeddings: int = 2048
  dtype: str = "float32"
  scan_layers: bool = True   # lax.scan over layers: one compiled block, faster compiles
  remat: bool = False        # rematerialise each block in the backward pass
  remat_policy: str = "nothing"  # what remat keeps: 'nothing' | 'dots' (matmul outputs)
  bos_token_id: Optional[int] = None
  eos_token_id: Any = None   # int or tuple of ints
  architecture: str = "LlamaForCausalLM"
  # Gemma 3 (Gemma Team 2025, "Gemma 3 Technical Report"); defaults are Llama's.
  mlp_activation: str = "silu"      # GeGLU uses "gelu_tanh" (tanh-approximate GELU)
  norm_scale_offset: float = 0.0    # RMSNorm scale is (offset + w): Gemma stores w around 0
  post_norms: bool = False          # RMSNorm on the attention and MLP outputs too
  qk_norm: bool = False             # RMSNorm over head_dim on queries and keys (Qwen3 too)
  embed_scale: bool = False         # embeddings times sqrt(embed_dim)
  query_pre_attn_scalar: Optional[float] = None  # scores * this**-0.5 (None: head_dim)
  sliding_window: Optional[int] = None  # local layers see the last `sliding_window` keys
  sliding_window_pattern: int = 0   # every N-th layer is global, the others local (0: all
                                    # local, Mistral v0.1's window on every layer)
  rope_local_theta: Optional[float] = None  # RoPE base of the local layers

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.remat_policy not in ("nothing", "dots"):
      raise ValueError(f"remat_policy must be 'nothing' or 'dots', got {self.remat_policy!r}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.mlp_activation not in ACTIVATIONS:
      raise ValueError(f"mlp_activation must be one of {ACTIVATIONS}, got {self.mlp_activation!r}")
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")

  @property
  def local_layers(self) -> tuple[bool, ...]:
    """Per layer: True where it is a local (sliding-window) layer. Gemma 3 interleaves
    five local layers with one global (pattern 6): layer i is global when (i+1) % 6 == 0."""
    if self.sliding_window is None:
      return (False,) * self.num_layers
    n = self.sliding_window_pattern
    return tuple(n <= 0 or (i + 1) % n != 0 for i in range(self.num_layers))

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @property
  def num_params(self) -> int:
    """Parameter count computed from the shapes (checked against eval_shape in tests)."""
    d, f, l = self.embed_dim, self.mlp_dim, self.num_layers
    nh, kh = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
    per_layer = d * nh + 2 * d * kh + nh * d + 3 * d * f + 2 * d
    if self.qkv_bias:
      per_layer += nh + 2 * kh
    per_layer += 2 * self.head_dim * self.qk_norm + 2 * d * self.post_norms
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return emb + l * per_layer + d


# What every dense Qwen3 shares (their config.json: no q/k/v bias, RMSNorm on q and k
# per head, head_dim 128 whatever the width, theta 1e6, 40960 positions, tied
# embeddings up to 4B; eos is <|im_end|>).
_QWEN3 = dict(
    vocab_size=151936, head_dim=128, num_kv_heads=8, rope_theta=1_000_000.0, norm_eps=1e-6,
    qk_norm=True, tie_embeddings=True, max_position_embeddings=40960,
    bos_token_id=151643, eos_token_id=151645, architecture="Qwen3ForCausalLM")

# What every Gemma 3 text model shares (HF Gemma3TextConfig defaults).
_GEMMA3 = dict(
    rope_theta=1_000_000.0, rope_local_theta=10_000.0, norm_eps=1e-6, tie_embeddings=True,
    mlp_activation="gelu_tanh", norm_scale_offset=1.0, post_norms=True, qk_norm=True,
    embed_scale=True, query_pre_attn_scalar=256.0, sliding_window=512,
    sliding_window_pattern=6, architecture="Gemma3ForCausalLM")

PRESETS: dict[str, ModelConfig] = {
    # Small enough for CPU tests; vocabulary matches the SmolLM2 tokenizer so the
    # tiny model can run the real entry points with the real chat template.
    "tiny": ModelConfig(
        vocab_size=49152, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2,
        head_dim=16, mlp_dim=128, rope_theta=10000.0, norm_eps=1e-5,
        tie_embeddings=True, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2),
    "smollm2_135m": ModelConfig(
        vocab_size=49152, num_layers=30, embed_dim=576, num_heads=9, num_kv_heads=3,
        head_dim=64, mlp_dim=1536, rope_theta=100000.0, norm_eps=1e-5,
        tie_embeddings=True, max_position_embeddings=8192,
        bos_token_id=1, eos_token_id=2),
    "smollm2_360m": ModelConfig(
        vocab_size=49152, num_layers=32, embed_dim=960, num_heads=15, num_kv_heads=5,
        head_dim=64, mlp_dim=2560, rope_theta=100000.0, norm_eps=1e-5,
        tie_embeddings=True, max_position_embeddings=8192,
        bos_token_id=1, eos_token_id=2),
    "llama3_2_1b": ModelConfig(
        vocab_size=128256, num_layers=16, embed_dim=2048, num_heads=32, num_kv_heads=8,
        head_dim=64, mlp_dim=8192, rope_theta=500000.0, norm_eps=1e-5,
        rope_scaling=RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192),
        tie_embeddings=True, max_position_embeddings=131072,
        bos_token_id=128000, eos_token_id=(128001, 128008, 128009)),
    "qwen2_5_0_5b": ModelConfig(
        vocab_size=151936, num_layers=24, embed_dim=896, num_heads=14, num_kv_heads=2,
        head_dim=64, mlp_dim=4864, rope_theta=1000000.0, norm_eps=1e-6,
        tie_embeddings=True, qkv_bias=True, max_position_embeddings=32768,
        bos_token_id=None, eos_token_id=151645, architecture="Qwen2ForCausalLM"),
    "qwen3_0_6b": ModelConfig(num_layers=28, embed_dim=1024, num_heads=16, mlp_dim=3072,
                              **_QWEN3),
    "qwen3_1_7b": ModelConfig(num_layers=28, embed_dim=2048, num_heads=16, mlp_dim=6144,
                              **_QWEN3),
    "qwen3_4b": ModelConfig(num_layers=36, embed_dim=2560, num_heads=32, mlp_dim=9728,
                            **_QWEN3),
    # Mistral 7B v0.3: Llama's layout, untied, no sliding window (v0.1's 4096 window is
    # read from its config.json as sliding_window with pattern 0).
    "mistral_7b_v0_3": ModelConfig(
        vocab_size=32768, num_layers=32, embed_dim=4096, num_heads=32, num_kv_heads=8,
        head_dim=128, mlp_dim=14336, rope_theta=1_000_000.0, norm_eps=1e-5,
        tie_embeddings=False, max_position_embeddings=32768,
        bos_token_id=1, eos_token_id=2, architecture="MistralForCausalLM"),
    # Gemma 3: eos is <eos> (1) and <end_of_turn> (106), as in its generation_config.
    "gemma3_270m": ModelConfig(
        vocab_size=262144, num_layers=18, embed_dim=640, num_heads=4, num_kv_heads=1,
        head_dim=256, mlp_dim=2048, max_position_embeddings=32768,
        bos_token_id=2, eos_token_id=(1, 106), **_GEMMA3),
    "gemma3_1b": ModelConfig(
        vocab_size=262144, num_layers=26, embed_dim=1152, num_heads=4, num_kv_heads=1,
        head_dim=256, mlp_dim=6912, max_position_embeddings=32768,
        bos_token_id=2, eos_token_id=(1, 106), **_GEMMA3),
    # Gemma 3 layout at test size: SmolLM2's vocabulary (so it runs the real entry
    # points with a tokenizer) and a window of 8 so short prompts exercise it.
    "gemma3_tiny": ModelConfig(
        vocab_size=49152, num_layers=3, embed_dim=64, num_heads=4, num_kv_heads=2,
        head_dim=16, mlp_dim=128, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, **dict(_GEMMA3, sliding_window=8,
                                               sliding_window_pattern=3,
                                               query_pre_attn_scalar=16.0)),
}


def get_preset(name: str) -> ModelConfig:
  """Returns the preset `name`; accepts '-' for '_' ("smollm2-135m")."""
  key = name.replace("-", "_")
  if key not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
  return PRESETS[key]
