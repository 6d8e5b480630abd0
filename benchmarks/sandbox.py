"""Throughput of the sandbox on many short programs, beside what a user would write
instead: one `subprocess.run([python, -c, source], timeout=...)` per program (no
isolation at all) and one bubblewrap process per program (the same isolation, started
fresh for every program).

  python benchmarks/sandbox.py [--programs 512] [--workers N]

Each program is a short test-like script (a function, a few asserts). The sandbox runs
them on a pool of N zygote workers (default: one per CPU), each forking a fresh,
limited child per program; the pool is started before the clock starts (a loop starts
it once per run). Prints one Markdown row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from machine import cpu_name
from selfimprove_jax import sandbox

PROGRAM = ("def solve(xs):\n  return sorted(x * {k} for x in xs if x > 0)\n"
           "assert solve([3, -1, 2]) == [2 * {k}, 3 * {k}]\nprint({k})\n")


def _subprocess_each(sources, workers: int, prefix=()) -> float:
  def one(src):
    subprocess.run([*prefix, sys.executable, "-I", "-c", src], capture_output=True,
                   timeout=10, check=False)
  start = time.perf_counter()
  with ThreadPoolExecutor(workers) as ex:
    list(ex.map(one, sources))
  return time.perf_counter() - start


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--programs", type=int, default=512)
  ap.add_argument("--workers", type=int, default=os.cpu_count())
  args = ap.parse_args()
  sources = [PROGRAM.format(k=k) for k in range(args.programs)]
  pool = sandbox.Pool(workers=args.workers).start()
  sandbox.run_python_batch(sources[:8], pool=pool)       # warm
  start = time.perf_counter()
  results = sandbox.run_python_batch(sources, pool=pool)
  ours = time.perf_counter() - start
  assert all(r.ok and r.stdout == f"{k}\n" for k, r in enumerate(results)), results[:3]
  plain = _subprocess_each(sources, args.workers)
  bwrap = _subprocess_each(sources, args.workers, pool.iso.command[:-2]) \
      if pool.iso.level == "bwrap" else float("nan")
  pool.close()
  load = os.getloadavg()[0]
  n = args.programs
  print("| machine | programs | workers | isolation | sandbox s (programs/s) | "
        "subprocess each s | bwrap each s |")
  print("|---|---|---|---|---|---|---|")
  print(f"| {cpu_name()} (load avg {load:.1f}) | {n} | {args.workers} | {pool.iso.level} | "
        f"{ours:.2f} ({n / ours:.0f}/s) | {plain:.2f} ({plain / ours:.1f}x) | "
        f"{bwrap:.2f} ({bwrap / ours:.1f}x) |")


if __name__ == "__main__":
  main()
