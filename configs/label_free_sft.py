"""Label-free SFT: fine-tune on the answers that agree with their problem's majority.

Command:   selfimprove-jax run --config configs/label_free_sft.py --workdir runs/label_free
Hardware:  CPU (2 cores) or one GPU.
Runtime:   8.3 min wall on the 2-core CPU dev machine (Intel Xeon, 24 GiB), 2026-12-02,
           shared for about 2 of those minutes with small compile-only probes; peak RSS
           9.0 GB (before the loop's one-copy memory rule).
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 -> 0.10 -> 0.12
           -> 0.11, all accepted: no measurable gain; see benchmarks/EFFICACY.md

Huang et al. 2022 with TTRL's majority-vote label (Zuo et al. 2025): 8 answers to each
of 64 problems, vote share >= 0.5. The verifier never runs on training samples; it
checks the majorities afterwards, for `pseudo_label_precision` in metrics.jsonl only.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "arithmetic"
  config.task.difficulty = 2
  config.task.options.operators = "+-"
  config.task.heldout_size = 100
  config.loop.algorithm = "sft"
  config.loop.iterations = 3
  config.loop.prompts_per_iteration = 64
  config.loop.samples_per_prompt = 8
  config.sampling.temperature = 0.7          # the quickstart's
  config.sampling.max_new_tokens = 16
  config.acquire.label_free = True
  config.acquire.refine_strategy = "self_consistency"
  config.acquire.min_vote_share = 0.5
  config.select.filters = "refined,dedup,max_length"
  config.train.epochs = 3
  config.train.batch_size = 16
  config.train.max_seq_len = 64
  config.optim.learning_rate = 5e-5          # the quickstart's optimizer settings
  config.optim.warmup_steps = 2
  config.optim.schedule = "cosine"
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 16
  config.lock()
  return config
