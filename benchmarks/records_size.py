"""Records on disk: bytes per token of a stage file as JSON Lines (before) and as
Parquet (records.write_records, after), and the time to write and read each back.

  python benchmarks/records_size.py                          # 64 prompts x 8 samples
  python benchmarks/records_size.py --real WORKDIR/records/iter_0001/acquire.jsonl

The synthetic file is shaped like an acquisition of a verl-style iteration scaled down:
--prompts problems x --samples completions, prompts of about --prompt_tokens tokens and
completions of about --completion_tokens (lengths vary by +-50%). Token ids follow a
Zipf law over a 49152-token vocabulary (SmolLM2's; about 10 bits of entropy a token, as
for English BPE text); each id has a fixed 1-7 character text piece, so the completion
text is as compressible as its ids. Log-probs are computed as a sampler computes them,
float32 logit minus float32 log-sum-exp, with -logprob drawn to match the quantiles of
a real SmolLM2 run's acquire records (median 0.48, 10% above 2.5, 17% under 0.01).
--real measures an existing JSONL records file as well (its samples as they are).

bytes/token = file bytes / (prompt + completion tokens of every sample), the issue's
measure (each sample's prompt counted, as the JSONL file repeats it); bytes/completion
token is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from selfimprove_jax.records import Sample, read_records, write_records  # noqa: E402

VOCAB = 49152


def realistic_samples(prompts: int = 64, samples: int = 8, prompt_tokens: int = 100,
                      completion_tokens: int = 256, seed: int = 0) -> list[Sample]:
  """An acquisition's Samples as described in the module docstring."""
  rng = np.random.default_rng(seed)
  ranks = rng.permutation(VOCAB)   # Zipf rank -> token id
  letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz     ,.'"))
  pieces = ["".join(rng.choice(letters, size=rng.integers(1, 8))) for _ in range(VOCAB)]

  def tokens(n):
    ids = ranks[np.minimum(rng.zipf(1.1, size=n), VOCAB) - 1]
    return ids.tolist(), "".join(pieces[i] for i in ids)

  out = []
  for p in range(prompts):
    p_ids, p_text = tokens(int(prompt_tokens * rng.uniform(0.5, 1.5)))
    problem_id = f"{int(rng.integers(1 << 62)):016x}"
    for j in range(samples):
      n = int(completion_tokens * rng.uniform(0.5, 1.5))
      c_ids, c_text = tokens(n)
      out.append(Sample(
          problem_id=problem_id,
          prompt=p_text, reference=str(p), prompt_tokens=p_ids, completion=c_text,
          completion_tokens=c_ids, logprobs=realistic_logprobs(rng, n),
          reward=float(rng.random() < 0.4), finish_reason="eos" if n < 300 else "length",
          num_tokens=n, sample_index=j, iteration=1))
  return out


def realistic_logprobs(rng, n: int) -> list[float]:
  """n log-probs as float32 log-softmax makes them (logit - logsumexp, each float32),
  the sizes matched to a real run's: a confident mode near 0 and a spread one."""
  confident = rng.random(n) < 0.25
  nll = np.where(confident, np.exp(rng.normal(-6.5, 1.5, n)), np.exp(rng.normal(-0.4, 1.0, n)))
  logit = rng.uniform(5.0, 25.0, n).astype(np.float32)
  lse = (logit.astype(np.float64) + nll).astype(np.float32)
  return (logit - lse).astype(np.float32).tolist()


def measure(samples: list[Sample], folder: str) -> list[dict]:
  """One row per format: bytes, bytes/token, write and read seconds (best of 3)."""
  total = sum(len(s.prompt_tokens) + len(s.completion_tokens) for s in samples)
  completion = sum(len(s.completion_tokens) for s in samples)
  rows = []
  for form in ("jsonl", "parquet"):
    path = os.path.join(folder, f"acquire.{form}")
    write = read = float("inf")
    for _ in range(3):
      t = time.perf_counter()
      write_records(path, samples)
      write = min(write, time.perf_counter() - t)
      t = time.perf_counter()
      back = read_records(path)
      read = min(read, time.perf_counter() - t)
    assert back == samples, f"{form}: the samples read back differ"
    size = os.path.getsize(path)
    rows.append(dict(form=form, bytes=size, per_token=size / total,
                     per_completion_token=size / completion, write_s=write, read_s=read))
  return rows


def _print(title: str, samples: list[Sample], rows: list[dict]) -> None:
  total = sum(len(s.prompt_tokens) + len(s.completion_tokens) for s in samples)
  print(f"\n{title}: {len(samples)} samples, {total} tokens")
  print("| form | bytes | bytes/token | bytes/completion token | write s | read s |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['form']} | {r['bytes']} | {r['per_token']:.2f} | "
          f"{r['per_completion_token']:.2f} | {r['write_s']:.3f} | {r['read_s']:.3f} |")


def main() -> None:
  from machine import cpu_name   # pylint: disable=import-outside-toplevel
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--prompts", type=int, default=64)
  ap.add_argument("--samples", type=int, default=8)
  ap.add_argument("--prompt_tokens", type=int, default=100)
  ap.add_argument("--completion_tokens", type=int, default=256)
  ap.add_argument("--real", default=None, help="also measure this JSONL records file")
  args = ap.parse_args()
  print(cpu_name())
  with tempfile.TemporaryDirectory() as d:
    samples = realistic_samples(args.prompts, args.samples, args.prompt_tokens,
                                args.completion_tokens)
    _print(f"synthetic {args.prompts} x {args.samples}", samples, measure(samples, d))
    if args.real:
      real = read_records(args.real)
      _print(f"real {args.real}", real, measure(real, d))


if __name__ == "__main__":
  main()
