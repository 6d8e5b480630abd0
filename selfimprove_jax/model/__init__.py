"""The Llama-family model: configs and presets, the Flax module, parameter creation."""

from selfimprove_jax.model.config import PRESETS, ModelConfig, RopeScaling, get_preset
from selfimprove_jax.model.llama import (Transformer, causal_mask, forward, init_cache,
                                         project_logits)
from selfimprove_jax.model.params import (abstract_params, count_params, init_params,
                                          logical_axes, param_shardings)
