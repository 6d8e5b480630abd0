"""Train-step memory and speed with and without LoRA, from the compiled step's own
memory analysis (`jax.jit(...).lower(...).compile().memory_analysis()`).

  python benchmarks/lora_memory.py                        # llama3_2_1b, 1 x 128, fp32
  python benchmarks/lora_memory.py --time lora            # also time the LoRA step

The memory analysis needs only abstract shapes (nothing is allocated), so both steps
are measured on any machine. Timing runs the step on real (random) weights: the full
step needs params + gradients + two Adam moments (about 4 x 5 GB for the 1B preset)
and is only timed when asked (`--time full`) on a machine with the memory.

Both steps: SFT loss, AdamW, donated state, log-probs chunked over --chunk
positions. LoRA: rank --rank on --targets; the state holds only the adapters and
their Adam moments, the base params are a (non-donated) step argument.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from machine import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _abstract(tree):
  import jax
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                      if hasattr(x, "sharding") else x, tree)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="llama3_2_1b")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--chunk", type=int, default=128)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--targets", default="q,k,v,o")
  p.add_argument("--time", default="", help="'lora', 'full' or 'lora,full': also time these")
  p.add_argument("--steps", type=int, default=3)
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  import flax.linen as nn
  from jax.sharding import NamedSharding, PartitionSpec as P
  from selfimprove_jax import optimize as opt
  from selfimprove_jax.model import abstract_params, get_preset, init_params
  from selfimprove_jax.model import lora as lora_lib
  from selfimprove_jax.model.params import param_shardings
  from selfimprove_jax.runtime.sharding import single_device_mesh

  config = get_preset(args.preset)
  mesh = single_device_mesh()
  cfg = opt.default_optim_config()
  cfg.logprob_chunk = args.chunk
  lora = lora_lib.LoraConfig(rank=args.rank, alpha=2.0 * args.rank,
                             targets=tuple(args.targets.split(",")))
  B, T = args.batch, args.seq
  rs = np.random.RandomState(0)
  batch = {"tokens": rs.randint(0, config.vocab_size, (B, T)).astype(np.int32),
           "input_mask": np.ones((B, T), np.int32),
           "loss_mask": np.ones((B, T), np.float32)}
  batch_abs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                       sharding=NamedSharding(mesh, P(("data", "fsdp"))))
               for k, v in batch.items()}
  shards = param_shardings(config, mesh)
  base_abs = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.unbox(abstract_params(config)), shards)
  ad_abs = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        lora_lib.abstract_lora(config, lora),
                        lora_lib.lora_shardings(config, lora, mesh))
  out = {"machine": cpu_name(), "backend": jax.default_backend(), "preset": args.preset,
         "batch": B, "seq": T, "rank": args.rank, "targets": args.targets,
         "params": config.num_params,
         "trainable_lora": lora_lib.count_lora_params(config, lora)}

  steps = {}
  for name in ("full", "lora"):
    use = lora if name == "lora" else None
    state_abs = jax.eval_shape(
        lambda p: opt.create_train_state(config, cfg, p, mesh, lora=use),
        ad_abs if use else base_abs)
    state_abs = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             state_abs, opt.state_shardings(config, cfg, mesh, use))
    step = opt.make_train_step(config, cfg, mesh, lora=use)
    t0 = time.time()
    lowered = (step.lower(state_abs, batch_abs, base_abs) if use
               else step.lower(state_abs, batch_abs))
    compiled = lowered.compile()
    m = compiled.memory_analysis()
    steps[name] = step
    out[name] = {
        "compile_s": round(time.time() - t0, 1),
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        # live at once: inputs + outputs not aliased to (donated) inputs + temporaries
        "peak_bytes_estimate": int(m.argument_size_in_bytes + m.output_size_in_bytes
                                   - m.alias_size_in_bytes + m.temp_size_in_bytes),
        "state_bytes": int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state_abs))),
    }
    print(name, json.dumps(out[name]), flush=True)

  for name in [n for n in args.time.split(",") if n]:
    use = lora if name == "lora" else None
    base = init_params(config, seed=0, mesh=mesh)
    state = opt.create_train_state(config, cfg, lora_lib.init_lora(config, lora, mesh=mesh)
                                   if use else base, mesh, lora=use)
    if not use:
      del base
      base = None
    run = (lambda s: steps[name](s, batch, base)) if use else (lambda s: steps[name](s, batch))
    state, m = run(state)                      # compile + first step
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
      t0 = time.time()
      state, m = run(state)
      jax.block_until_ready(m)
      times.append(time.time() - t0)
    out[name]["step_s"] = round(float(np.median(times)), 2)
    out[name]["tokens_per_s"] = round(B * T / float(np.median(times)), 1)
    print(name, "step", out[name]["step_s"], "s", flush=True)
    del state, base
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
