"""STaR (Zelikman et al. 2022) on reasoning-gym's letter_counting, with rationalization.

Command:   selfimprove-jax run --config configs/star_reasoning_gym.py --workdir runs/star_rg
Hardware:  CPU or one GPU; needs `pip install 'selfimprove_jax[reasoning]'`.
Runtime:   about 40 min for the baseline and iterations 1-2 (13 and 23 min) on the
           2-core CPU dev machine (Intel Xeon, 24 GiB), 2026-12-02, shared with other
           loop runs; stopped in iteration 3, so the row is imported. Peak RSS 16 GB.
Result:    held-out greedy pass@1 (100 letter_counting problems) 0.19 -> 0.34 after
           iteration 1, then 0.30 (rolled back): +0.15, on one seed; see
           benchmarks/EFFICACY.md

Right answers and rationalizations (a problem failed every time, asked again with its
answer as a hint that is not trained on) fine-tune the *base* weights each round, on
what the last 2 iterations kept (select.replay=2). letter_counting is the one of four
generators tried that the 135M model solves sometimes (greedy 0.23 on 30 problems).
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "reasoning_gym:letter_counting"
  config.task.heldout_size = 100
  config.loop.algorithm = "sft"
  config.loop.restart_from_base = True
  config.loop.iterations = 3
  config.loop.prompts_per_iteration = 64
  config.loop.samples_per_prompt = 4         # 256 samples per iteration
  config.sampling.temperature = 0.7
  config.sampling.max_new_tokens = 48
  config.acquire.rationalize = True
  config.select.filters = "correct,dedup,max_length"   # right answers + rationalizations
  config.select.max_completion_tokens = 48
  config.select.replay = 2
  config.train.max_seq_len = 256
  config.train.epochs = 3                    # the quickstart's optimizer settings: a few
  config.optim.learning_rate = 5e-5          # dozen samples make a few steps
  config.optim.warmup_steps = 2
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 48
  config.lock()
  return config
