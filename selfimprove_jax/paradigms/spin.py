"""SPIN, self-play fine-tuning (`loop.algorithm=spin`; Chen et al. 2024, "Self-Play
Fine-Tuning Converts Weak Language Models to Strong Language Models").

DPO in which the model plays against its previous self: for each training prompt the
'chosen' reply is the target answer and the 'rejected' one is what the opponent -- the
weights the iteration starts from, i.e. the previous iteration's accepted model --
generated for the same prompt. Each accepted iteration becomes the next one's opponent
and its DPO reference (the loop's reference is the iteration's starting weights), as
in the paper's iterations.

The target is a generation the verifier accepts when the opponent made one (the model's
own phrasing of a right answer), else the problem's reference written as a reply (SPIN's
human-written target): the reference alone when the task's verifier accepts it as a
reply, else in the declared answer format ("#### <answer>"). A problem without a
reference and without a verified generation gives no pair. Rejected are the opponent's
generations the verifier does not accept (one pair per distinct text): a right answer
pushed down would teach against itself.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from selfimprove_jax.acquire import rounds as acquire_lib
from selfimprove_jax.errors import UserError
from selfimprove_jax.evaluate.heldout import ans_as_completion
from selfimprove_jax.optimize import batches
from selfimprove_jax.paradigms import common
from selfimprove_jax.records import Sample, group_by_problem, normalise
from selfimprove_jax.tasks import verify

TARGET, OPPONENT = "target", "opponent"


def target_text(task, problem) -> str:
  """The reference as a reply: as is when the verifier accepts that, else marked."""
  plain = problem.reference
  return plain if task.score(problem, plain) >= 1.0 else ans_as_completion(plain)


def spin_round(r: acquire_lib.Round, problems: Sequence) -> list[Sample]:
  """The opponent's G generations per problem (role 'opponent', verified) and one
  target per problem (role 'target'): the first verified generation, else the
  reference written as a reply (a sample without log-probs: never sampled)."""
  if not hasattr(r.generate, "target"):
    raise UserError("loop.algorithm=spin needs a policy that can write a reference as a reply")
  threshold = r.settings.reward_threshold
  samples = acquire_lib.acquire(r.generate, r.task, problems, r.settings.sample,
                                r.settings.n, r.seed, r.iteration)
  by_id = {p.id: p for p in problems}
  out, written = [], []
  for pid, group in group_by_problem(samples).items():
    good = next((s for s in group if s.reward >= threshold), None)
    out += [s.replace(role=TARGET if s is good else OPPONENT) for s in group]
    p = by_id[pid]
    if good is None and p.reference:
      written.append(r.generate.target(p.prompt, target_text(r.task, p)).replace(
          problem_id=pid, reference=p.reference, iteration=int(r.iteration),
          sample_index=len(group), role=TARGET))
  verdicts = verify(r.task, [by_id[s.problem_id] for s in written],
                    [s.completion for s in written])
  out += [s.replace(reward=float(v.reward), verifier_status=v.status,
                    verifier_detail=v.detail) for s, v in zip(written, verdicts)]
  return out


def spin_pairs(samples: Sequence[Sample], threshold: float) -> list[tuple[Sample, Sample]]:
  """(target, opponent generation) per prompt, for each distinct generation the
  verifier rejects."""
  pairs = []
  for group in group_by_problem(samples).values():
    target = next((s for s in group if s.role == TARGET), None)
    seen = set()
    for s in group:
      text = normalise(s.completion)
      if target is None or s.role != OPPONENT or s.reward >= threshold or text in seen:
        continue
      seen.add(text)
      pairs.append((target, s))
  return pairs


def spin_batches(samples: Sequence[Sample], t: batches.Settings, seed: int) -> list[dict]:
  """DPO batches of the selected samples' SPIN pairs (shuffled by `seed`)."""
  pairs = spin_pairs(samples, t.reward_threshold)
  np.random.default_rng(seed).shuffle(pairs)
  return batches.pair_batches(pairs, t, seed + 1)


def spin_metrics(samples: Sequence[Sample], threshold: float) -> dict:
  """Pairs, where the targets came from, and the opponent's training pass rate."""
  targets = [s for s in samples if s.role == TARGET]
  opponent = [s for s in samples if s.role in (TARGET, OPPONENT) and s.logprobs]
  return {"spin_pairs": len(spin_pairs(samples, threshold)),
          "spin_targets_verified": sum(bool(s.logprobs) for s in targets),
          "spin_targets_reference": sum(not s.logprobs for s in targets),
          "spin_opponent_pass_rate": (sum(s.reward >= threshold for s in opponent)
                                      / max(1, len(opponent)))}


def check(config) -> None:
  """SPIN makes its own samples, trains on the rejected ones too, and pairs this
  iteration's targets with this iteration's generations."""
  common.check_own_acquire(config, drops=("correct",), role="rejected")
  common.check_no_replay(config)
