"""Dr. GRPO on the quickstart's task (Liu et al. 2025): GRPO without its normalisations.

Command:   selfimprove-jax run --config configs/dr_grpo_arithmetic.py --workdir runs/dr_grpo_arith
Hardware:  CPU (2 cores) or one GPU.
Runtime:   22.3 min wall on the 2-core CPU dev machine (Intel Xeon, 24 GiB), 2026-12-02,
           shared the whole time with a second loop run and memory probes (about half
           the machine); peak RSS 8.2 GB.
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 -> 0.32 -> 0.32
           -> 0.31, all accepted: best 0.32; see benchmarks/EFFICACY.md

configs/grpo_arithmetic.py with the advantage reward minus the group mean (no division
by the group's standard deviation) and each answer's token terms divided by a constant
(the batch's padded length) instead of its own length. KL, clipping and batch sizes are
GRPO's.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "arithmetic"
  config.task.difficulty = 2                 # two-digit operands, one operation
  config.task.options.operators = "+-"
  config.task.heldout_size = 100
  config.loop.algorithm = "grpo"
  config.loop.iterations = 3
  config.loop.rl_steps = 4                   # acquire -> one update, 4 times per iteration
  # 8 x 8 = 64 rows per update: a GRPO step costs a 64-row forward and backward (and a
  # reference forward with the KL), whatever share of groups carries a signal
  config.loop.prompts_per_iteration = 8
  config.loop.samples_per_prompt = 8
  config.sampling.temperature = 0.7          # the quickstart's
  config.sampling.max_new_tokens = 16
  # No max_length filter: an answer cut off at 16 tokens is a wrong answer whose
  # negative advantage teaches brevity; dropping it left 6 of 64 rows in a first try
  config.select.filters = "pass_rate_band"
  config.train.max_seq_len = 64
  # Memory: the 64-row step runs as 8 accumulated micro-batches of 8 (the group
  # advantages are computed over the whole batch first), the vocabulary projection in
  # chunks of 32 positions; at 64 rows in one piece a first try reached 12 GB and was
  # killed on the 24 GiB dev machine
  config.optim.micro_batch_size = 8
  config.optim.logprob_chunk = 32
  config.optim.loss = "dr_grpo"              # no std or length normalisation
  config.optim.learning_rate = 2e-5          # 12 updates in all: a small-model, few-step rate
  config.optim.schedule = "constant"
  config.optim.kl_coef = 0.04                # the GRPO paper's
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 16
  config.lock()
  return config
