"""The `selfimprove-jax` console script: parses flags and calls library functions.

Subcommands: run (the loop), generate (inference, optional refinement), eval, export.
Each `_cmd_*` function only turns flags into a library call; nothing runs at import.
"""

from __future__ import annotations

import argparse
import os
import sys

from selfimprove_jax.errors import UserError


def _add_generate(sub):
  p = sub.add_parser("generate", help="sample completions from a model")
  p.add_argument("--model", default="smollm2-135m-instruct",
                 help="preset name, HF directory, .gguf file or smollm2-135m-instruct")
  p.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
  p.add_argument("--max_new_tokens", type=int, default=128)
  p.set_defaults(fn=_cmd_generate)


def _cmd_generate(args) -> int:
  raise NotImplementedError("generate is provided by the sampler")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="selfimprove-jax",
      description="A language model that improves itself in a closed loop (JAX/Flax).")
  sub = parser.add_subparsers(dest="command", required=True)
  _add_generate(sub)
  return parser


def main(argv=None) -> int:
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  args = build_parser().parse_args(argv)
  try:
    return int(args.fn(args) or 0)
  except UserError as e:
    print(f"selfimprove-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
