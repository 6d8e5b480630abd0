"""A LoRA run's adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`,
which `peft.PeftModel.from_pretrained(base, DIR)` loads onto the transformers base model
(and vLLM / TGI serve as LoRA adapters). The base is the run's `config.model`, exported
on its own (`export --model SPEC`) when it is not already an HF directory.

The two conventions agree once transposed. Ours (model/lora.py) adds
scale * A @ B to W in our einsum layout [in..., out...], A [in..., r], B [r, out...];
PEFT adds scaling * lora_B.weight @ lora_A.weight to the torch Linear weight [out, in],
with lora_A.weight [r, in] and lora_B.weight [out, r]. Since the HF weight is our W
flattened and transposed (weights/hf.py), lora_A.weight = A.T and lora_B.weight = B.T
(inputs and outputs flattened in the same order), and PEFT's scaling lora_alpha / r is
ours alpha / rank, so r and lora_alpha are written as they are.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
from jax.sharding import Mesh

from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.model.lora import LoraConfig
from selfimprove_jax.runtime import sharding as sharding_lib
from selfimprove_jax.weights import hf, run_dir
from selfimprove_jax.weights.export import (DTYPES, cast_tensors, check_dtype,
                                            ensure_out_dir, host_array)
from selfimprove_jax.weights.load import _check_finite, load

# PEFT prefixes every adapted module with the wrapper's own path (PeftModelForCausalLM
# -> LoraModel -> the transformers model).
_PREFIX = "base_model.model."


def _module(config: ModelConfig, key: str, i: int) -> str:
  """HF module path of layer i's matrix `key` (q -> model.layers.i.self_attn.q_proj)."""
  return hf.layer_name(config, key, i).removesuffix(".weight")


def peft_tensors(adapters: dict, config: ModelConfig) -> dict:
  """Our adapters {"layers": {key: {"a", "b"}}} -> PEFT-named fp32 host arrays."""
  out = {}
  for key, ab in adapters["layers"].items():
    a, b = host_array(ab["a"]), host_array(ab["b"])      # [L, in..., r], [L, r, out...]
    L, r = a.shape[0], a.shape[-1]
    a, b = a.reshape(L, -1, r), b.reshape(L, r, -1)
    for i in range(L):
      name = _PREFIX + _module(config, key, i)
      out[name + ".lora_A.weight"] = a[i].T               # [r, in]
      out[name + ".lora_B.weight"] = b[i].T               # [out, r]
  return out


def peft_config(lora: LoraConfig, config: ModelConfig, adapters: dict, base_spec: str) -> dict:
  """adapter_config.json: the fields PEFT's LoraConfig reads, set to our semantics
  (no dropout, no bias, plain alpha / r scaling, every layer adapted)."""
  alpha = int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha
  return {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_spec,
      "r": lora.rank, "lora_alpha": alpha,
      "target_modules": sorted(_module(config, k, 0).rsplit(".", 1)[-1]
                               for k in adapters["layers"]),
      "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
      "use_dora": False, "init_lora_weights": True, "inference_mode": True,
      "modules_to_save": None, "layers_to_transform": None, "revision": None,
  }


def export_peft(spec: str, out_dir: str, *, force: bool = False, dtype: str = "float32",
                mesh: Optional[Mesh] = None) -> str:
  """Writes the LoRA adapters of the run `spec` (DIR or DIR@K) to `out_dir` in PEFT's
  format, as `dtype`. Anything but a LoRA run is a one-line UserError, raised before
  the checkpoint is read when `spec` is no run at all. Returns out_dir."""
  check_dtype(dtype)
  parsed = run_dir.parse_run_spec(spec)
  if parsed is None:
    raise UserError(f"{spec}: --peft exports the adapters of a LoRA run's workdir (DIR or "
                    f"DIR@K); a preset, file or directory has none (export without --peft)")
  ensure_out_dir(out_dir, force, create=True)   # a path that cannot be made fails first
  mesh = mesh or sharding_lib.single_device_mesh()
  run = run_dir.restore_run(parsed[0], parsed[1], load, mesh)
  if run.lora is None:
    raise UserError(f"{run.source}: trained without LoRA (lora.rank = 0), so it has no "
                    f"adapters; export it without --peft for its full weights")
  _check_finite(run.trained, f"checkpoint {run.source}")
  return write_peft(run.trained, run.lora, run.base.config, run.base_spec, out_dir,
                    dtype=dtype)


def write_peft(adapters: dict, lora: LoraConfig, config: ModelConfig, base_spec: str,
               out_dir: str, *, dtype: str = "float32") -> str:
  """Writes `adapters` (trained for `config`'s model, named `base_spec`) to `out_dir`
  in PEFT's format, as `dtype`. Every process joins the gather; process 0 writes."""
  check_dtype(dtype)
  tensors = cast_tensors(peft_tensors(adapters, config), dtype)
  if jax.process_index() != 0:
    return out_dir
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
    json.dump(peft_config(lora, config, adapters, base_spec), f, indent=2, sort_keys=True)
  hf.write_safetensors(tensors, os.path.join(out_dir, "adapter_model.safetensors"),
                       DTYPES[dtype])
  return out_dir
