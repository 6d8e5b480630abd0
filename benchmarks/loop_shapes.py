"""The loop's own shapes, ours vs transformers + torch, in one process: the SFT train
step at batch 16 x 128 tokens and sampling at batch 64 x 32 new tokens (prompt 64),
SmolLM2-135M architecture, random weights. Target on the CPU dev machine: >= 1.5x
on both.

  python benchmarks/loop_shapes.py [--steps 2 --repeats 1]

It runs `training.py` and `sampling.py` with those shapes (their docstrings say how
each side is timed) and prints one line per shape with the ratio.
"""

from __future__ import annotations

import argparse
import json

import sampling
import training

TARGET = 1.5


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="smollm2_135m")
  p.add_argument("--steps", type=int, default=2, help="timed SFT steps per side")
  p.add_argument("--repeats", type=int, default=1, help="timed sampling calls per side")
  args = p.parse_args(argv)
  train = training.main(["--model", args.model, "--batch", "16", "--seq", "128",
                         "--steps", str(args.steps), "--warmup", "1"])
  sample = sampling.main(["--model", args.model, "--batch", "64", "--prompt_len", "64",
                          "--new_tokens", "32", "--repeats", str(args.repeats)])
  rows = [("SFT step 16 x 128", train["ratio"], train["jax"]["tokens_per_s"],
           train["torch"]["tokens_per_s"]),
          ("sampling 64 x 32 new", sample["runs"][0]["ratio"],
           sample["runs"][0]["jax"]["tokens_per_s"], sample["runs"][0]["torch"]["tokens_per_s"])]
  print("\nshape                 ours tok/s   torch tok/s   ratio   target")
  for name, ratio, ours, theirs in rows:
    print(f"{name:<20} {ours:>11,.1f} {theirs:>13,.1f} {ratio:>7.2f}x  "
          f">= {TARGET}x {'met' if ratio >= TARGET else 'NOT met'}")
  print(json.dumps({"train": train, "sampling": sample}))


if __name__ == "__main__":
  main()
