"""Export beyond fp32: `export --dtype bfloat16 / float16` loads in transformers with
logits equal to ours at that precision, and a LoRA run's adapters exported for PEFT
(`export --peft`) load onto the transformers base model with logits equal to our
merged export's. All on the tiny preset."""

import json
import os

import jax
import numpy as np
import pytest

try:
  import peft
  import torch
  import transformers
except ImportError as e:  # no silent skip: these are the outside references
  raise ImportError("tests/test_export_peft.py needs peft, torch and transformers: "
                    "pip install -e '.[test]'") from e

from selfimprove_jax import cli, weights
from selfimprove_jax.errors import UserError
from selfimprove_jax.model import forward, get_preset, init_params
from selfimprove_jax.model import lora as lora_lib
from selfimprove_jax.weights import adapters as adapters_lib
from selfimprove_jax.weights import run_dir
from selfimprove_jax.weights.export import DTYPES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 64
TOKENS = np.random.default_rng(0).integers(0, V, size=(2, 12))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _torch_logits(model_or_dir, tokens=TOKENS, dtype=torch.float32):
  model = model_or_dir
  if isinstance(model_or_dir, str):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_or_dir, dtype=dtype).eval()
  with torch.no_grad():
    return model(torch.as_tensor(tokens)).logits.float().numpy()


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype, tol", [("bfloat16", 2e-2), ("float16", 2e-3)])
def test_half_precision_export_loads_in_transformers(tmp_path, dtype, tol):
  config = get_preset("tiny").replace(vocab_size=V)
  params = init_params(config, seed=0)
  ours = np.asarray(forward(params, config, TOKENS))
  out = weights.export(params, config, out_dir=str(tmp_path / dtype), dtype=dtype)
  with open(os.path.join(out, "config.json")) as f:
    cfg = json.load(f)
  assert cfg.get("dtype", cfg.get("torch_dtype")) == dtype
  auto = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto")
  assert auto.dtype == getattr(torch, dtype)
  # the weights are ours rounded: fp32 compute on them is within the rounding of ours,
  # and not equal to it (the file really holds the narrower type)
  rel = _rel(_torch_logits(out), ours)
  assert 1e-6 < rel <= tol, rel
  assert _rel(_torch_logits(auto), ours) <= 5 * tol   # transformers computing in dtype
  # our loader reads the file back as the rounded weights
  back = weights.load(out)
  dt = DTYPES[dtype]
  np.testing.assert_array_equal(np.asarray(back.params["layers"]["q"]),
                                np.asarray(params["layers"]["q"]).astype(dt).astype(np.float32))


def test_float16_refuses_values_it_cannot_hold(tmp_path):
  config = get_preset("tiny").replace(vocab_size=V)
  params = init_params(config, seed=0)
  params = dict(params, final_norm=params["final_norm"].at[0].set(1e6))
  with pytest.raises(UserError, match="model.norm.weight.*float16"):
    weights.export(params, config, out_dir=str(tmp_path / "o"), dtype="float16")
  weights.export(params, config, out_dir=str(tmp_path / "b"), dtype="bfloat16")  # fits


# ----------------------------------------------------------------------------- PEFT


def _adapters(config, lora, seed=1):
  """Adapters with B != 0 (as after training), so they change the model."""
  ad = lora_lib.init_lora(config, lora, seed=seed)
  return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed), x.shape), ad)


def _peft_logits(base_dir, adapter_dir):
  base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
  return _torch_logits(peft.PeftModel.from_pretrained(base.eval(), adapter_dir).eval())


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_peft_adapters_equal_our_merged_export(tmp_path, arch):
  """Every target (o and down have multi-dim / F-wide inputs), alpha != rank."""
  config = get_preset("tiny").replace(vocab_size=V, architecture=arch,
                                      qkv_bias=arch == "Qwen2ForCausalLM")
  lora = lora_lib.LoraConfig(rank=4, alpha=12.0, targets=("*",))
  base = init_params(config, seed=0)
  ad = _adapters(config, lora)
  merged = lora_lib.merge(base, ad, lora)
  base_dir = weights.export(base, config, out_dir=str(tmp_path / "base"))
  merged_dir = weights.export(merged, config, out_dir=str(tmp_path / "merged"))
  ad_dir = adapters_lib.write_peft(ad, lora, config, base_dir, str(tmp_path / "ad"))
  with open(os.path.join(ad_dir, "adapter_config.json")) as f:
    cfg = json.load(f)
  assert cfg["r"] == 4 and cfg["lora_alpha"] == 12 and cfg["peft_type"] == "LORA"
  assert sorted(cfg["target_modules"]) == sorted(
      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
  ref = _torch_logits(merged_dir)
  got = _peft_logits(base_dir, ad_dir)
  assert _rel(got, ref) <= 1e-5
  assert _rel(_torch_logits(base_dir), ref) > 1e-2   # the adapters do change the model
  np.testing.assert_allclose(ref, np.asarray(forward(merged, config, TOKENS)),
                             rtol=1e-4, atol=1e-4)
  # PEFT's own config of the file: its scaling is ours
  pcfg = peft.PeftConfig.from_pretrained(ad_dir)
  assert pcfg.lora_alpha / pcfg.r == lora.scale


def test_lora_run_exports_peft_adapters_through_the_cli(tmp_path):
  """configs/tiny.py with LoRA on q,v,down for one iteration; `export --peft` of the
  workdir loads onto `export --model tiny` (its base) in PEFT and equals `export` of
  the workdir (merged); bfloat16 adapters are within bf16 rounding of it."""
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  run = str(tmp_path / "run")
  config = load_config(os.path.join(ROOT, "configs", "tiny.py"), [
      "lora.rank=4", "lora.alpha=8.0", "lora.targets=q,v,down", "loop.iterations=1",
      "optim.learning_rate=1e-2", "log.plot=false", "task.heldout_size=2",
      "task.test_size=0"])
  assert loop.run(config, run, log=lambda *_: None)["iteration"] == 1
  out = {name: str(tmp_path / name) for name in ("base", "merged", "ad", "ad16")}
  assert cli.main(["export", "--model", "tiny", "--out", out["base"]]) == 0
  assert cli.main(["export", "--model", run, "--out", out["merged"]]) == 0
  assert cli.main(["export", "--model", run, "--out", out["ad"], "--peft"]) == 0
  assert cli.main(["export", "--model", f"{run}@1", "--out", out["ad16"], "--peft",
                   "--dtype", "bfloat16"]) == 0
  assert sorted(os.listdir(out["ad"])) == ["adapter_config.json", "adapter_model.safetensors"]
  with open(os.path.join(out["ad"], "adapter_config.json")) as f:
    cfg = json.load(f)
  assert cfg["base_model_name_or_path"] == "tiny" and cfg["r"] == 4
  assert sorted(cfg["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
  tokens = np.random.default_rng(1).integers(0, 49152, size=(2, 16))
  ref = _torch_logits(out["merged"], tokens)
  base = transformers.AutoModelForCausalLM.from_pretrained(out["base"], dtype=torch.float32)
  assert _rel(_torch_logits(base.eval(), tokens), ref) > 1e-3   # training moved it
  got = _torch_logits(peft.PeftModel.from_pretrained(base, out["ad"]).eval(), tokens)
  assert _rel(got, ref) <= 1e-5
  base16 = transformers.AutoModelForCausalLM.from_pretrained(out["base"], dtype=torch.float32)
  got16 = _torch_logits(peft.PeftModel.from_pretrained(base16, out["ad16"]).eval(), tokens)
  assert _rel(got16, ref) <= 2e-2


def test_peft_export_of_a_run_without_lora_is_one_line(tmp_path, monkeypatch):
  """A full fine-tuning run has no adapters (its restore gives lora=None)."""
  model = weights.load("tiny")
  fake = run_dir.RunWeights(base=model, lora=None, trained=model.params,
                            source=f"{tmp_path}@1", base_spec="tiny")
  monkeypatch.setattr(run_dir, "parse_run_spec", lambda spec: (str(tmp_path), None))
  monkeypatch.setattr(run_dir, "restore_run", lambda *a, **k: fake)
  with pytest.raises(UserError) as e:
    weights.export_peft(str(tmp_path), str(tmp_path / "out"))
  msg = str(e.value)
  assert "\n" not in msg and f"{tmp_path}@1" in msg and "without LoRA" in msg
