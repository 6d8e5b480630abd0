"""Iterative DPO on verifier pairs (Rafailov et al. 2023; Xiong et al. 2024).

Command:   selfimprove-jax run --config configs/dpo_arithmetic.py --workdir runs/dpo_arith
Hardware:  CPU (2 cores) or one GPU.
Runtime:   8.3 min wall on the 2-core Intel Xeon dev machine (23 GiB), 2026-12-02;
           peak RSS 9.0 GB.
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 -> 0.21 -> 0.40
           -> 0.47, all three iterations accepted; see benchmarks/EFFICACY.md

8 answers to each of 64 problems; on each problem a right answer (the verifier accepts
it) is preferred to a wrong one, one DPO pass per iteration with the iteration's
starting weights as the reference. The pairs come from the *selected* samples, so the
filters keep right and wrong ones alike (only 'dedup').
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "arithmetic"
  config.task.difficulty = 2
  config.task.options.operators = "+-"
  config.task.heldout_size = 100
  config.loop.algorithm = "dpo"
  config.loop.dpo_pairs = "verifier"         # right vs wrong answer of one problem
  config.loop.iterations = 3
  config.loop.prompts_per_iteration = 64
  config.loop.samples_per_prompt = 8
  config.sampling.temperature = 0.7          # the quickstart's
  config.sampling.max_new_tokens = 16
  # Right and wrong answers both survive (no 'correct'), and so do answers cut off at
  # 16 tokens: wrong ones, and as rejected answers they teach brevity
  config.select.filters = "dedup"
  config.train.epochs = 2
  config.train.batch_size = 8                # pairs per step (16 rows)
  config.train.max_seq_len = 64
  config.optim.learning_rate = 1e-5
  config.optim.warmup_steps = 1
  config.optim.dpo_beta = 0.1
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 16
  config.lock()
  return config
