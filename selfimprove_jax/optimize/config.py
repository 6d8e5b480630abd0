"""The optimisation config: every key and its default in one place.

`default_optim_config()` is what experiment configs embed (as `config.optim`) and
override; `check_optim_config` turns a bad value into one `UserError` line.
"""

from __future__ import annotations

import math

import ml_collections

from selfimprove_jax.errors import UserError

LOSS_NAMES = ("sft", "dpo", "grpo", "rloo", "dr_grpo")
POLICY_GRADIENT_LOSSES = ("grpo", "rloo", "dr_grpo")
SCHEDULES = ("cosine", "linear", "constant")
HORIZONS = ("batches", "planned")
MOMENT_DTYPES = ("float32", "bfloat16")
AGGREGATIONS = ("token", "sequence")


# size: the table of every optimizer key and its default, one per line
def default_optim_config() -> ml_collections.ConfigDict:
  """Defaults for the optimizer, the schedule, accumulation and the losses."""
  c = ml_collections.ConfigDict()
  # AdamW + schedule. b2=0.95 (Llama/DeepSeek fine-tuning practice) recovers from
  # loss spikes faster than 0.999 on the short, noisy RL phases of the loop.
  c.learning_rate = 1e-5
  c.warmup_steps = 0             # linear warmup from 0 to learning_rate
  c.total_steps = 1000           # end of the decay (cosine/linear); constant ignores it
                                 # (the loop derives it: algorithms.optimizer_config;
                                 # see schedule_horizon)
  # The loop's optimizer across iterations: False = a fresh optimizer and schedule each
  # iteration (checkpoints then hold no optimizer state); True = Adam moments, step and
  # schedule continue across iterations (the schedule spans the whole run), are saved
  # in every checkpoint and restored on resume; a rollback returns to the accepted
  # iteration's optimizer state with its weights.
  c.continue_state = False
  c.schedule = "cosine"          # 'cosine' | 'linear' | 'constant'
  # Where a fresh (continue_state=False) SFT/DPO schedule ends: 'batches' = after the
  # steps the iteration's selected data makes; 'planned' = at total_steps, the bound
  # for every sample kept (a filtered iteration then stops early in its warm phase).
  c.schedule_horizon = "batches"
  c.min_lr_ratio = 0.0           # decay ends at learning_rate * min_lr_ratio
  c.weight_decay = 0.0           # decoupled; never on norms, biases, embeddings
  c.b1 = 0.9
  c.b2 = 0.95
  c.eps = 1e-8
  c.grad_clip_norm = 1.0         # global-norm clipping; 0 disables
  # The loop rolls an iteration back when one update is larger than this fraction of
  # the weights' norm (||update|| / ||params||): an exploding step, e.g. a huge
  # learning rate without clipping. AdamW fine-tuning steps are ~1e-4 of it. 0 = off.
  c.max_update_ratio = 1.0
  # Storage dtype of the Adam moments ('float32' | 'bfloat16'); the update is computed
  # in fp32 either way. bf16 halves the optimizer state: 2 x 4 -> 2 x 2 bytes per
  # parameter, 5.0 GB less for a 1.24B model (benchmarks/memory.py).
  c.moment_dtype = "float32"
  # The update one parameter array at a time, each in its own compiled call, instead
  # of inside the one jitted step: in one jit XLA (on the CPU) keeps a copy of the
  # weights and moments while it updates them in place; per array that copy is one
  # array's. For full-weight training of a model whose state only just fits (a 1.24B
  # model on a 24 GB host: benchmarks/RESULTS.md); the same results to float rounding,
  # a few dispatches more per step.
  c.update_per_array = False
  # Gradient accumulation inside one jitted step (lax.scan over micro-batches).
  # micro_batch_size > 0 wins: accumulation steps = batch // micro_batch_size.
  c.grad_accum_steps = 1
  c.micro_batch_size = 0
  # Params are always fp32 master weights; the compute dtype is ModelConfig.dtype
  # (bf16 casts the weights inside the model) and ModelConfig.remat saves memory.
  # Time positions per vocab-projection chunk; 0 = whole. Chunks bound the fp32 logits
  # to B*chunk*V*4 bytes; whole is ~12% faster where it fits (logprobs.py).
  c.logprob_chunk = 256
  c.seed = 0                     # TrainState.rng
  # Loss, chosen by name from losses.LOSSES.
  c.loss = "sft"                 # 'sft' | 'dpo' | 'grpo' | 'rloo' | 'dr_grpo'
                                 # (the loop: loop.algorithm's; grpo picks grpo/rloo/dr_grpo)
  c.aggregation = "token"        # 'token' (DAPO) | 'sequence' (GRPO paper); dr_grpo: constant
  c.dpo_beta = 0.1
  c.dpo_label_smoothing = 0.0    # conservative DPO (cDPO) when > 0
  c.kl_coef = 0.04               # k3 KL to the reference (GRPO paper value); 0 = off
  c.clip_eps = 0.2               # PPO ratio clip, lower side
  c.clip_eps_high = 0.2          # upper side; 0.28 = DAPO clip-higher
  c.adv_eps = 1e-4               # std floor of GRPO's group normalisation
  return c


def check_optim_config(c) -> None:
  """Raises UserError naming the first bad value."""
  for key, value in c.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise UserError(f"optim.{key}={value!r} is not a finite number")
  choices = {"loss": LOSS_NAMES, "schedule": SCHEDULES, "aggregation": AGGREGATIONS,
             "moment_dtype": MOMENT_DTYPES, "schedule_horizon": HORIZONS}
  for key, allowed in choices.items():
    if c[key] not in allowed:
      raise UserError(f"optim.{key}={c[key]!r} is not one of {', '.join(allowed)}")
  for key in ("warmup_steps", "weight_decay", "grad_clip_norm", "micro_batch_size",
              "logprob_chunk", "kl_coef", "clip_eps", "clip_eps_high", "max_update_ratio"):
    if c[key] < 0:
      raise UserError(f"optim.{key}={c[key]!r} must be >= 0")
  for key in ("learning_rate", "total_steps", "dpo_beta", "eps", "adv_eps"):
    if c[key] <= 0:
      raise UserError(f"optim.{key}={c[key]!r} must be > 0")
  for key in ("b1", "b2"):
    if not 0.0 <= c[key] < 1.0:
      raise UserError(f"optim.{key}={c[key]!r} must be in [0, 1)")
  if not 0.0 <= c.min_lr_ratio <= 1.0:
    raise UserError(f"optim.min_lr_ratio={c.min_lr_ratio!r} must be in [0, 1]")
  if c.grad_accum_steps < 1:
    raise UserError(f"optim.grad_accum_steps={c.grad_accum_steps!r} must be >= 1")
  if not 0.0 <= c.dpo_label_smoothing < 0.5:
    raise UserError(f"optim.dpo_label_smoothing={c.dpo_label_smoothing!r} must be in [0, 0.5)")
