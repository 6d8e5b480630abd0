"""Proposer-solver self-play on arithmetic (Absolute Zero / R-Zero style): SmolLM2-135M-
Instruct writes 8 new problems per round from three examples of the task, the
arithmetic verifier keeps the valid, new ones (parses, solvable, not a near-duplicate,
not held-out, level <= 4) and computes their answers; the same model solves each kept
proposal 4 times, asked in the task's own wording.
The proposer is rewarded with the learnability 4p(1-p) of the solver's pass rate p
(-0.5 for a rejected proposal), the solver with the verifier's reward; both roles are
trained in one GRPO step per round, advantages relative within role groups. Held-out
evaluation stays on the quickstart's 100 two-digit +/- problems.

Command:   selfimprove-jax run --config configs/self_play_arithmetic.py --workdir runs/self_play
Hardware:  CPU (2 cores) or one GPU.
Runtime:   5.1 min wall on the 2-core Intel Xeon dev machine (23 GiB), 2026-12-02
           (`benchmarks/efficacy.py --only self_play_arithmetic`, 2 iterations x 2
           rounds); peak RSS 7.6 GB. An earlier run at 3 x 4 rounds on the same machine
           shared with other jobs (load average 10-20) took 32 min for iteration 1.
Result:    held-out greedy pass@1 (100 problems) 0.06 -> 0.06 -> 0.06 (both iterations
           accepted, no drop; maj@4 0.10 -> 0.08 -> 0.11); no gain, and the run stopped
           on the plateau rule. Why, from the metrics: 3 of 16 and then 2 of 16
           proposals were valid (self_play_valid_share 0.19, 0.12; the rest mostly
           statements with an answer, "88 - 51 = 9.", or chatter, "Here are two new
           problems:"; 2 held-out leaks rejected), and the solver passed none of its 4
           answers to any valid one (self_play_mean_p 0.0, p_hist all at 0): at 16 new
           tokens the 135M model mostly talks past the answer or gets it wrong. With
           p = 0 every valid proposal's learnability is 0 and every solver group has
           zero advantage, so the only signal was the proposer's valid (0) vs rejected
           (-0.5) contrast (self_play_proposer_reward -0.41, -0.44); the solver learnt
           nothing, and the held-out score could not move. The earlier 3 x 4 run's first
           iteration showed the same (6 of 32 valid, p = 0 on all). Self-play needs a
           solver that passes its own problems sometimes (p between 0 and 1).
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
