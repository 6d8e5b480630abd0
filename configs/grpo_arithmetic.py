"""GRPO on the quickstart's task: online RL with verifiable rewards (Shao et al. 2024).

Command:   selfimprove-jax run --config configs/grpo_arithmetic.py --workdir runs/grpo_arith
Hardware:  CPU (2 cores) or one GPU.
Runtime:   63 min wall on the 2-core CPU dev machine (Intel Xeon, 24 GiB), 2026-12-02,
           shared with other runs (load average 8-30) and resumed once; seed 1, from
           scratch on the idle machine: 10.0 min, peak RSS 8.3 GB.
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 -> 0.36 at seed 0
           (all 3 iterations accepted), 0.06 -> 0.41 at seed 1 (iterations 2-3 rolled
           back). With the test split (seed 0, 2026-12-04, AMD EPYC x2 shared, 15.6
           min): validation 0.06 -> 0.36, test (read by no decision) 0.10 -> 0.32 (25
           up, 3 down); see benchmarks/EFFICACY.md

Each of the 4 rounds (rl_steps) of an iteration samples 8 answers to each of 8 fresh
problems and takes one step on the group-relative advantages (clipped ratio, k3 KL to
the iteration's start); groups all right or all wrong are dropped (pass_rate_band).
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
  config.optim.loss = "grpo"
  config.optim.learning_rate = 2e-5          # 12 updates in all: a small-model, few-step rate
  config.optim.schedule = "constant"
  config.optim.kl_coef = 0.04                # the GRPO paper's
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 16
  config.lock()
  return config
