"""The `selfimprove-jax` console script: parses flags and calls library functions.

Subcommands: run (the loop), generate (inference, optional refinement), eval, export,
records export (a run's records as JSON Lines).
Each `_cmd_*` function only turns flags into a library call; nothing runs at import.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sys
from typing import Optional

from selfimprove_jax.errors import UserError

# `run` stopped by SIGTERM / SIGINT before its last iteration: finished stages are on
# disk and the same command continues (EX_TEMPFAIL, "try again"); a finished run exits 0
EXIT_INTERRUPTED = 75

# OSErrors that mean "this file cannot be written" (disk full, read-only, permissions)
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EFBIG)


def _add_generate(sub):
  p = sub.add_parser("generate", help="sample completions from a model",
                     description="Chat-templated prompts in, completions out: plain text, "
                     "or one JSON object per completion with --json.")
  p.add_argument("--model", default="smollm2-135m-instruct",
                 help="preset name, HF directory, .gguf file, smollm2-135m-instruct or "
                 "gemma3-270m")
  p.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
  p.add_argument("--prompts_file", default=None,
                 help='JSONL file, one {"prompt": ...} per line (before any --prompt)')
  p.add_argument("--n", type=int, default=1, help="completions per prompt")
  p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
  p.add_argument("--top_p", type=float, default=1.0)
  p.add_argument("--top_k", type=int, default=0, help="0 = off")
  p.add_argument("--max_new_tokens", type=int, default=128)
  p.add_argument("--stop", action="append", default=None,
                 help="stop sequence (repeatable; matched on its token ids)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max_batch", type=int, default=256, help="rows per device call")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="compute dtype (default: the model's)")
  p.add_argument("--raw", action="store_true",
                 help="send each prompt as plain text, without the chat template (base "
                 "models such as gemma3-270m; a tokenizer without a template is always raw)")
  _add_prompt_flags(p, default="")
  p.add_argument("--json", action="store_true",
                 help="one JSON object per completion: prompt_index, sample_index, text, "
                 "num_tokens, sum_logprob, finish_reason")
  p.add_argument("--strategy", default=None, help="refinement strategy: best_of_n | "
                 "self_consistency | self_refine | execution_feedback (runs the reply's "
                 "code block in the sandbox and shows the model its error) | greedy (one "
                 "answer per prompt; --json adds candidates, votes, rounds)")
  p.add_argument("--strategy_n", type=int, default=8,
                 help="best_of_n candidates / self_consistency samples")
  p.add_argument("--refine_rounds", type=int, default=2,
                 help="self_refine / execution_feedback rounds at most")
  p.add_argument("--scorer", default="auto",
                 help="best_of_n scorer: auto (the model judges) | judge | logprob")
  p.set_defaults(fn=_cmd_generate)


def _cmd_generate(args) -> int:
  import json
  from selfimprove_jax import sampling, weights
  _check_flags(args, at_least_1=("n", "max_new_tokens", "max_batch", "strategy_n",
                                  "refine_rounds"), at_least_0=("top_k", "temperature"),
               unit=("top_p",))
  prompts = sampling.read_prompts(args.prompt, args.prompts_file)
  sp = sampling.SamplingParams(
      temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
      greedy=args.temperature == 0, max_new_tokens=args.max_new_tokens,
      stop_sequences=tuple(args.stop or ()))
  if args.strategy:
    from selfimprove_jax.refine import strategies as refine
    refine.check_strategies([args.strategy])   # before the slow load
  from selfimprove_jax import config as config_lib
  fmt = sampling.PromptFormat(   # checked here, and rendered once before the weights load
      chat=not args.raw, system_prompt=args.system_prompt,
      template_kwargs=tuple(sorted(config_lib.template_kwargs(
          args.chat_template_kwargs).items())))
  loaded = weights.load(args.model, dtype=args.dtype, seed=args.seed, prompt_format=fmt)
  sampler = sampling.make_sampler(loaded, max_batch=args.max_batch)
  if args.strategy:
    cfg = refine.StrategyConfig(n=args.strategy_n, rounds=args.refine_rounds,
                                scorer=args.scorer, sample=sp)
    results = refine.refine_texts(loaded, prompts, args.strategy, cfg, args.seed, sampler)
    for i, r in enumerate(results):
      if args.json:
        print(json.dumps(refine.to_json(r, i, args.strategy)))
      else:
        print(r.text if len(results) == 1 else f"--- prompt {i} ({args.strategy})\n{r.text}")
    return 0
  completions = sampling.generate_text(loaded, prompts, sp, n=args.n, seed=args.seed,
                                       sampler=sampler,
                                       progress=len(prompts) * args.n > args.max_batch)
  for c in completions:
    if args.json:
      print(json.dumps(c.to_json()))
    elif len(completions) == 1:
      print(c.text)
    else:
      print(f"--- prompt {c.prompt_index}, sample {c.sample_index} "
            f"({c.finish_reason}, {c.num_tokens} tokens)\n{c.text}")
  return 0


def _add_run(sub):
  p = sub.add_parser("run", help="run (or resume) the self-improvement loop",
                     description="Runs the loop of a config file in a workdir; re-running "
                     "the same command resumes. Override any config key with "
                     "--config.a.b=value.")
  p.add_argument("--config", required=True, help="configs/<name>.py")
  p.add_argument("--workdir", required=True, help="run directory (created; resumed if present)")
  p.add_argument("--override_config", action="store_true",
                 help="resume a workdir even though result-changing config keys differ")
  p.add_argument("--adopt_workdir", action="store_true",
                 help="run in an existing non-empty directory that is not a run's (none "
                 "of its files may have the name of one the run writes)")
  _add_distributed(p)
  p.set_defaults(fn=_cmd_run, accepts_overrides=True)


def _add_distributed(p):
  g = p.add_argument_group("several processes (multi-host); see launch/ and the README")
  g.add_argument("--coordinator_address", default=None,
                 help="host:port of process 0 (default: JAX_COORDINATOR_ADDRESS, or "
                 "detected on Cloud TPU / Slurm / Open MPI)")
  g.add_argument("--num_processes", type=int, default=None,
                 help="processes in the run (default: JAX_NUM_PROCESSES or detected; 1 = "
                 "single process)")
  g.add_argument("--process_id", type=int, default=None,
                 help="this process's index in [0, num_processes) (default: JAX_PROCESS_ID "
                 "or detected)")
  g.add_argument("--lost_process_timeout", type=float, default=None, metavar="SECONDS",
                 help="a process silent this long counts as lost: the others stop with one "
                 "line naming it and exit 69 (default 30; a liveness heartbeat, not a stage "
                 "deadline)")


def _cmd_run(args) -> int:
  from selfimprove_jax import config as config_lib
  from selfimprove_jax import chains
  from selfimprove_jax.runtime import distributed
  config = config_lib.load_config(args.config, args.overrides)
  # before anything touches devices: the mesh then spans every process's devices
  timeout = args.lost_process_timeout
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         distributed.DEFAULT_LOST_PROCESS_TIMEOUT if timeout is None else timeout)
  try:
    state = chains.run(config, args.workdir, override_config=args.override_config,
                       adopt_workdir=args.adopt_workdir)
  except Exception:
    distributed.after_failure()   # a lost peer, not this error, is then what is reported
    raise
  distributed.finished()   # from here this process only waits for the others to finish
  return EXIT_INTERRUPTED if state.get("preempted") else 0


def _add_eval(sub):
  p = sub.add_parser(
      "eval", help="validation and test metrics of a model on a task",
      description="Validation and test metrics through the loop's own evaluation "
      "(validation: greedy pass@1, maj@k, pass@k; test: greedy pass@1). For a run's "
      "workdir (or DIR@K) the settings are the run's saved config, so it prints the "
      "run's numbers for those weights; for any other model, the default config. "
      "Flags override single settings.")
  p.add_argument("--model", default="smollm2-135m-instruct",
                 help="preset, HF directory, .gguf, smollm2-135m-instruct, workdir or DIR@K")
  p.add_argument("--task", default=None, help="arithmetic | countdown | "
                 "reasoning_gym:<name> | jsonl:<path> | code:<family> | code_jsonl:<path> "
                 "(default: the run's task, else arithmetic)")
  p.add_argument("--task_option", action="append", default=[], metavar="KEY=VALUE",
                 help="a task option, e.g. operators=+- (repeatable)")
  p.add_argument("--n", type=int, default=None, help="validation problems (default 100)")
  p.add_argument("--test_n", type=int, default=None,
                 help="test problems, the next ones of the held-out side (default 100; "
                 "0: none)")
  p.add_argument("--k", type=int, default=None,
                 help="samples per problem for maj@k / pass@k (default 4)")
  p.add_argument("--max_new_tokens", type=int, default=None, help="default 48")
  p.add_argument("--temperature", type=float, default=None, help="default 1.0")
  p.add_argument("--seed", type=int, default=None, help="default 0")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  p.add_argument("--strategies", default=None, help="also score refinement strategies, "
                 "e.g. best_of_n,self_consistency,self_refine,execution_feedback "
                 "(held-out, beside greedy)")
  p.add_argument("--strategy_n", type=int, default=None,
                 help="best_of_n candidates / self_consistency samples (default 8)")
  p.add_argument("--refine_rounds", type=int, default=None,
                 help="self_refine / execution_feedback rounds at most (default 2)")
  _add_prompt_flags(p, default=None)
  p.set_defaults(fn=_cmd_eval)


def _add_prompt_flags(p, default):
  """--system_prompt and --chat_template_kwargs (config.system_prompt and
  config.chat_template_kwargs); eval's default None keeps the run's saved values."""
  keeps = " (default: the run's, else none)" if default is None else ""
  p.add_argument("--system_prompt", default=default,
                 help="a system turn before each prompt, inserted as text" + keeps)
  p.add_argument("--chat_template_kwargs", default=default, metavar="NAME=VALUE,...",
                 help="chat template variables, e.g. enable_thinking=false (Qwen3)" + keeps)


def _task_options(items) -> dict:
  """['key=value', ...] -> {key: value}; values are Python literals or else strings."""
  import ast
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise UserError(f"--task_option {item!r} is not of the form key=value")
    try:
      out[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key.strip()] = value
  return out


def _cmd_eval(args) -> int:
  import json
  from selfimprove_jax.evaluate import command as eval_command
  _check_flags(args, at_least_1=("n", "k", "max_new_tokens", "strategy_n", "refine_rounds"),
               at_least_0=("temperature", "seed", "test_n"))
  flags = {name: getattr(args, name) for name in eval_command.FLAG_KEYS}
  metrics = eval_command.evaluate_model(args.model, flags, _task_options(args.task_option))
  if args.json:
    print(json.dumps(metrics))
  else:
    for name, value in metrics.items():
      print(f"{name:>12}: {value:.3f}" if isinstance(value, float) else f"{name:>12}: {value}")
  return 0


def _add_export(sub):
  p = sub.add_parser("export", help="write a model as an HF directory that transformers loads")
  p.add_argument("--model", required=True,
                 help="preset name, HF directory, Hub id in the local HF cache, .gguf file, "
                 "smollm2-135m-instruct, a run's workdir or DIR@K")
  p.add_argument("--out", required=True, help="output directory (must be empty)")
  p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
  p.add_argument("--dtype", default="float32",
                 help="weights in the files: float32 (default), bfloat16 or float16")
  p.add_argument("--peft", action="store_true",
                 help="write only the LoRA adapters of a LoRA run (--model DIR or DIR@K) in "
                 "PEFT's format (adapter_config.json + adapter_model.safetensors), for the "
                 "base model the run's config.model names")
  p.set_defaults(fn=_cmd_export)


def _cmd_export(args) -> int:
  from selfimprove_jax import weights
  weights.check_dtype(args.dtype)
  if args.peft:
    out = weights.export_peft(args.model, args.out, force=args.force, dtype=args.dtype)
    print(f"wrote {out}")
    return 0
  weights.ensure_out_dir(args.out, force=args.force, create=True)  # before the slow load
  out = weights.export(weights.load(args.model), out_dir=args.out, force=args.force,
                       dtype=args.dtype)
  print(f"wrote {out}")
  return 0


def _add_records(sub):
  p = sub.add_parser("records", help="a run's stage records (records/iter_K/)")
  actions = p.add_subparsers(dest="action", metavar="{export}", required=True)
  e = actions.add_parser(
      "export", help="write a run's records as JSON Lines",
      description="Writes every stage file of a run's records/ as OUT/iter_K/NAME.jsonl, "
      "one JSON object per sample or row (the binary Parquet stage files as text).")
  e.add_argument("workdir", help="the run's workdir")
  e.add_argument("--out", default=None,
                 help="output directory, new or empty (default: WORKDIR/records_jsonl)")
  e.add_argument("--force", action="store_true", help="write into a non-empty --out")
  e.add_argument("--debug", action="store_true",
                 help="show the full traceback of an error instead of one line")
  e.set_defaults(fn=_cmd_records_export)


def _cmd_records_export(args) -> int:
  from selfimprove_jax.stage_cache import RunRecords
  records = RunRecords(args.workdir)
  if not os.path.isdir(records.root):
    raise UserError(f"{args.workdir} holds no records/ folder (not a run's workdir?)")
  out = args.out or os.path.join(args.workdir, "records_jsonl")
  real = os.path.realpath(out)
  if real == os.path.realpath(records.root) or real.startswith(
      os.path.realpath(records.root) + os.sep):
    raise UserError(f"--out {out} is inside the run's records/; the run would read the "
                    f"exported files as its own")
  if os.path.lexists(out) and not os.path.isdir(out):
    raise UserError(f"--out {out} exists and is not a directory")
  if os.path.isdir(out) and os.listdir(out) and not args.force:
    raise UserError(f"--out {out} is not empty; pass --force to write into it")
  written = records.export_jsonl(out)
  print(f"wrote {len(written)} files under {out}")
  return 0


def _check_flags(args, at_least_1=(), at_least_0=(), unit=()) -> None:
  """One-line UserErrors for numeric flags out of range (NaN and inf included)."""
  for names, ok, want in ((at_least_1, lambda v: v >= 1, ">= 1"),
                          (at_least_0, lambda v: v >= 0, ">= 0"),
                          (unit, lambda v: 0 < v <= 1, "in (0, 1]")):
    for name in names:
      value = getattr(args, name)
      if value is None:   # not given: the config's value applies
        continue
      if not math.isfinite(value) or not ok(value):
        raise UserError(f"--{name} {value} must be a finite number {want}")


class _Parser(argparse.ArgumentParser):
  """argparse, with a bad flag reported in one line (no usage block; --help has it)."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="selfimprove-jax",
      description="A language model that improves itself in a closed loop (JAX/Flax).")
  sub = parser.add_subparsers(dest="command", required=True)
  _add_run(sub)
  _add_generate(sub)
  _add_export(sub)
  _add_eval(sub)
  _add_records(sub)
  for p in sub.choices.values():
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error instead of one line")
  return parser


def _config_overrides(extra: list[str]) -> list[str]:
  """['--config.a.b=1', '--config.c', '2'] -> ['a.b=1', 'c=2']."""
  out, i = [], 0
  while i < len(extra):
    arg = extra[i]
    if not arg.startswith("--config."):
      raise UserError(f"unrecognized argument {arg!r} (config overrides look like "
                      f"--config.loop.iterations=5)")
    if "=" in arg:
      out.append(arg[len("--config."):])
    elif i + 1 < len(extra):
      out.append(f"{arg[len('--config.'):]}={extra[i + 1]}")
      i += 1
    else:
      raise UserError(f"{arg} needs a value")
    i += 1
  return out


def _os_error(e: BaseException) -> Optional[OSError]:
  """The OSError behind `e` (libraries such as Orbax wrap it), if any."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError) and (e.strerror or e.filename):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


def _one_line(e: BaseException) -> str:
  """An unexpected exception as one line: what it is, where it points, the hint."""
  oe = _os_error(e)
  if oe is not None and oe.errno in _WRITE_ERRNOS:
    return (f"cannot write {oe.filename or 'a file'}: {oe.strerror}; finished stages and "
            f"checkpoints are intact: fix it and re-run the same command to resume")
  if oe is not None:
    return f"{oe.filename or ''}: {oe.strerror}".lstrip(": ") + " (--debug shows the traceback)"
  text = " ".join(str(e).split())[:300]
  return f"{type(e).__name__}: {text} (--debug shows the traceback)"


def _install_stop_handler() -> None:
  """SIGTERM before the loop takes over its signals (set-up, imports): one line and a
  prompt exit instead of a silent death."""
  def stop(signum, _frame):
    print(f"selfimprove-jax: stopped by {signal.Signals(signum).name} during start-up",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)
  signal.signal(signal.SIGTERM, stop)


def main(argv=None) -> int:
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  accepts = getattr(args, "accepts_overrides", False)
  if extra and not accepts:
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  if argv is None:   # the console script, not a test calling main() in-process
    _install_stop_handler()
  prog = f"selfimprove-jax {args.command}"
  try:
    args.overrides = _config_overrides(extra) if accepts else []
    from selfimprove_jax.runtime import compile_cache
    compile_cache.enable()   # before anything compiles: a second start loads, not compiles
    return int(args.fn(args) or 0)
  except UserError as e:
    print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"{prog}: interrupted (Ctrl-C)", file=sys.stderr)
    return 130
  except Exception as e:   # one line; the traceback with --debug
    if args.debug:
      raise
    print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
