"""Memory of one loop iteration per model size: peak host RSS and live device bytes
per stage, and XLA's account of the train step, so the loop's memory budget is a
measured table rather than a guess.

  python benchmarks/memory.py --states 1                        # tiny,smollm2_135m,smollm2_360m
  python benchmarks/memory.py --models llama3_2_1b --compile_only 1  # XLA account only
  python benchmarks/memory.py --models llama3_2_1b --loss sft --states 1 --remat 1 \
      --moment_dtype bfloat16 --update_per_array 1     # the 1B SFT iteration in 17.5 GB

Each model runs in its own process (the peak RSS of one must not carry into the
next), with random weights and short budgets. The stages are those of a GRPO
iteration with a KL reference as loop.py holds it with `--states 1` (the kept
weights, which are the reference, and one train state; `--states 2` adds the second
train state the loop held before its one-copy rule):
  load       base params (fp32), the reference
  state      --states train states
  sample     Sampler.generate: --prompts x --n samples x --new_tokens (its KV cache
             lives only inside the call)
  reference  reference log-probs of the sampled rows
  update     one grpo train step on the newest state (state donated)
With --loss sft the stages are an expert-iteration step as loop.py holds it: no
reference pass, and with --states 1 the train state takes over the weights' buffers
(loop.py's one-copy rule: the kept weights' checkpoint is the rollback's copy).
Per stage: the peak RSS inside it (free C-heap pages handed back first and the
high-water mark reset, as loop.py does), RSS and live jax array bytes at its end, the
device allocator's peak where reported. Each stage waits for its arrays, so a
stage's figure is its own work, not an earlier stage's computation finishing late.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from machine import cpu_name

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
GB = 1e9


def optim_config(args):
  from selfimprove_jax import optimize as opt
  cfg = opt.default_optim_config()
  cfg.update(loss=args.loss, learning_rate=1e-6, schedule="constant",
             moment_dtype=args.moment_dtype, micro_batch_size=args.micro_batch,
             update_per_array=bool(args.update_per_array))
  return cfg


def batch_for(rows, prompt_len, new_tokens, vocab, n, completions=None):
  import numpy as np
  rs = np.random.RandomState(0)
  T = prompt_len + new_tokens
  tokens = rs.randint(3, vocab, (rows, T)).astype(np.int32)
  input_mask = np.ones((rows, T), np.int32)
  loss_mask = np.zeros((rows, T), np.float32)
  loss_mask[:, prompt_len:] = 1
  if completions is not None:
    for r, c in enumerate(completions):
      tokens[r, prompt_len:prompt_len + c.num_tokens] = c.tokens
      input_mask[r, prompt_len + c.num_tokens:] = 0
      loss_mask[r, prompt_len + c.num_tokens:] = 0
  return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask,
          "rewards": rs.randint(0, 2, (rows,)).astype(np.float32),
          "group_ids": np.repeat(np.arange(rows // n), n).astype(np.int32),
          "ref_logprobs": np.zeros((rows, T), np.float32)}


def measure(args) -> dict:
  """Runs the stages for args.models (one model) in this process."""
  import jax
  import numpy as np
  from selfimprove_jax import optimize as opt
  from selfimprove_jax.model import get_preset, init_params
  from selfimprove_jax.runtime import memory
  from selfimprove_jax.runtime.sharding import make_mesh
  from selfimprove_jax.sampling import Sampler, SamplingParams
  config = get_preset(args.models).replace(dtype=args.dtype, remat=bool(args.remat))
  mesh = make_mesh({"data": -1})
  cfg = optim_config(args)
  log: list = []
  sft = args.loss == "sft"
  rows = args.prompts * args.n
  with memory.stage("load", log):   # each stage waits for its arrays (jax runs async)
    base = jax.block_until_ready(init_params(config, 0, mesh))
  with memory.stage("state", log):
    # sft, one state: the state takes over the weights (loop.py, `_train_start`)
    one = sft and args.states == 1
    states = jax.block_until_ready([opt.create_train_state(config, cfg, base, mesh, donate=one)
                                    for _ in range(args.states)])
    if one:
      base = None
  sampler = Sampler(config, mesh=mesh, max_batch=rows)
  sp = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
  prompts = np.random.RandomState(1).randint(3, config.vocab_size, (args.prompts, args.prompt_len))
  with memory.stage("sample", log):
    out = sampler.generate(states[-1].params, prompts.tolist(), sp, n=args.n)
  batch = batch_for(rows, args.prompt_len, args.new_tokens, config.vocab_size, args.n, out)
  if not sft:
    logprob_fn = opt.make_logprob_fn(config, mesh)
    with memory.stage("reference", log):
      batch["ref_logprobs"] = np.asarray(logprob_fn(base, batch["tokens"],
                                                    batch["input_mask"]))
  else:
    batch = {k: batch[k] for k in ("tokens", "input_mask", "loss_mask")}
  step = opt.make_train_step(config, cfg, mesh)
  with memory.stage("update", log):
    states[-1], metrics = step(states[-1], batch)
    jax.block_until_ready(metrics)
  return {"model": args.models, "params": config.num_params, "stages":
          [vars(s) for s in log], "train_step_xla": step_account(step, states[-1], batch)}


def step_account(step, state, batch) -> dict:
  """XLA's account of the jitted step (with optim.update_per_array: of its gradient
  pass, the part that holds the most; each array's update adds one array)."""
  from selfimprove_jax.runtime import memory
  jitted = getattr(step, "gradients", step)
  return memory.compiled_bytes(jitted.lower(state, batch).compile())


def compile_only(args) -> dict:
  """XLA's account of the train step, nothing allocated: for models too large to run
  on this machine beside other jobs."""
  import jax
  from selfimprove_jax import optimize as opt
  from selfimprove_jax.model import get_preset
  from selfimprove_jax.model.params import abstract_params
  from selfimprove_jax.runtime import memory
  from selfimprove_jax.runtime.sharding import make_mesh
  import flax.linen as nn
  config = get_preset(args.models).replace(dtype=args.dtype, remat=bool(args.remat))
  mesh = make_mesh({"data": -1})
  cfg = optim_config(args)
  params = nn.unbox(abstract_params(config))
  state = jax.eval_shape(lambda p: opt.create_train_state(config, cfg, p, mesh), params)
  rows = args.prompts * args.n
  batch = batch_for(rows, args.prompt_len, args.new_tokens, 10, args.n)
  if args.loss == "sft":
    batch = {k: batch[k] for k in ("tokens", "input_mask", "loss_mask")}
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  step = opt.make_train_step(config, cfg, mesh)
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  return {"model": args.models, "params": config.num_params, "compile_only": True,
          "param_bytes": nbytes(params), "state_bytes": nbytes(state),
          "train_step_xla": step_account(step, state, batch)}


def table(results, args) -> str:
  lines = [f"machine: {cpu_name()}; --states {args.states}, --moment_dtype "
           f"{args.moment_dtype}, {args.prompts} x {args.n} x {args.new_tokens} new, "
           f"prompt {args.prompt_len}, {args.dtype}",
           "| model | params | stage | peak RSS GB | live arrays GB | device peak GB | s |",
           "|---|---|---|---|---|---|---|"]
  for r in results:
    if "error" in r:
      lines.append(f"| {r['model']} | | error: {r['error'][:80]} | | | | |")
      continue
    if r.get("compile_only"):
      x = r["train_step_xla"]
      lines.append(f"| {r['model']} | {r['params'] / 1e9:.2f}B | train step (XLA, compiled "
                   f"only): args {x['arguments'] / GB:.2f} + temp {x['temporaries'] / GB:.2f} "
                   f"+ out {x['outputs'] / GB:.2f} - donated {x['aliased'] / GB:.2f} = "
                   f"{x['peak'] / GB:.2f} GB; base params {r['param_bytes'] / GB:.2f} GB | | | | |")
      continue
    for s in r["stages"]:
      dev = "-" if s["device_peak"] is None else f"{s['device_peak'] / GB:.2f}"
      lines.append(f"| {r['model']} | {r['params'] / 1e6:.0f}M | {s['name']} | "
                   f"{s['host_peak'] / GB:.2f} | {s['live_end'] / GB:.3f} | {dev} | "
                   f"{s['seconds']:.1f} |")
    x = r["train_step_xla"]
    lines.append(f"| {r['model']} | | train step (XLA): peak {x['peak'] / GB:.3f} GB, "
                 f"temporaries {x['temporaries'] / GB:.3f} | | | | |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="tiny,smollm2_135m,smollm2_360m")
  p.add_argument("--states", type=int, default=2, help="train states alive at once")
  p.add_argument("--moment_dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--prompts", type=int, default=4)
  p.add_argument("--n", type=int, default=4)
  p.add_argument("--prompt_len", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=32)
  p.add_argument("--micro_batch", type=int, default=0)
  p.add_argument("--loss", default="grpo", choices=("grpo", "sft"))
  p.add_argument("--remat", type=int, default=0, help="rematerialise blocks in the step")
  p.add_argument("--update_per_array", type=int, default=0,
                 help="optim.update_per_array: the update one parameter array at a time")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--compile_only", type=int, default=0, help="XLA's account only")
  p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    result = compile_only(args) if args.compile_only else measure(args)
    print("RESULT " + json.dumps(result))
    return result
  results = []
  for model in args.models.split(","):
    argv_child = [a for a in (argv if argv is not None else sys.argv[1:])]
    cmd = [sys.executable, os.path.abspath(__file__), *argv_child, "--models", model,
           "--child", "1"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not found:
      results.append({"model": model, "error": (proc.stderr or proc.stdout).strip()[-400:]})
    else:
      results.append(json.loads(found[-1][len("RESULT "):]))
    print(f"{model}: {time.perf_counter() - t0:.0f} s", flush=True)
  print(table(results, args))
  print(json.dumps({"args": vars(args), "results": results}))
  return results


if __name__ == "__main__":
  main()
