"""SPIN (self-play fine-tuning, Chen et al. 2024) on arithmetic: SmolLM2-135M-Instruct
learns to tell the target answers from its own previous-iteration replies. Each
iteration the opponent -- the previous iteration's accepted weights -- answers 48
training problems twice; chosen is a reply the verifier accepts, else the reference
("58"); rejected are the opponent's wrong replies; DPO with the opponent as reference.

Command:   selfimprove-jax run --config configs/spin.py --workdir runs/spin
Hardware:  CPU (2 cores) or one GPU.
Runtime:   6.5 min wall for both iterations on the 2-core Intel Xeon dev machine (23
           GiB), idle, 2026-12-02 (`benchmarks/efficacy.py --only spin`). An earlier
           1-iteration run on the same machine shared with other jobs (load average
           10-20) took 33 min.
Result:    held-out greedy pass@1 (100 problems) 0.06 -> 0.12 -> 0.11, both iterations
           accepted (maj@4 0.10 -> 0.13 -> 0.12); the best, 0.12, is at the edge of the
           baseline's 95% interval [0.03, 0.12]: no measurable gain. Why, from the
           metrics: the opponent was right on 3 of its 96 replies in both iterations
           (spin_opponent_pass_rate 0.031; in iteration 2 the opponent is iteration 1's
           weights), so 45 of 48 targets were the bare reference ("58") and 3 verified
           replies; 91 and 93 pairs (spin_pairs) set that target against wordy or wrong
           replies, 6 DPO steps each. Pair accuracy fell 0.66 -> 0.61 and the margin
           0.12 -> 0.05: in iteration 2 the opponent already answers closer to the
           target's form, so there is less to push apart, and held-out accuracy stays
           where iteration 1 left it. The gain of iteration 1 is greedy answers in the
           asked format with the right number more often; sampled answers did not
           improve (pass@4 0.18 -> 0.16 in the earlier run), a mode shift toward the
           target's form, not new skill.
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
