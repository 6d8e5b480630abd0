"""Iterative DPO on verifier pairs (Rafailov et al. 2023; iterated as in Xiong et al.
2024, "Iterative Preference Learning"): SmolLM2-135M-Instruct samples 8 answers to each
of 64 two-digit addition / subtraction problems, and on each problem a right answer
(the verifier accepts it) is preferred to a wrong one; one DPO pass over those pairs per
iteration, with the iteration's starting weights as the reference. The pairs come from
the *selected* samples, so the filters keep right and wrong ones alike (only 'dedup');
the held-out split is the quickstart's 100 problems.

Command:   selfimprove-jax run --config configs/dpo_arithmetic.py --workdir runs/dpo_arith
Hardware:  CPU (2 cores) or one GPU.
Runtime:   not yet measured: on 2026-12-02 the shared 2-core dev machine (load average
           8-30, other agents' runs) spent the measuring window on grpo_arithmetic.py
           (63 min; one held-out evaluation with maj@4 took 12 min there) and
           label_free_sft.py; see their docstrings.
Result:    not yet measured.
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
