"""Label-free RL (TTRL-style reward): GRPO rewarding agreement with the majority.

Command:   selfimprove-jax run --config configs/ttrl.py --workdir runs/ttrl
Hardware:  CPU (2 cores) or one GPU.
Runtime:   5.5 min wall on the 2-core Intel Xeon dev machine, idle, 2026-12-02
           (commit 0c45867); peak RSS 7.4 GB.
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 -> 0.19 -> 0.19,
           both iterations accepted: +0.13, on one seed; see benchmarks/EFFICACY.md

A sample's reward is 1 when its answer agrees with the majority of its group's 8
answers; the group gets none when the majority holds under half the votes or is tied.
The references serve only the hidden check (`ttrl_label_precision`) and the held-out
split; prompts without answers: see the trial notes in benchmarks/EFFICACY.md.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "arithmetic"
  config.task.difficulty = 2
  config.task.options.operators = "+-"
  config.task.heldout_size = 100
  config.loop.algorithm = "ttrl"
  config.loop.iterations = 2
  config.loop.rl_steps = 3
  config.loop.prompts_per_iteration = 8
  config.loop.samples_per_prompt = 8
  config.acquire.min_vote_share = 0.5        # below it (or on a tie) a group earns nothing
  config.sampling.temperature = 0.7          # samples agree more than at 1.0
  config.sampling.max_new_tokens = 16
  config.select.filters = ""                 # every sample is trained on
  config.train.max_seq_len = 64
  config.optim.loss = "grpo"
  config.optim.learning_rate = 5e-6
  config.optim.schedule = "constant"
  config.optim.kl_coef = 0.0                 # no reference pass: a CPU budget choice
  config.optim.micro_batch_size = 4          # memory: see self_play_arithmetic.py
  config.optim.logprob_chunk = 32
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 16
  config.lock()
  return config
