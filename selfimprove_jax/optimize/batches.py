"""Optimizer batches from samples: fixed-shape, right-padded host arrays in the format
of `optimize/losses.py` (stated there once), for every paradigm (paradigms/registry.py names
which one it uses), then made device-ready by `device_ready`: padded to the mesh's
batch shards, with the reference log-probs where the loss reads them, and placed.

Batches are built from an iteration's selected samples and a seed derived from
(config.seed, iteration): rebuilding them after an interruption gives the same batches,
so they need no iterator state of their own in the checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from selfimprove_jax.records import Sample, group_by_problem
from selfimprove_jax.runtime import sharding as sharding_lib


@dataclasses.dataclass(frozen=True)
class Settings:
  """How samples become batches (settings.batches: config.train, config.loop, config.optim)."""
  batch_size: int = 16               # SFT samples / DPO pairs per batch
  epochs: int = 2                    # shuffled passes over the samples
  max_seq_len: int = 160             # prompt + completion, right-padded (longer: cut)
  reward_threshold: float = 1.0      # DPO verifier pairs: right vs wrong
  dpo_pairs: str = "verifier"        # 'verifier' | 'judge' (self-rewarding)
  prompts: int = 64                  # GRPO family: prompts x samples_per_prompt rows at most
  samples_per_prompt: int = 8
  row_unit: int = 1                  # the step's micro-batch (or accumulation) rows


def pad_rows(rows: list[tuple], batch_size: int, max_len: int) -> dict:
  """rows of (tokens, prompt_len[, completion mask]) -> right-padded numpy batch whose
  loss mask covers the completion (where the optional mask, one entry per completion
  token, is 1: a multi-turn episode's own tokens, not its observations')."""
  B = max(batch_size, len(rows))
  tokens = np.zeros((B, max_len), np.int32)
  input_mask = np.zeros((B, max_len), np.int32)
  loss_mask = np.zeros((B, max_len), np.int32)
  for i, (toks, plen, *mask) in enumerate(rows):
    toks = toks[:max_len]
    tokens[i, :len(toks)] = toks
    input_mask[i, :len(toks)] = 1
    loss_mask[i, plen:len(toks)] = 1
    if mask and mask[0] is not None:
      loss_mask[i, plen:len(toks)] = np.asarray(mask[0], np.int32)[:max(0, len(toks) - plen)]
  return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask}


def row(s: Sample) -> tuple[list[int], int, Optional[list]]:
  """A sample as (prompt + completion tokens, prompt length, completion mask: the
  episode's action mask, None for a single-turn sample)."""
  return s.prompt_tokens + s.completion_tokens, len(s.prompt_tokens), s.action_mask


def epochs(n: int, batch_size: int, num_epochs: int, seed: int):
  """Index lists of shuffled batches over `num_epochs` passes of n items."""
  rng = np.random.default_rng(seed)
  for _ in range(num_epochs):
    order = rng.permutation(n)
    for s in range(0, n, batch_size):
      yield order[s:s + batch_size]


def sft_batches(samples: Sequence[Sample], t: Settings, seed: int) -> list[dict]:
  """Shuffled fixed-shape SFT batches over `t.epochs` passes; the last partial batch
  is padded with empty rows (loss_mask 0), so every batch has the same shape."""
  return [pad_rows([row(samples[i]) for i in idx], t.batch_size, t.max_seq_len)
          for idx in epochs(len(samples), t.batch_size, t.epochs, seed)]


def verifier_pairs(samples: Sequence[Sample], threshold: float,
                   seed: int) -> list[tuple[Sample, Sample]]:
  """(chosen, rejected) pairs from one prompt's samples: a correct and an incorrect
  completion (the verifier decides); at most one pair per prompt per distinct pair."""
  pairs = []
  for group in group_by_problem(samples).values():
    good = [s for s in group if s.reward >= threshold]
    bad = [s for s in group if s.reward < threshold]
    pairs += list(zip(good, bad))
  np.random.default_rng(seed).shuffle(pairs)
  return pairs


def best_worst_pairs(records: list[Sample], min_gap: float = 0.0) -> list:
  """Self-rewarding DPO pairs: per prompt, the judge's best and worst completions
  (first seen wins ties), when their scores differ by more than `min_gap`; prompts
  with fewer than two parsed judgments give no pair (Yuan et al. drop equal scores)."""
  scored = [r for r in records if r.judge_score is not None]
  pairs = []
  for group in group_by_problem(scored).values():
    if len(group) < 2:
      continue
    best = max(group, key=lambda r: r.judge_score)
    worst = min(group, key=lambda r: r.judge_score)
    if best.judge_score - worst.judge_score > min_gap:
      pairs.append((best, worst))
  return pairs


def pair_batches(pairs: Sequence[tuple[Sample, Sample]], t: Settings,
                 seed: int) -> list[dict]:
  """DPO batches of (chosen, rejected) pairs over `t.epochs` shuffled passes: chosen
  at even rows, rejected at odd."""
  batches = []
  for idx in epochs(len(pairs), t.batch_size, t.epochs, seed):
    rows = [r for i in idx for r in (row(pairs[i][0]), row(pairs[i][1]))]
    batches.append(pad_rows(rows, 2 * t.batch_size, t.max_seq_len))
  return batches


def dpo_batches(samples: Sequence[Sample], t: Settings, seed: int) -> list[dict]:
  """Pairs from the *selected* samples only (so the select filters and the held-out
  guard apply to DPO too): the verifier's right vs wrong, or the judge's best vs worst
  (self-rewarding, loop.dpo_pairs='judge')."""
  if t.dpo_pairs == "judge":
    pairs = best_worst_pairs(samples)
  else:
    pairs = verifier_pairs(samples, t.reward_threshold, seed)
  return pair_batches(pairs, t, seed + 1)


def policy_gradient_batch(samples: Sequence[Sample], t: Settings, num_rows: int,
                          group_of: Callable[[Sample], str]) -> list[dict]:
  """One GRPO-family batch: every sample a row (padded to `num_rows`, each empty row a
  group of its own), with rewards, group ids (samples with equal `group_of` share a
  group: their advantages are relative to each other) and the sampler's log-probs as
  `old_logprobs` at the completion positions."""
  if not samples:
    return []
  max_len = t.max_seq_len
  batch = pad_rows([row(s) for s in samples], num_rows, max_len)
  B = batch["tokens"].shape[0]
  old = np.zeros(batch["tokens"].shape, np.float32)
  for i, s in enumerate(samples):
    plen = len(s.prompt_tokens)
    lp = s.logprobs[:max(0, max_len - plen)]
    old[i, plen:plen + len(lp)] = lp
  ids: dict[str, int] = {}
  for s in samples:
    ids.setdefault(group_of(s), len(ids))
  rewards = np.zeros((B,), np.float32)
  rewards[:len(samples)] = [s.reward for s in samples]
  group_ids = _own_groups(B, len(ids))
  group_ids[:len(samples)] = [ids[group_of(s)] for s in samples]
  batch.update(old_logprobs=old, rewards=rewards, group_ids=group_ids)
  return [batch]


def rl_batches(samples: Sequence[Sample], t: Settings, seed: int) -> list[dict]:
  """One GRPO-family batch of the kept samples, grouped by problem: prompts x G rows,
  halved while the kept samples still fit (and the step's micro-batches still split
  it), so an iteration whose filters kept a few groups computes on a few rows, and
  the step compiles for a handful of shapes. Empty rows carry no loss weight, so the
  loss is the same whatever the padding."""
  del seed
  num_rows = t.prompts * t.samples_per_prompt
  while (num_rows % 2 == 0 and num_rows // 2 >= len(samples)
         and (num_rows // 2) % t.row_unit == 0):
    num_rows //= 2
  return policy_gradient_batch(samples, t, num_rows, lambda s: s.problem_id)


def _own_groups(n: int, first: int) -> np.ndarray:
  """Group ids first, first + 1, ...: each (empty) row a group of its own, so it shares
  no advantage with a real prompt's samples."""
  return np.arange(n, dtype=np.int32) + first


# ----------------------------------------------------------------------------- device-ready


# (tokens, input_mask) on the device -> the reference policy's [B,T] log-probs
RefLogprobs = Callable[[object, object], object]


def device_ready(batch: dict, mesh, rows_per_example: int,
                 ref_logprobs: Optional[RefLogprobs] = None) -> dict:
  """A host batch as the train step takes it: padded with empty rows so it splits over
  the mesh's data x fsdp shards (whole examples: a DPO pair is two rows), placed as
  global arrays (each process transfers only its own devices' rows; every process holds
  the same host batch), and with `ref_logprobs` where the loss reads them (DPO, KL)."""
  batch = pad_to_shards(batch, mesh.shape["data"] * mesh.shape["fsdp"] * rows_per_example)
  sh = sharding_lib.batch_sharding(mesh, 1)
  batch = {key: sharding_lib.put_from_host(x, sh) for key, x in batch.items()}
  if ref_logprobs is not None:
    batch["ref_logprobs"] = ref_logprobs(batch["tokens"], batch["input_mask"])
  return batch


def pad_to_shards(batch: dict, n: int) -> dict:
  """Pads rows with empty ones (loss_mask 0; group ids of their own) to a multiple of n."""
  B = batch["tokens"].shape[0]
  extra = (-B) % n
  if not extra:
    return batch
  out = {}
  for key, x in batch.items():
    pad = np.zeros((extra,) + x.shape[1:], x.dtype)
    if key == "group_ids":
      pad = _own_groups(extra, x.max() + 1).astype(x.dtype)
    out[key] = np.concatenate([x, pad])
  return out
