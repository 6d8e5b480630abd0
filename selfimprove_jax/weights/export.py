"""Export to an HF directory that `transformers.AutoModelForCausalLM.from_pretrained`
loads: config.json, model.safetensors (HF names; float32, or bfloat16 / float16 to
halve the files), generation_config.json and the tokenizer files (chat template
included)."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_dtypes
import numpy as np

from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import ModelConfig
from selfimprove_jax.weights import hf
from selfimprove_jax.weights.load import LoadedModel

# Files an earlier export may have left that would shadow or contradict the new one.
_STALE = ("model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

# Export dtypes: the params are fp32 masters; the file may hold them rounded to these.
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def check_dtype(dtype: str) -> None:
  """One-line UserError for a dtype export cannot write."""
  if dtype not in DTYPES:
    raise UserError(f"export --dtype {dtype!r}: not one of {', '.join(DTYPES)}")


def cast_tensors(tensors: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
  """`tensors` rounded to `dtype`; a value beyond its range (float16 tops out at 65504)
  is a UserError naming the tensor, since it would be written as inf. Entries are taken
  out of `tensors` as they are cast, so the host holds one fp32 copy at most."""
  out = {}
  for name in list(tensors):
    x = tensors.pop(name)
    with np.errstate(over="ignore"):   # an overflow is reported below, by name
      y = np.asarray(x).astype(DTYPES[dtype], copy=False)
    if dtype != "float32" and not np.all(np.isfinite(y.astype(np.float32))):
      raise UserError(f"tensor {name!r} does not fit in {dtype} (|max| = "
                      f"{float(np.max(np.abs(x))):.4g}); export as bfloat16 or float32")
    out[name] = y
  return out


def ensure_out_dir(out_dir: str, force: bool = False, create: bool = False) -> None:
  """Refuses a non-empty `out_dir` unless `force` (checked before any slow work);
  with `create`, makes it now, so a path that cannot be created fails first too."""
  if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
    raise UserError(f"{out_dir}: exists and is not a directory")
  if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
    raise UserError(f"{out_dir}: directory is not empty (pass --force / force=True to "
                    f"overwrite)")
  if create:
    try:
      os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
      raise UserError(f"--out {out_dir} cannot be created: {e.strerror}") from None


def host_array(x) -> np.ndarray:
  """Full array on the host, also when its shards live on other processes."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x), np.float32)


def hf_tensors(params, config: ModelConfig) -> dict[str, np.ndarray]:
  """Our params -> HF-named fp32 host arrays."""
  global_keys, layer_keys = hf.param_keys(config)
  out = {hf.GLOBAL_NAMES[k]: hf.to_hf(k, host_array(params[k])) for k in global_keys}
  for key in layer_keys:
    stacked = host_array(params["layers"][key])
    for i in range(config.num_layers):
      out[hf.layer_name(config, key, i)] = hf.to_hf(key, stacked[i])
  return out


def export(model: Any, config: Optional[ModelConfig] = None, tokenizer: Any = None,
           out_dir: Optional[str] = None, *, force: bool = False,
           dtype: str = "float32") -> str:
  """Writes `model` (a LoadedModel, or params with `config`) and `tokenizer` (taken
  from the LoadedModel when not given; None writes no tokenizer files) to the HF
  directory `out_dir`, its weights as `dtype` (float32, bfloat16 or float16; config.json
  says which, so transformers' dtype="auto" loads that). Refuses a non-empty `out_dir`
  unless `force`. Returns out_dir."""
  if isinstance(model, LoadedModel):
    params, config = model.params, config or model.config
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
  else:
    params = model
  if config is None or out_dir is None:
    raise TypeError("export needs config (or a LoadedModel) and out_dir")
  check_dtype(dtype)
  ensure_out_dir(out_dir, force)
  hf_config = hf.config_to_hf(config)   # validates the architecture before writing
  hf_config["torch_dtype" if "torch_dtype" in hf_config else "dtype"] = dtype
  tensors = cast_tensors(hf_tensors(params, config), dtype)  # every process joins the gather
  if jax.process_index() != 0:
    return out_dir

  os.makedirs(out_dir, exist_ok=True)
  for name in _STALE:
    if os.path.exists(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  hf.write_safetensors(tensors, os.path.join(out_dir, "model.safetensors"), DTYPES[dtype])
  gen = {"bos_token_id": config.bos_token_id,
         "eos_token_id": (list(config.eos_token_id) if isinstance(config.eos_token_id, tuple)
                          else config.eos_token_id)}
  if tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is not None:
    gen["pad_token_id"] = tokenizer.pad_token_id
  with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
    json.dump({k: v for k, v in gen.items() if v is not None}, f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(out_dir)
  return out_dir
