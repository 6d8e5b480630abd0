"""One GRPO iteration, time per phase: sample G completions per prompt, score the
reference log-probs, take one policy-gradient update.

  python benchmarks/grpo_iteration.py                      # CPU: small shape (below)
  python benchmarks/grpo_iteration.py --prompts 64 --n 8 --new_tokens 256 \\
      --dtype bfloat16 --micro_batch 64                    # the GPU shape (target <= 3 s)

Random weights of --model; random prompts of --prompt_len tokens; completions sampled
at temperature 1 with the model's EOS ids (random weights rarely emit them, so most
rows run to --new_tokens: the fixed-length upper bound of the phase). Rewards are
random in {0, 1} (the verifier's cost is host string work, not timed here).
Phases, each timed after one untimed warm-up iteration that compiles everything:
  sample     `Sampler.generate` (automatic schedule), host prompts in, completions out
  reference  `make_logprob_fn` on the frozen reference params over [B, P + M] rows
  update     one `make_train_step` step, loss grpo (KL to the reference, k3,
             kl_coef 0.04), gradient accumulation over --micro_batch rows
  total      the three, plus building the batch on the host
"""

from __future__ import annotations

import argparse
import json
import os
import time

from machine import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def build_batch(prompts, completions, n: int, prompt_len: int, new_tokens: int, rs):
  """The right-padded grpo batch (optimize/losses.py format) of prompt + completion."""
  import numpy as np
  B, T = len(completions), prompt_len + new_tokens
  tokens = np.zeros((B, T), np.int32)
  input_mask = np.zeros((B, T), np.int32)
  loss_mask = np.zeros((B, T), np.float32)
  for r, c in enumerate(completions):
    L = c.num_tokens
    tokens[r, :prompt_len] = prompts[c.prompt_index]
    tokens[r, prompt_len:prompt_len + L] = c.tokens
    input_mask[r, :prompt_len + L] = 1
    loss_mask[r, prompt_len:prompt_len + L] = 1
  return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask,
          "rewards": rs.randint(0, 2, (B,)).astype(np.float32),
          "group_ids": np.repeat(np.arange(B // n), n).astype(np.int32)}


def iteration(sampler, sp, logprob_fn, step, state, ref_params, prompts, args, seed):
  """(state, seconds per phase) of one iteration."""
  import jax
  import numpy as np
  rs = np.random.RandomState(seed)
  times = {}
  t0 = time.perf_counter()
  out = sampler.generate(state.params, prompts.tolist(), sp, n=args.n, seed=seed)
  times["sample"] = time.perf_counter() - t0
  t = time.perf_counter()
  batch = build_batch(prompts, out, args.n, args.prompt_len, args.new_tokens, rs)
  times["batch"] = time.perf_counter() - t
  t = time.perf_counter()
  batch["ref_logprobs"] = jax.block_until_ready(
      logprob_fn(ref_params, batch["tokens"], batch["input_mask"]))
  times["reference"] = time.perf_counter() - t
  t = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times["update"] = time.perf_counter() - t
  times["total"] = time.perf_counter() - t0
  times["generated_tokens"] = int(sum(c.num_tokens for c in out))
  return state, times


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="smollm2_135m", help="model preset (random weights)")
  p.add_argument("--prompts", type=int, default=4)
  p.add_argument("--n", type=int, default=4, help="samples per prompt (G)")
  p.add_argument("--prompt_len", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=32)
  p.add_argument("--micro_batch", type=int, default=0, help="rows per micro-batch (0: all)")
  p.add_argument("--chunk", type=int, default=256, help="log-prob vocab chunk (positions)")
  p.add_argument("--max_batch", type=int, default=512, help="sampler slots / rows per call")
  p.add_argument("--iterations", type=int, default=1, help="timed iterations (best kept)")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute dtype (default: bfloat16 on an accelerator, float32 on CPU)")
  args = p.parse_args(argv)

  import jax
  import numpy as np
  from selfimprove_jax import optimize as opt
  from selfimprove_jax.model import get_preset, init_params
  from selfimprove_jax.runtime.sharding import make_mesh
  from selfimprove_jax.sampling import Sampler, SamplingParams
  if args.dtype is None:
    args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  config = get_preset(args.model).replace(dtype=args.dtype)
  mesh = make_mesh({"data": -1})
  cfg = opt.default_optim_config()
  cfg.update(loss="grpo", learning_rate=1e-6, schedule="constant",
             micro_batch_size=args.micro_batch, logprob_chunk=args.chunk)
  ref_params = init_params(config, 0, mesh)
  state = opt.create_train_state(config, cfg, init_params(config, 0, mesh), mesh)
  step = opt.make_train_step(config, cfg, mesh)
  logprob_fn = opt.make_logprob_fn(config, mesh, chunk=args.chunk)
  sampler = Sampler(config, mesh=mesh, max_batch=args.max_batch)
  sp = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
  prompts = np.random.RandomState(0).randint(3, config.vocab_size,
                                             (args.prompts, args.prompt_len)).astype(np.int32)

  t0 = time.perf_counter()
  state, _ = iteration(sampler, sp, logprob_fn, step, state, ref_params, prompts, args, 0)
  warmup_s = time.perf_counter() - t0
  runs = []
  for i in range(args.iterations):
    state, times = iteration(sampler, sp, logprob_fn, step, state, ref_params, prompts, args,
                             i + 1)
    runs.append(times)
  best = min(runs, key=lambda r: r["total"])
  device = jax.devices()[0]
  name = device.device_kind if device.platform != "cpu" else cpu_name()
  rows = args.prompts * args.n
  print(f"{args.model} {args.dtype}: {args.prompts} prompts x {args.n} samples x "
        f"{args.new_tokens} new tokens ({rows} rows, prompt {args.prompt_len}) on {name}, "
        f"warm-up {warmup_s:.1f} s")
  print("  " + "  ".join(f"{k} {best[k]:.2f} s" for k in ("sample", "reference", "update",
                                                           "batch", "total")))
  print(f"  sampling {best['generated_tokens'] / best['sample']:,.0f} tok/s, "
        f"update {rows * (args.prompt_len + args.new_tokens) / best['update']:,.0f} tok/s")
  result = {"args": vars(args), "device": name, "warmup_s": warmup_s, "best": best,
            "runs": runs, "compilations": sampler.num_compilations}
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
