"""Config checks several paradigms share (each paradigm's `check` calls the ones that
apply to it): group-relative advantages need G >= 2 samples per prompt; a paradigm that
makes its own samples takes no refinement targets, no judge reward and no filter that
drops the samples it trains on; replayed samples suit off-policy losses only."""

from __future__ import annotations

from selfimprove_jax.config import names
from selfimprove_jax.errors import UserError


def check_group(config, why: str = "group-relative advantages of one sample are all "
                                   "zero") -> None:
  """Advantages relative within a prompt's G samples: G >= 2."""
  n = config.loop.samples_per_prompt
  if n < 2:
    raise UserError(f"loop.samples_per_prompt={n} must be >= 2 for "
                    f"{config.loop.algorithm} ({why})")


def check_own_acquire(config, drops: tuple = (), role: str = "") -> None:
  """A paradigm that makes its own samples: no refinement targets, no judge reward,
  and none of the filters in `drops` (they would drop its `role` samples)."""
  algorithm, filters = config.loop.algorithm, names(config.select.filters)
  for f in drops:
    if f in filters:
      raise UserError(f"select.filters: {f!r} would drop the {role} samples "
                      f"loop.algorithm={algorithm} trains on")
  if config.acquire.refine_strategy:
    raise UserError(f"acquire.refine_strategy={config.acquire.refine_strategy!r} is not "
                    f"used by loop.algorithm={algorithm} (it makes its own samples)")
  if config.judge.use_as_reward:
    raise UserError(f"judge.use_as_reward is not used by loop.algorithm={algorithm} "
                    f"(it rewards its own way)")


def check_no_replay(config) -> None:
  """select.replay is for sft and dpo: the others learn from this iteration's samples."""
  if config.select.replay:
    raise UserError(f"select.replay={config.select.replay} trains on earlier iterations' "
                    f"samples again, which only sft and dpo can (loop.algorithm="
                    f"{config.loop.algorithm} learns from its current policy's samples)")
