"""Start-up: where `selfimprove-jax generate`'s time to its answer goes, and how long
`run` takes to its first stage, with the caches cold and warm
(runtime/compile_cache.py, weights/gguf_cache.py, the tokenizer cache).

generate: each measurement is a fresh process that runs the CLI's `generate`
in-process with its steps timed: imports, the GGUF file's config (gguf's metadata
parse, or the weights cache), the tokenizer, dequantising and placing the weights, the
finiteness check, and the generate call, which jax.monitoring splits into tracing +
lowering + XLA compile (or loading from the compilation cache) and the rest. The same
call made again in the same process gives the programs' run time alone. Settings, back
to back in each repeat (the tokenizer cache is warm in all):
  cold            empty compilation cache, empty weights cache (it is written)
  warm            both caches as the cold run left them
  warm, no wcache compilation cache warm, SELFIMPROVE_JAX_WEIGHTS_CACHE=off
  cold, no wcache empty compilation cache, weights cache off
  before, warm    --before DIR: the code in DIR (an older checkout's selfimprove_jax,
                  first on PYTHONPATH), compilation cache warm

run: configs/tiny.py through the console script; seconds from process start to its
first stage line ("[iter 0] ...") and to its end. cold = empty compilation cache and a
new workdir; warm = the same cache, another new workdir (a second start-up); resume =
that workdir again with one more iteration (time to "[iter 3] ..."). With --before,
the warm start and the resume again with the older code.

  .venv/bin/python benchmarks/startup.py generate --dir /tmp/startup [--before DIR]
  .venv/bin/python benchmarks/startup.py run --dir /tmp/startup [--before DIR]
Prints Markdown rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child: times its steps, marks the answer's time since the parent's clock reading
# in argv[1], then prints JSON. Steps the code it runs lacks are left out.
_CHILD = r"""
import collections, importlib, json, sys, time
T0 = float(sys.argv[1])
spent = collections.defaultdict(float)

def timed(module, name, label, owner=None):
  try:
    target = getattr(importlib.import_module(module), owner) if owner else \
        importlib.import_module(module)
    fn = getattr(target, name)
  except (ImportError, AttributeError):
    return
  def wrapper(*a, **k):
    t = time.perf_counter()
    try:
      return fn(*a, **k)
    finally:
      spent[label] += time.perf_counter() - t
  setattr(target, name, wrapper)

interpreter = time.time() - T0
t = time.perf_counter()
from selfimprove_jax import cli, sampling, weights
from selfimprove_jax import config
imports = time.perf_counter() - t
import jax
events = collections.defaultdict(float)
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: events.__setitem__(event, events[event] + duration))

W = "selfimprove_jax.weights."
timed(W + "gguf_cache", "read_gguf", "config (cache or file)")
timed(W + "gguf_file", "read_gguf", "gguf metadata parse")
timed(W + "tokenizer", "from_gguf", "tokenizer")
timed(W + "gguf_cache", "dequantised", "weights cache write")
timed(W + "gguf_file", "get", "dequantise", owner="GGUFTensors")
timed(W + "load", "params_from_tensors", "params from tensors")
timed("selfimprove_jax.runtime.sharding", "put_from_host", "place")
timed(W + "load", "_check_finite", "finite check")
timed("selfimprove_jax.sampling", "make_sampler", "sampler")
out = {}
generate_text = sampling.generate_text
def twice(*a, **k):
  t = time.perf_counter()
  answer = generate_text(*a, **k)
  out["generate"] = time.perf_counter() - t
  out["answer_at"] = time.time() - T0
  out["compile"] = sum(events[e] for e in (
      "/jax/core/compile/jaxpr_trace_duration",
      "/jax/core/compile/jaxpr_to_mlir_module_duration",
      "/jax/core/compile/backend_compile_duration"))
  t = time.perf_counter()
  generate_text(*a, **k)
  out["run alone"] = time.perf_counter() - t
  return answer
sampling.generate_text = twice
code = cli.main(sys.argv[2:])
out.update(interpreter=interpreter, imports=imports, spent=spent, code=code,
           torch="torch" in sys.modules, orbax="orbax.checkpoint" in sys.modules)
print("STARTUP_JSON " + json.dumps(out))
"""


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _env(jax_cache: str, weights_cache: str, code: str | None) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COMPILATION", "JAX_PERSISTENT"))}
  env.update(SELFIMPROVE_JAX_COMPILATION_CACHE=jax_cache,
             SELFIMPROVE_JAX_WEIGHTS_CACHE=weights_cache, JAX_PLATFORMS="cpu")
  if code:
    env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
  return env


def generate_once(argv: list[str], env: dict) -> dict:
  cpu, t0 = _cpu(), time.time()
  out = subprocess.run([sys.executable, "-c", _CHILD, repr(t0), *argv], env=env,
                       capture_output=True, text=True, timeout=1200, cwd="/tmp")
  wall, cpu = time.time() - t0, _cpu() - cpu
  line = next((l for l in out.stdout.splitlines() if l.startswith("STARTUP_JSON ")), None)
  if out.returncode != 0 or line is None:
    raise SystemExit(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
  r = json.loads(line[len("STARTUP_JSON "):])
  r.update(wall=wall, cpu=cpu, stderr=out.stderr.strip().splitlines(),
           answer="\n".join(l for l in out.stdout.splitlines()
                            if not l.startswith("STARTUP_JSON")))
  return r


GENERATE_HEADER = (
    "| run | imports | config: cache or file | of which gguf metadata parse | tokenizer "
    "| weights cache write | params from tensors | dequantise (in one of the two before) "
    "| place | finite check | generate: compile | generate: rest | run alone | answer | "
    "CPU (whole process) | torch, orbax imported |\n|" + "---|" * 16)


def generate_row(name: str, r: dict) -> str:
  s = r["spent"]
  cells = [r["imports"], s.get("config (cache or file)", s.get("gguf metadata parse", 0)),
           s.get("gguf metadata parse", 0), s.get("tokenizer", 0),
           s.get("weights cache write", 0), s.get("params from tensors", 0),
           s.get("dequantise", 0), s.get("place", 0), s.get("finite check", 0),
           r["compile"], r["generate"] - r["compile"], r["run alone"], r["answer_at"],
           r["cpu"]]
  flags = f"{'yes' if r['torch'] else 'no'}, {'yes' if r['orbax'] else 'no'}"
  return f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {flags} |"


def bench_generate(a) -> None:
  argv = ["generate", "--model", a.model, "--prompt", "What is 7 times 8?",
          "--max_new_tokens", str(a.max_new_tokens), "--temperature", "0"]
  print(GENERATE_HEADER, flush=True)
  for i in range(a.repeats):
    jax_dir, w_dir = os.path.join(a.dir, f"jax{i}"), os.path.join(a.dir, f"weights{i}")
    shutil.rmtree(w_dir, ignore_errors=True)
    settings = [("cold", jax_dir, w_dir, True, None), ("warm", jax_dir, w_dir, False, None),
                ("warm, weights cache off", jax_dir, "off", False, None),
                ("cold, weights cache off", jax_dir + "_off", "off", True, None)]
    if a.before:
      settings.append(("before, warm", jax_dir, "off", False, a.before))
    answers = set()
    for name, jax_cache, w_cache, empty, code in settings:
      if empty:
        shutil.rmtree(jax_cache, ignore_errors=True)
      r = generate_once(argv, _env(jax_cache, w_cache, code))
      answers.add(r["answer"])
      print(generate_row(name, r), flush=True)
      if r["stderr"]:
        print(f"  stderr: {r['stderr'][:3]}", flush=True)
    print(f"  same answer in every setting: {len(answers) == 1} "
          f"({next(iter(answers))[:60]!r})", flush=True)


def run_once(argv: list[str], env: dict, first: str) -> tuple[float, float, float]:
  """(seconds to the first line starting with `first`, to the end, CPU seconds)."""
  cpu, t0 = _cpu(), time.time()
  p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, cwd="/tmp")
  at, lines = None, []
  for line in p.stdout:
    lines.append(line)
    if at is None and line.startswith(first):
      at = time.time() - t0
  if p.wait() != 0 or at is None:
    raise SystemExit(f"run failed ({p.returncode}):\n{''.join(lines)[-3000:]}")
  return at, time.time() - t0, _cpu() - cpu


def bench_run(a) -> None:
  exe = os.path.join(os.path.dirname(sys.executable), "selfimprove-jax")
  config = os.path.join(ROOT, "configs", "tiny.py")
  print("| run | to first stage line | to the end | CPU |\n|---|---|---|---|", flush=True)
  for i in range(a.repeats):
    jax_dir = os.path.join(a.dir, f"run_jax{i}")
    shutil.rmtree(jax_dir, ignore_errors=True)
    cases = [("cold: first start", "A", [], "[iter 0]", None),
             ("warm: second start-up (new workdir)", "B", [], "[iter 0]", None),
             ("resume: one more iteration", "B", ["--config.loop.iterations=3"], "[iter 3]",
              None)]
    if a.before:
      cases += [("before, warm: second start-up", "C", [], "[iter 0]", a.before),
                ("before, resume", "C", ["--config.loop.iterations=3"], "[iter 3]",
                 a.before)]
    for name, wd, extra, first, code in cases:
      workdir = os.path.join(a.dir, f"run{i}_{wd}")
      if not extra:
        shutil.rmtree(workdir, ignore_errors=True)
      argv = [exe, "run", "--config", config, "--workdir", workdir, *extra]
      at, end, cpu = run_once(argv, _env(jax_dir, "off", code), first)
      print(f"| {name} | {at:.1f} | {end:.1f} | {cpu:.1f} |", flush=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("what", choices=("generate", "run"))
  p.add_argument("--dir", required=True, help="scratch directory for caches and workdirs")
  p.add_argument("--before", default=None,
                 help="a directory holding an older selfimprove_jax package to compare")
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--max_new_tokens", type=int, default=24)
  p.add_argument("--model", default="smollm2-135m-instruct")
  a = p.parse_args()
  os.makedirs(a.dir, exist_ok=True)
  bench_generate(a) if a.what == "generate" else bench_run(a)


if __name__ == "__main__":
  main()
