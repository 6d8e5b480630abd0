"""Weights in and out: presets, HF safetensors directories and GGUF files in; HF
directories (transformers-loadable) out. Tokenizers come through transformers."""

from selfimprove_jax.weights.adapters import export_peft
from selfimprove_jax.weights.export import check_dtype, ensure_out_dir, export
from selfimprove_jax.weights.load import (DEFAULT_MODEL, LoadedModel, load, resolve,
                                          without_chat_template)
