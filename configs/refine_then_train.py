"""Refinement feeds training: the self-consistency majority of 8 samples is the target.

Command:   selfimprove-jax run --config configs/refine_then_train.py --workdir runs/refine
Hardware:  CPU or one GPU.
Runtime:   21.4 min on the 2-core CPU dev machine (Intel Xeon, 24 GiB), idle,
           2026-12-02; peak RSS 7.2 GB in the train step (no remat).
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 -> 0.11 -> 0.16
           -> 0.16 (iteration 3 trained on nothing): +0.10, from 4 optimizer steps on 2
           problems' majorities, not evidence that majority targets work at this size;
           see benchmarks/EFFICACY.md

Samples agreeing with a majority of at least half the votes are fine-tuned on; no
verifier decides what is kept (Huang et al. 2022). Each evaluation also reports
best_of_n (8, verifier) and self_consistency (8) beside greedy.
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
  config.loop.prompts_per_iteration = 128
  config.loop.samples_per_prompt = 8
  config.sampling.max_new_tokens = 24
  config.acquire.refine_strategy = "self_consistency"
  config.acquire.min_vote_share = 0.5
  config.select.filters = "refined,dedup,max_length"
  config.refine.n = 8
  config.refine.rounds = 2
  config.train.epochs = 2
  config.train.batch_size = 16
  config.train.max_seq_len = 96
  config.optim.learning_rate = 2e-5
  config.optim.warmup_steps = 5
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 24
  config.evaluate.strategies = "best_of_n,self_consistency"
  config.lock()
  return config
