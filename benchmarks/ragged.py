"""Ragged sampling: completion lengths spread over a long tail, as reasoning answers do.
The continuous sampler vs the bucketed one, transformers `generate` and Tunix's
sampler (when importable), same weights, same rows, one run.

  python benchmarks/ragged.py                                  # CPU: 64 rows, 16 slots, 8-128
  python benchmarks/ragged.py --rows 1024 --slots 256 --max_len 512 --dtype bfloat16  # GPU

Every row gets a random prompt of --prompt_len tokens and a completion length drawn
from a log-normal (median --median, sigma --sigma) clipped to [--min_len, --max_len]
(`--lengths fixed`: every row --max_len). A row ends exactly at its length: ours
through the per-prompt token budget (`max_new_per_prompt`, finish "length"), torch
through a logits processor that forces EOS at that step. Rows are in random order
(a sampler does not know lengths in advance).
  useful tokens/s = sum of drawn lengths / wall time of the whole request
(prefill included; one untimed warm-up call with every length 1, same shapes).
Ours: `Sampler.generate` with batching="continuous" (--slots decode slots) and
"bucketed" (chunks of --slots rows, each decoded until its longest row ends).
Torch: `model.generate(do_sample=True)` in chunks of --slots rows, SDPA attention.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from machine import cpu_name
from sampling import torch_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def workload(config, args):
  """(prompts [R, prompt_len] int32, lengths [R] int) for the run."""
  import numpy as np
  rs = np.random.RandomState(args.seed)
  prompts = rs.randint(3, config.vocab_size, (args.rows, args.prompt_len)).astype(np.int32)
  if args.lengths == "fixed":
    lengths = np.full((args.rows,), args.max_len)
  else:
    drawn = np.exp(np.log(args.median) + args.sigma * rs.randn(args.rows))
    lengths = np.clip(np.round(drawn), args.min_len, args.max_len).astype(int)
  return prompts, lengths


def bench_ours(config, params, prompts, lengths, batching, args) -> dict:
  import jax
  from selfimprove_jax.sampling import Sampler, SamplingParams
  sampler = Sampler(config, eos_ids=(), max_batch=args.slots, batching=batching)
  sp = SamplingParams(temperature=1.0, max_new_tokens=args.max_len)
  rows = prompts.tolist()
  t0 = time.perf_counter()
  sampler.generate(params, rows, sp, seed=0, max_new_per_prompt=[1] * len(rows))  # compiles
  warmup_s = time.perf_counter() - t0
  steps0 = sampler.decode_steps
  t0 = time.perf_counter()
  out = sampler.generate(params, rows, sp, seed=1, max_new_per_prompt=lengths.tolist())
  seconds = time.perf_counter() - t0
  steps = sampler.decode_steps - steps0
  made = [c.num_tokens for c in out]
  assert made == lengths.tolist(), "every row ends at its drawn length"
  device = jax.devices()[0]
  # Slot use: useful tokens / (loop steps x slots), independent of the machine's load.
  return {"tokens_per_s": sum(made) / seconds, "call_s": seconds, "warmup_s": warmup_s,
          "compilations": sampler.num_compilations, "decode_steps": steps,
          "slot_use": sum(made) / (steps * args.slots),
          "device": device.device_kind if device.platform != "cpu" else cpu_name()}


def bench_torch(model, prompts, lengths, args) -> dict:
  import torch
  import transformers
  cuda = torch.cuda.is_available()
  dev = next(model.parameters()).device
  eos = 2

  class ForceEos(transformers.LogitsProcessor):
    """EOS at each row's drawn length: before it EOS is banned, at it forced."""
    def __init__(self, lens):
      self.lens = torch.as_tensor(lens, device=dev)

    def __call__(self, input_ids, scores):
      made = input_ids.shape[1] - args.prompt_len     # tokens generated so far
      at_end = (made + 1 >= self.lens)[:, None]
      forced = torch.full_like(scores, -float("inf"))
      forced[:, eos] = 0.0
      scores = scores.clone()
      scores[:, eos] = -float("inf")
      return torch.where(at_end, forced, scores)

  def run(ids, lens):
    with torch.no_grad():
      return model.generate(
          input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
          temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.max_len,
          eos_token_id=eos, pad_token_id=0,
          logits_processor=transformers.LogitsProcessorList([ForceEos(lens)]))

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  ids_all = torch.from_numpy(prompts).long().to(dev)
  run(ids_all[:args.slots], [2] * min(args.slots, len(prompts)))   # warm-up
  sync()
  t0 = time.perf_counter()
  made = 0
  for i in range(0, len(prompts), args.slots):
    out = run(ids_all[i:i + args.slots], lengths[i:i + args.slots].tolist())
    gen = out[:, args.prompt_len:]
    # Tokens up to and including the first EOS of each row.
    first = (gen == eos).int().argmax(dim=1) + 1
    made += int(first.sum())
  sync()
  seconds = time.perf_counter() - t0
  assert made == int(lengths.sum()), (made, int(lengths.sum()))
  return {"tokens_per_s": made / seconds, "call_s": seconds,
          "device": torch.cuda.get_device_name() if cuda else cpu_name(),
          "threads": torch.get_num_threads(), "torch": torch.__version__}


def bench_tunix(config, params, prompts, lengths, args) -> dict:
  """Tunix's sampler when it imports; otherwise the reason, printed as the result."""
  try:
    import tunix  # noqa: F401
  except Exception as e:  # noqa: BLE001 - any import failure is reported, not raised
    return {"skipped": f"tunix not importable ({type(e).__name__}: {e})"}
  return {"skipped": "tunix imports, but no adapter from our params to its model is "
                     "written yet"}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="smollm2_135m", help="model preset (random weights)")
  p.add_argument("--rows", type=int, default=64, help="completions in the request")
  p.add_argument("--slots", type=int, default=16, help="decode slots / rows per chunk")
  p.add_argument("--prompt_len", type=int, default=64)
  p.add_argument("--lengths", default="lognormal", choices=("lognormal", "fixed"))
  p.add_argument("--median", type=float, default=24.0)
  p.add_argument("--sigma", type=float, default=1.0)
  p.add_argument("--min_len", type=int, default=8)
  p.add_argument("--max_len", type=int, default=128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute dtype (default: bfloat16 on an accelerator, float32 on CPU)")
  p.add_argument("--sides", default="continuous,bucketed,torch,tunix",
                 help="which samplers to time, in this order")
  args = p.parse_args(argv)

  import jax
  from selfimprove_jax.model import get_preset, init_params
  if args.dtype is None:
    args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  config = get_preset(args.model).replace(dtype=args.dtype)
  params = init_params(config, seed=0)
  prompts, lengths = workload(config, args)
  print(f"{args.model} {args.dtype}: {args.rows} rows, prompt {args.prompt_len}, lengths "
        f"{args.lengths} min {lengths.min()} median {int(sorted(lengths)[len(lengths) // 2])} "
        f"mean {lengths.mean():.1f} max {lengths.max()}, {args.slots} slots", flush=True)
  results = {"args": vars(args), "total_tokens": int(lengths.sum()), "sides": {}}
  for side in args.sides.split(","):
    if side in ("continuous", "bucketed"):
      r = bench_ours(config, params, prompts, lengths, side, args)
    elif side == "torch":
      r = bench_torch(torch_model(config, params, args.dtype), prompts, lengths, args)
    elif side == "tunix":
      r = bench_tunix(config, params, prompts, lengths, args)
    else:
      raise SystemExit(f"unknown side {side!r}")
    results["sides"][side] = r
    if "skipped" in r:
      print(f"  {side:>10}: {r['skipped']}", flush=True)
    else:
      steps = (f", {r['decode_steps']} decode steps, slot use {r['slot_use']:.0%}"
               if "decode_steps" in r else "")
      print(f"  {side:>10}: {r['tokens_per_s']:,.1f} useful tok/s ({r['call_s']:.1f} s{steps}) "
            f"on {r['device']}", flush=True)
  timed = results["sides"]
  if "continuous" in timed:
    for other in ("bucketed", "torch"):
      if other in timed:
        ratio = timed["continuous"]["tokens_per_s"] / timed[other]["tokens_per_s"]
        results[f"continuous_vs_{other}"] = ratio
        print(f"  continuous / {other}: {ratio:.2f}x", flush=True)
  if "continuous" in timed and "bucketed" in timed:
    steps = timed["bucketed"]["decode_steps"] / timed["continuous"]["decode_steps"]
    results["bucketed_steps_over_continuous"] = steps
    print(f"  decode steps, bucketed / continuous: {steps:.2f}x (load-independent)", flush=True)
  print(json.dumps(results))
  return results


if __name__ == "__main__":
  main()
