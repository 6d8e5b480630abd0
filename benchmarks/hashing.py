"""Checkpoint hashing, before and after (runtime/files.py, runtime/checkpoint.py).

Writes a directory shaped like an Orbax checkpoint (a few large OCDBT data files and
some small metadata files) of --gb gigabytes, then times, on the same files:
  stream     the serial hash every save and every verify paid before (files.hash_path)
  tree x1    files.hash_tree on one thread (the new digest, serially)
  tree xN    files.hash_tree on every CPU this process may use (what a save now pays)
  quick      hash_tree with the recorded stats trusted (what a verify on resume pays)
and prints one Markdown row per measurement with GB/s. The default 15 GB is a
llama3_2_1b full train state (fp32 weights + two Adam moments, ~1.24e9 parameters).

  .venv/bin/python benchmarks/hashing.py --gb 15 --dir /tmp/hash_bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

from selfimprove_jax.runtime.files import hash_path, hash_tree, tree_digest

_BLOCK = 64 << 20


def write_checkpoint_like(root: str, total_bytes: int, data_files: int = 8) -> None:
  """`data_files` equal data files summing to `total_bytes`, plus small metadata files.
  Bytes are random (one random block, varied per block, so no two blocks are equal)."""
  d = os.path.join(root, "state", "ocdbt.process_0", "d")
  os.makedirs(d, exist_ok=True)
  block = bytearray(os.urandom(_BLOCK))
  per_file = total_bytes // data_files
  n = 0
  for i in range(data_files):
    with open(os.path.join(d, f"{i:032x}"), "wb") as f:
      left = per_file
      while left > 0:
        block[:8] = n.to_bytes(8, "little")
        n += 1
        f.write(block[:min(left, _BLOCK)])
        left -= _BLOCK
  for name in ("_METADATA", "_sharding", "manifest.ocdbt", "_CHECKPOINT_METADATA",
               "meta/metadata", "state/_METADATA", "state/ocdbt.process_0/manifest.ocdbt"):
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(os.urandom(4096))


def timed(fn):
  t = time.perf_counter()
  out = fn()
  return time.perf_counter() - t, out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--gb", type=float, default=15.0)
  p.add_argument("--dir", default="/tmp/selfimprove_jax_hash_bench")
  p.add_argument("--keep", action="store_true", help="leave the files for another run")
  p.add_argument("--repeat", type=int, default=1,
                 help="rounds of all rows, interleaved; each row reports its fastest "
                 "(on a shared machine the least disturbed by other jobs)")
  args = p.parse_args()
  total = int(args.gb * 1e9)
  cpus = len(os.sched_getaffinity(0))
  if not os.path.isdir(args.dir):
    secs, _ = timed(lambda: write_checkpoint_like(args.dir, total))
    print(f"wrote {total / 1e9:.1f} GB in {secs:.1f} s")
  gb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.dir)
           for f in fs) / 1e9
  try:
    best: dict = {}
    for _ in range(args.repeat):
      rows = []
      secs, _ = timed(lambda: hash_path(args.dir))
      rows.append(("stream (before: save, and again every verify)", secs))
      secs, one = timed(lambda: hash_tree(args.dir, threads=1))
      rows.append(("tree, 1 thread", secs))
      secs, many = timed(lambda: hash_tree(args.dir, threads=cpus))
      rows.append((f"tree, {cpus} threads (after: save)", secs))
      assert tree_digest(one) == tree_digest(many)
      stamp = time.time_ns() + 10**10   # as if the entry was written well after the files
      secs, quick = timed(lambda: hash_tree(args.dir, trusted=many, trust_before_ns=stamp))
      rows.append(("quick check, stats trusted (after: verify)", secs))
      assert quick == many
      for name, secs in rows:
        best[name] = min(secs, best.get(name, secs))
    rows = list(best.items())
    print(f"\n{gb:.2f} GB, {cpus} CPUs\n\n| hashing | seconds | GB/s |\n|---|---|---|")
    for name, secs in rows:
      print(f"| {name} | {secs:.2f} | {gb / secs:.2f} |" if secs > 0.05 else
            f"| {name} | {secs:.3f} | - |")
  finally:
    if not args.keep:
      shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
  main()
