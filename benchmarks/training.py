"""SFT train-step throughput and MFU: our jitted step vs transformers + torch, on the
same shape, in one run.

  python benchmarks/training.py                       # CPU: smollm2_135m, 2 x 128, fp32
  python benchmarks/training.py --batch 16 --seq 1024 --dtype bfloat16 --remat --chunk 0
                                                     # the GPU shape, recommended flags

Both sides train the smollm2_135m architecture from random weights with AdamW
(lr 1e-5, global-norm clip 1.0) on next-token cross-entropy over every position.
Ours: fp32 master params, compute in --dtype, state donated, log-probs chunked over
--chunk positions (0: whole), blocks rematerialised with --remat.
Torch: LlamaForCausalLM (SDPA attention), bf16 autocast on GPU with --dtype
bfloat16, fp32 otherwise; torch.optim.AdamW (fused on CUDA); gradient checkpointing
only with --torch_remat (it slows torch down on this shape).

FLOPs per token = 6 * N + 12 * L * (num_heads * head_dim) * T        (PaLM, app. B)
  N = parameters used in matmuls (a tied embedding counts once, as the output head;
  an untied input embedding is a lookup and does not count); the second term is the
  attention score and value matmuls over the full T x T (as computed).
MFU = tokens/s * FLOPs per token / (devices * peak bf16 dense FLOP/s of the device).
The same formula on SmolLM2-135M at 16 x 1024 gives 12.4% for the 119,876 tokens/s
transformers + torch measured on an H100 (989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from machine import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# JAX and torch share the GPU in one process: no 75% up-front grab by XLA.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Peak dense bf16 FLOP/s per device, matched on jax's device_kind / torch's name.
PEAK_FLOPS = (("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12),
              ("L4", 121e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
              ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
              ("TPU v6", 918e12))


def peak_flops(device_kind: str):
  for key, value in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return value
  return None   # CPU and unknown devices: no MFU


def flops_per_token(config, seq: int) -> float:
  n = config.num_params - (0 if config.tie_embeddings else config.vocab_size * config.embed_dim)
  return 6 * n + 12 * config.num_layers * config.num_heads * config.head_dim * seq


def bench_jax(config, args):
  import jax
  import numpy as np
  from selfimprove_jax import optimize as opt
  from selfimprove_jax.model import init_params
  from selfimprove_jax.runtime.sharding import make_mesh

  mesh = make_mesh({"data": -1})
  cfg = opt.default_optim_config()
  cfg.update(learning_rate=1e-5, schedule="constant", logprob_chunk=args.chunk)
  rs = np.random.RandomState(0)
  tokens = rs.randint(0, config.vocab_size, (args.batch, args.seq)).astype(np.int32)
  batch = {"tokens": tokens, "input_mask": np.ones_like(tokens),
           "loss_mask": np.ones(tokens.shape, np.float32)}
  state = opt.create_train_state(config, cfg, init_params(config, 0, mesh), mesh)
  step = opt.make_train_step(config, cfg, mesh)
  t0 = time.perf_counter()
  for _ in range(args.warmup):           # the first call compiles
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - t0
  device = jax.devices()[0]
  if args.profile:
    with jax.profiler.trace(args.profile):
      for _ in range(3):
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
    print_kernel_table(args.profile, steps=3)
  return {"tokens_per_s": args.batch * args.seq * args.steps / seconds,
          "step_s": seconds / args.steps, "warmup_s": compile_s,
          "loss": float(metrics["loss"]), "devices": jax.device_count(),
          "device": device.device_kind if device.platform != "cpu" else cpu_name()}


def print_kernel_table(trace_dir: str, steps: int, top: int = 40):
  """Device time per kernel (summed over the traced steps, per step), largest first,
  from the trace jax.profiler wrote: where a step's time goes."""
  import glob
  import jax
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
  if not paths:
    print(f"no trace under {trace_dir}")
    return
  data = jax.profiler.ProfileData.from_file(paths[-1])
  for plane in data.planes:
    if not plane.name.startswith("/device:"):
      continue
    totals, counts = {}, {}
    for line in plane.lines:
      if "stream" not in line.name.lower():
        continue
      for e in line.events:
        totals[e.name] = totals.get(e.name, 0.0) + e.duration_ns
        counts[e.name] = counts.get(e.name, 0) + 1
    if not totals:
      print(f"{plane.name}: no stream lines among {[line.name for line in plane.lines]}")
      continue
    busy = sum(totals.values()) / steps / 1e6
    print(f"{plane.name}: {busy:.1f} ms of kernels per step, {sum(counts.values()) // steps} "
          "launches per step")
    for name, ns in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
      print(f"  {ns / steps / 1e6:8.3f} ms  x{counts[name] // steps:<5d} {name[:110]}")


def bench_torch(config, args):
  import torch
  import transformers

  cuda = torch.cuda.is_available()
  dev = torch.device("cuda" if cuda else "cpu")
  hf = transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=config.embed_dim,
      intermediate_size=config.mlp_dim, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      head_dim=config.head_dim, rope_theta=config.rope_theta, rms_norm_eps=config.norm_eps,
      tie_word_embeddings=config.tie_embeddings,
      max_position_embeddings=config.max_position_embeddings, attn_implementation="sdpa")
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(hf).to(dev).train()
  if args.torch_remat:
    model.gradient_checkpointing_enable()
  optim = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.0, fused=cuda)
  tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=dev)
  autocast = args.dtype == "bfloat16" and cuda

  def step():
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=autocast):
      loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optim.step()
    optim.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  for _ in range(args.warmup):
    step()
  sync()
  t0 = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  sync()
  seconds = time.perf_counter() - t0
  return {"tokens_per_s": args.batch * args.seq * args.steps / seconds,
          "step_s": seconds / args.steps, "loss": float(loss.detach()), "autocast_bf16": autocast,
          "device": torch.cuda.get_device_name() if cuda else cpu_name(),
          "torch": torch.__version__, "threads": torch.get_num_threads()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="smollm2_135m", help="model preset (random weights)")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--steps", type=int, default=3, help="timed steps")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps (compile, autotune)")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute dtype (default: bfloat16 on an accelerator, float32 on CPU)")
  p.add_argument("--remat", action="store_true", help="rematerialise each block (ours)")
  p.add_argument("--torch_remat", action="store_true",
                 help="gradient checkpointing on the torch side (slower there; off by default)")
  p.add_argument("--remat_policy", default="nothing", choices=("nothing", "dots"),
                 help="what a rematerialised block keeps")
  p.add_argument("--scan_layers", type=int, default=1, help="1: lax.scan over layers")
  p.add_argument("--chunk", type=int, default=256, help="optim.logprob_chunk (0 = whole)")
  p.add_argument("--profile", default="", help="trace 3 more steps into this folder and "
                 "print the device time per kernel")
  p.add_argument("--compare_torch", type=int, default=1, help="also time transformers+torch")
  args = p.parse_args(argv)

  import jax
  from selfimprove_jax.model import get_preset
  if args.dtype is None:
    args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  config = get_preset(args.model).replace(dtype=args.dtype, remat=args.remat,
                                          remat_policy=args.remat_policy,
                                          scan_layers=bool(args.scan_layers))
  fpt = flops_per_token(config, args.seq)
  print(f"{args.model}: batch {args.batch} x seq {args.seq}, dtype {args.dtype}, "
        f"remat {args.remat}, chunk {args.chunk}, {fpt / 1e9:.3f} GFLOP/token")

  results = {"args": vars(args), "flops_per_token": fpt}
  ours = bench_jax(config, args)
  peak = peak_flops(ours["device"])
  if peak:
    ours["mfu"] = ours["tokens_per_s"] * fpt / (peak * ours["devices"])
  results["jax"] = ours
  print(f"jax   : {ours['tokens_per_s']:,.0f} tokens/s ({ours['step_s'] * 1e3:.1f} ms/step"
        + (f", MFU {ours['mfu']:.1%}" if peak else ", MFU n/a on CPU")
        + f") on {ours['devices']} x {ours['device']}")
  if args.compare_torch:
    theirs = bench_torch(config, args)
    peak_t = peak_flops(theirs["device"])
    if peak_t:
      theirs["mfu"] = theirs["tokens_per_s"] * fpt / peak_t
    results["torch"] = theirs
    results["ratio"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
    print(f"torch : {theirs['tokens_per_s']:,.0f} tokens/s ({theirs['step_s'] * 1e3:.1f} ms/step"
          + (f", MFU {theirs['mfu']:.1%}" if peak_t else "")
          + f", {theirs['threads']} threads) on {theirs['device']}")
    print(f"ratio jax / torch: {results['ratio']:.2f}x")
  print(json.dumps(results))
  return results


if __name__ == "__main__":
  main()
