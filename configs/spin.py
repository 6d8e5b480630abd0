"""SPIN (self-play fine-tuning, Chen et al. 2024) on arithmetic: DPO against itself.

Command:   selfimprove-jax run --config configs/spin.py --workdir runs/spin
Hardware:  CPU (2 cores) or one GPU.
Runtime:   6.5 min wall for both iterations on the 2-core Intel Xeon dev machine
           (23 GiB), idle, 2026-12-02.
Result:    held-out greedy pass@1 (100 problems) 0.06 -> 0.12 -> 0.11, both iterations
           accepted: no measurable gain; see benchmarks/EFFICACY.md

Each iteration the opponent -- the previous iteration's accepted weights -- answers 48
training problems twice; chosen is a reply the verifier accepts, else the reference
("58"); rejected are the opponent's wrong replies; DPO with the opponent as reference.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "arithmetic"
  config.task.difficulty = 2
  config.task.options.operators = "+-"
  config.task.heldout_size = 100
  config.loop.algorithm = "spin"
  config.loop.iterations = 2
  config.loop.prompts_per_iteration = 48
  config.loop.samples_per_prompt = 2
  config.sampling.temperature = 0.7
  config.sampling.max_new_tokens = 16
  config.select.filters = "dedup"            # truncated replies are rejected ones too
  config.train.epochs = 1
  config.train.batch_size = 16               # pairs per optimizer step
  config.train.max_seq_len = 64
  config.optim.learning_rate = 5e-6
  config.optim.warmup_steps = 2
  config.optim.schedule = "cosine"
  config.optim.dpo_beta = 0.1
  config.optim.micro_batch_size = 4          # memory: see self_play_arithmetic.py
  config.optim.logprob_chunk = 32
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 16
  config.lock()
  return config
