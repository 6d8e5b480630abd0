"""Model configurations for the Llama family: one frozen dataclass and named presets.

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


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a Llama-family decoder. Params are always stored in fp32;
  `dtype` is the compute dtype ("float32" or "bfloat16")."""
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

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.remat_policy not in ("nothing", "dots"):
      raise ValueError(f"remat_policy must be 'nothing' or 'dots', got {self.remat_policy!r}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

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
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return emb + l * per_layer + d


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
}


def get_preset(name: str) -> ModelConfig:
  """Returns the preset `name`; accepts '-' for '_' ("smollm2-135m")."""
  key = name.replace("-", "_")
  if key not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
  return PRESETS[key]
