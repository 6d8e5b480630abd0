"""Sampling throughput: our Sampler vs transformers `generate` (torch), same shape and
same weights, in one run.

  python benchmarks/sampling.py                          # CPU: batch 1,4; prompt 64; 32 new; fp32
  python benchmarks/sampling.py --batch 1,16,64,256 --new_tokens 256 --dtype bfloat16  # GPU shape
  python benchmarks/sampling.py --batch 100 --prompt_len 46 --shared_prefix 36 --new_tokens 16
      # the quickstart's shape: chat prompts whose first 36 tokens (system prompt) agree;
      # also times our whole-prompt prefill (share_prefix=False) for the ratio

Both sides run the smollm2_135m architecture with the same random weights (ours are
copied into a transformers LlamaForCausalLM), random prompts of exactly --prompt_len
tokens, and sample --new_tokens tokens per row at temperature 1 (no top-k/top-p),
EOS ignored, so every row produces exactly --new_tokens tokens.
  tokens/s = batch * new_tokens / wall time of one whole call
(prefill included, after one untimed warm-up call that compiles / autotunes).
Ours: `Sampler.generate` end to end (host prompts in, host completions out), compute
in --dtype, fp32 params. Torch: `model.generate(do_sample=True)` with SDPA attention,
the model cast to bf16 on CUDA with --dtype bfloat16, fp32 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from machine import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# jax and torch share the accelerator in this process: no up-front 75% grab by XLA.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _prompts(config, batch: int, prompt_len: int, seed: int = 0, shared: int = 0):
  import numpy as np
  rs = np.random.RandomState(seed)
  # Avoid ids 0-2 (pad/bos/eos in the SmolLM2 vocabulary).
  out = rs.randint(3, config.vocab_size, (batch, prompt_len)).astype(np.int32)
  out[:, :shared] = out[0, :shared]    # a common head, as a chat template's system prompt
  return out


def bench_jax(config, params, batch: int, args, share_prefix: bool = True) -> dict:
  import jax
  from selfimprove_jax.sampling import Sampler, SamplingParams
  sampler = Sampler(config, eos_ids=(), max_batch=batch, share_prefix=share_prefix)
  sp = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
  prompts = _prompts(config, batch, args.prompt_len, shared=args.shared_prefix).tolist()
  t0 = time.perf_counter()
  sampler.generate(params, prompts, sp, seed=0)          # compiles
  warmup_s = time.perf_counter() - t0
  times = []
  for r in range(args.repeats):
    t0 = time.perf_counter()
    out = sampler.generate(params, prompts, sp, seed=r + 1)
    times.append(time.perf_counter() - t0)
  generated = sum(c.num_tokens for c in out)
  assert generated == batch * args.new_tokens, generated
  seconds = min(times)
  device = jax.devices()[0]
  return {"tokens_per_s": generated / seconds, "call_s": seconds, "warmup_s": warmup_s,
          "compilations": sampler.num_compilations, "shared_tokens": sampler.shared_tokens,
          "device": device.device_kind if device.platform != "cpu" else cpu_name()}


def torch_model(config, params, dtype: str):
  """transformers LlamaForCausalLM holding exactly our params."""
  import torch
  import transformers
  from selfimprove_jax.weights import hf
  from selfimprove_jax.weights.export import hf_tensors
  cuda = torch.cuda.is_available()
  hf_config = transformers.LlamaConfig(**{**hf.config_to_hf(config), "pad_token_id": 0})
  hf_config._attn_implementation = "sdpa"
  model = transformers.LlamaForCausalLM(hf_config)
  state = {k: torch.from_numpy(v) for k, v in hf_tensors(params, config).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
  model.tie_weights()
  model = model.to("cuda" if cuda else "cpu").eval()
  if cuda and dtype == "bfloat16":
    model = model.to(torch.bfloat16)
  return model


def bench_torch(model, config, batch: int, args) -> dict:
  import torch
  cuda = torch.cuda.is_available()
  dev = next(model.parameters()).device
  ids = torch.from_numpy(_prompts(config, batch, args.prompt_len)).long().to(dev)
  mask = torch.ones_like(ids)
  sync = torch.cuda.synchronize if cuda else (lambda: None)

  def run(new):
    with torch.no_grad():
      return model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                            temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                            min_new_tokens=new, pad_token_id=0)

  run(min(4, args.new_tokens))    # warm-up
  sync()
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    out = run(args.new_tokens)
    sync()
    times.append(time.perf_counter() - t0)
  generated = (out.shape[1] - args.prompt_len) * batch
  assert generated == batch * args.new_tokens, out.shape
  seconds = min(times)
  return {"tokens_per_s": generated / seconds, "call_s": seconds,
          "device": torch.cuda.get_device_name() if cuda else cpu_name(),
          "torch": torch.__version__, "threads": torch.get_num_threads(),
          "dtype": str(next(model.parameters()).dtype)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="smollm2_135m", help="model preset (random weights)")
  p.add_argument("--batch", default="1,4", help="comma-separated batch sizes")
  p.add_argument("--prompt_len", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=32)
  p.add_argument("--repeats", type=int, default=2, help="timed calls per side (best kept)")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute dtype (default: bfloat16 on an accelerator, float32 on CPU)")
  p.add_argument("--compare_torch", type=int, default=1, help="also time transformers")
  p.add_argument("--shared_prefix", type=int, default=0,
                 help="the prompts' first N tokens agree; also time whole-prompt prefill")
  args = p.parse_args(argv)

  import jax
  from selfimprove_jax.model import get_preset, init_params
  if args.dtype is None:
    args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  config = get_preset(args.model).replace(dtype=args.dtype)
  params = init_params(config, seed=0)
  batches = [int(b) for b in str(args.batch).split(",")]
  model = torch_model(config, params, args.dtype) if args.compare_torch else None

  results = {"args": vars(args), "runs": []}
  for batch in batches:
    run = {"batch": batch, "jax": bench_jax(config, params, batch, args)}
    ours = run["jax"]
    line = (f"{args.model} batch {batch:>3} prompt {args.prompt_len} new {args.new_tokens} "
            f"{args.dtype}: jax {ours['tokens_per_s']:,.0f} tok/s "
            f"({ours['call_s']:.2f} s/call, warm-up {ours['warmup_s']:.1f} s) on {ours['device']}")
    if args.shared_prefix:
      whole = run["jax_whole_prompts"] = bench_jax(config, params, batch, args, False)
      run["shared_speedup"] = ours["tokens_per_s"] / whole["tokens_per_s"]
      line += (f" | whole-prompt prefill {whole['tokens_per_s']:,.0f} tok/s "
               f"({whole['call_s']:.2f} s/call): shared {run['shared_speedup']:.2f}x")
    if model is not None:
      theirs = run["torch"] = bench_torch(model, config, batch, args)
      run["ratio"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
      line += (f" | torch {theirs['tokens_per_s']:,.0f} tok/s ({theirs['dtype']}, "
               f"{theirs['threads']} threads) on {theirs['device']} | ratio {run['ratio']:.2f}x")
    print(line, flush=True)
    results["runs"].append(run)
  print(json.dumps(results))
  return results


if __name__ == "__main__":
  main()
