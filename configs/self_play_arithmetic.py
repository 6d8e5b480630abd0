"""Proposer-solver self-play on arithmetic (Absolute Zero / R-Zero style), by GRPO.

Command:   selfimprove-jax run --config configs/self_play_arithmetic.py --workdir runs/self_play
Hardware:  CPU (2 cores) or one GPU.
Runtime:   5.1 min wall on the 2-core Intel Xeon dev machine (23 GiB), 2026-12-02
           (2 iterations x 2 rounds); peak RSS 7.6 GB.
Result:    held-out greedy pass@1 (100 problems) 0.06 -> 0.06 -> 0.06: no gain (the
           solver passed none of the valid proposals); see benchmarks/EFFICACY.md

The model writes 8 new problems a round from three examples, the verifier keeps the
valid, new ones and the same model solves each 4 times. The proposer is rewarded with
the learnability 4p(1-p) of the solver's pass rate p (-0.5 for a rejected proposal),
the solver with the verifier's reward; one GRPO step per round trains both roles.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "arithmetic"
  config.task.difficulty = 2                 # held-out: two-digit operands, one operation
  config.task.options.operators = "+-"
  config.task.heldout_size = 100
  config.loop.algorithm = "self_play"
  # 2 x 2 rounds (was 3 x 4): sized for about 20 minutes of the idle 2-core CPU
  config.loop.iterations = 2
  config.loop.rl_steps = 2                   # propose -> solve -> update rounds per iteration
  config.loop.prompts_per_iteration = 8      # proposals per round
  config.loop.samples_per_prompt = 4         # solver answers per kept proposal (n >= 2)
  config.self_instruct.examples = 3
  config.self_instruct.max_new_tokens = 24
  config.self_play.invalid_reward = -0.5
  config.self_play.max_level = 4
  config.sampling.temperature = 0.7
  config.sampling.max_new_tokens = 16
  config.select.filters = ""                 # every proposal and answer is trained on
  config.train.max_seq_len = 96
  config.optim.loss = "grpo"
  config.optim.learning_rate = 5e-6
  config.optim.schedule = "constant"
  config.optim.kl_coef = 0.0                 # no reference pass: a CPU budget choice
  # memory on a shared 24 GB CPU machine: one 80 x 128 batch asked for 27 GB, and
  # micro-batches of 8 with whole-sequence logits were OOM-killed at 7.9 GB
  config.optim.micro_batch_size = 4          # gradient accumulation
  config.optim.logprob_chunk = 32            # 32 positions' logits at a time
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 16
  config.lock()
  return config
