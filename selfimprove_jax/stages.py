"""The loop's stages as functions over records: acquire, optimize-batch building and
held-out evaluation. The loop (loop.py) wires them together.

A record is one sampled completion, a JSON-ready dict:
  problem_id, prompt (text), prompt_tokens [int], completion (text),
  completion_tokens [int] (ending in EOS when finished by it), logprobs [float]
  (raw model log-probs of the completion tokens), reward (float in [0, 1]),
  finish_reason ('eos' | 'stop' | 'length'), num_tokens, sample_index, iteration,
  verifier_status ('ok', or why the verifier could not finish: a sandbox status such as
  'timeout' or 'memory'; the reward is then 0) and verifier_detail (what failed, in words).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from selfimprove_jax.files import hash_path, open_regular
from selfimprove_jax.sampling import SamplingParams, encode_prompts
from selfimprove_jax.tasks import verify

Record = dict


# ----------------------------------------------------------------------------- acquire


def acquire(sampler, params, tokenizer, task, problems: Sequence, sp: SamplingParams,
            n: int, seed: int, iteration: int, progress: bool = False) -> list[Record]:
  """G = n sampled completions per problem, decoded and scored by the task verifier."""
  prompt_tokens = encode_prompts(tokenizer, [p.prompt for p in problems])
  completions = sampler.generate(params, prompt_tokens, sp, n=n, seed=seed,
                                 progress=progress)
  texts = [tokenizer.decode(c.content_tokens.tolist(), skip_special_tokens=True)
           for c in completions]
  # all at once: sandboxed verifiers spread the batch over their worker pool
  verdicts = verify(task, [problems[c.prompt_index] for c in completions], texts)
  records = []
  for c, text, verdict in zip(completions, texts, verdicts):
    problem = problems[c.prompt_index]
    records.append({
        "problem_id": problem.id,
        "prompt": problem.prompt,
        "reference": problem.reference,
        "prompt_tokens": prompt_tokens[c.prompt_index],
        "completion": text,
        "completion_tokens": [int(t) for t in c.tokens],
        "logprobs": [float(x) for x in c.logprobs],
        "reward": float(verdict.reward),
        "finish_reason": c.finish_reason,
        "num_tokens": int(c.num_tokens),
        "sample_index": int(c.sample_index),
        "iteration": int(iteration),
        "verifier_status": verdict.status,
        "verifier_detail": verdict.detail,
    })
  return records


# ----------------------------------------------------------------------------- records on disk


def write_records(path: str, records: Iterable[Record]) -> str:
  """Writes JSONL atomically and returns its SHA-256."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return hash_path(path)


def records_digest(path: str, records: Iterable[Record]) -> str:
  """The hash `write_records(path, records)` returns, without writing (processes other
  than 0 hold the same records but leave the file to process 0)."""
  h = hashlib.sha256(os.path.basename(path).encode())   # as hash_path hashes one file
  for r in records:
    h.update((json.dumps(r) + "\n").encode())
  return h.hexdigest()


def read_records(path: str) -> list[Record]:
  """The records of a JSONL file written by `write_records` (regular files only)."""
  with open_regular(path) as f:
    return [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------- batches


def _pad_rows(rows: list[tuple[list[int], int]], batch_size: int, max_len: int) -> dict:
  """rows of (tokens, prompt_len) -> right-padded numpy batch with a completion mask."""
  B = max(batch_size, len(rows))
  tokens = np.zeros((B, max_len), np.int32)
  input_mask = np.zeros((B, max_len), np.int32)
  loss_mask = np.zeros((B, max_len), np.int32)
  for i, (toks, plen) in enumerate(rows):
    toks = toks[:max_len]
    tokens[i, :len(toks)] = toks
    input_mask[i, :len(toks)] = 1
    loss_mask[i, plen:len(toks)] = 1
  return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask}


def _row(r: Record) -> tuple[list[int], int]:
  return r["prompt_tokens"] + r["completion_tokens"], len(r["prompt_tokens"])


def sft_batches(records: list[Record], batch_size: int, max_len: int, epochs: int,
                seed: int) -> list[dict]:
  """Shuffled fixed-shape SFT batches over `epochs` passes; the last partial batch is
  padded with empty rows (loss_mask 0), so every batch has the same shape."""
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(epochs):
    order = rng.permutation(len(records))
    for s in range(0, len(order), batch_size):
      rows = [_row(records[i]) for i in order[s:s + batch_size]]
      batches.append(_pad_rows(rows, batch_size, max_len))
  return batches


def dpo_pairs(records: list[Record], threshold: float, seed: int) -> list[tuple[Record, Record]]:
  """(chosen, rejected) pairs from one prompt's samples: a correct and an incorrect
  completion (the verifier decides); at most one pair per prompt per distinct pair."""
  rng = np.random.default_rng(seed)
  by_prompt = collections.defaultdict(list)
  for r in records:
    by_prompt[r["problem_id"]].append(r)
  pairs = []
  for group in by_prompt.values():
    good = [r for r in group if r["reward"] >= threshold]
    bad = [r for r in group if r["reward"] < threshold]
    for k in range(min(len(good), len(bad))):
      pairs.append((good[k], bad[k]))
  rng.shuffle(pairs)
  return pairs


def dpo_batches(pairs, batch_size: int, max_len: int, epochs: int, seed: int) -> list[dict]:
  """Batches with chosen at even rows and rejected at odd rows (batch_size pairs)."""
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(epochs):
    order = rng.permutation(len(pairs))
    for s in range(0, len(order), batch_size):
      rows = []
      for i in order[s:s + batch_size]:
        rows += [_row(pairs[i][0]), _row(pairs[i][1])]
      batches.append(_pad_rows(rows, 2 * batch_size, max_len))
  return batches


def rl_batch(records: list[Record], num_rows: int, max_len: int) -> dict:
  """One GRPO-family batch: every record a row (padded to `num_rows` empty rows, each
  a group of its own), with rewards, group ids and the sampler's log-probs as
  `old_logprobs` at the completion positions."""
  rows = [_row(r) for r in records]
  batch = _pad_rows(rows, num_rows, max_len)
  B = batch["tokens"].shape[0]
  old = np.zeros(batch["tokens"].shape, np.float32)
  for i, r in enumerate(records):
    plen = len(r["prompt_tokens"])
    lp = r["logprobs"][:max(0, max_len - plen)]
    old[i, plen:plen + len(lp)] = lp
  ids = {pid: k for k, pid in enumerate(dict.fromkeys(r["problem_id"] for r in records))}
  batch["old_logprobs"] = old
  rewards = np.zeros((B,), np.float32)
  rewards[:len(records)] = [r["reward"] for r in records]
  group_ids = np.arange(B, dtype=np.int32) + len(ids)
  group_ids[:len(records)] = [ids[r["problem_id"]] for r in records]
  batch["rewards"], batch["group_ids"] = rewards, group_ids
  return batch


# ----------------------------------------------------------------------------- evaluate


def majority(answers: Sequence[Optional[str]], scores: Optional[Sequence[float]] = None):
  """Most common non-empty answer; ties broken by the higher summed score (e.g. the
  log-prob), then by first appearance. Returns (answer or None, vote share)."""
  counts: dict[str, int] = collections.Counter(a for a in answers if a)
  if not counts:
    return None, 0.0
  total: dict[str, float] = collections.defaultdict(float)
  for i, a in enumerate(answers):
    if a and scores is not None:
      total[a] += scores[i]
  order = {a: i for i, a in reversed(list(enumerate(answers))) if a}
  best = max(counts, key=lambda a: (counts[a], total[a], -order[a]))
  return best, counts[best] / len(answers)


def evaluate_heldout(sampler, params, tokenizer, task, problems, *, k: int,
                     sample: SamplingParams, seed: int, progress: bool = False) -> dict:
  """Held-out greedy pass@1, and maj@k / pass@k from k samples drawn with `sample`.
  Never trains on anything: it only reads `problems`."""
  greedy = SamplingParams(greedy=True, max_new_tokens=sample.max_new_tokens)
  g = acquire(sampler, params, tokenizer, task, problems, greedy, 1, seed, -1, progress)
  metrics = {"pass@1": float(np.mean([r["reward"] >= 1.0 for r in g])),
             "mean_reward": float(np.mean([r["reward"] for r in g]))}
  if k > 1:
    s = acquire(sampler, params, tokenizer, task, problems, sample, k, seed + 1, -1, progress)
    by_id = collections.defaultdict(list)
    for r in s:
      by_id[r["problem_id"]].append(r)
    voted, any_ok = [], []
    for p in problems:
      group = by_id[p.id]
      ans, _ = majority([task.extract_answer(r["completion"]) for r in group],
                        [sum(r["logprobs"]) for r in group])
      voted.append(ans)
      any_ok.append(any(r["reward"] >= 1.0 for r in group))
    # the voted answers are checked in one batch (sandboxed verifiers run it in parallel)
    checked = [(p, a) for p, a in zip(problems, voted) if a is not None]
    verdicts = iter(verify(task, [p for p, _ in checked],
                           [ans_as_completion(a) for _, a in checked]))
    maj = [a is not None and next(verdicts).reward >= 1.0 for a in voted]
    metrics[f"maj@{k}"] = float(np.mean(maj))
    metrics[f"pass@{k}"] = float(np.mean(any_ok))
    # Mean reward of the sampled answers: moves smoothly with the probability of a right
    # answer, where greedy pass@1 flips only once it becomes the most likely one.
    metrics["sampled_reward"] = float(np.mean([r["reward"] for r in s]))
  return metrics


def ans_as_completion(answer: str) -> str:
  """A completion text that states `answer` in the declared format of every task."""
  return f"#### {answer}"
