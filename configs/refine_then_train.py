"""Refinement feeds training: the self-consistency majority of 8 samples becomes the
training target (samples agreeing with a majority of at least half the votes are
fine-tuned on; no verifier decides what is kept, as in Huang et al. 2022, "Large
Language Models Can Self-Improve"). Each evaluation also reports best_of_n (8,
verifier) and self_consistency (8) held-out scores beside greedy, so the value of
inference compute is visible per iteration; `refined_precision` in metrics.jsonl is how
often the majority was actually right.

Command:   selfimprove-jax run --config configs/refine_then_train.py --workdir runs/refine
           (self-refined targets instead: --config.acquire.refine_strategy=self_refine)
Hardware:  CPU or one GPU.
Runtime:   21.4 min on the 2-core CPU dev machine (Intel Xeon, 24 GiB), idle,
           2026-12-02 (`benchmarks/efficacy.py`; 3 iterations of 1,024 samples, and
           each evaluation samples 8 answers twice over for best_of_n and
           self_consistency); peak RSS 7.2 GB in the train step (no remat).
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 [0.03, 0.12]
           -> 0.11 -> 0.16 [0.10, 0.24] -> 0.16 (iteration 3 trained on nothing, not
           accepted): +0.10, but the paradigm barely ran, so this is not evidence
           that majority targets work at this size. The majority of 8 samples
           reached half the votes on 1 of 128 prompts per iteration (mean vote share
           0.24-0.27; `refined` 4, 4, 0): iteration 1 trained 2 steps on "25 + 14 =
           39" and "25 + 14 equals 39" (right), iteration 2 on "22 - 20 = 1" and
           "22 - 20 22 - 1", a wrong majority (refined_precision 1.0, then 0.0). The
           rise comes from those 4 optimizer steps on 2 problems' worth of
           "a + b = c" answers, i.e. the answer format, as in the quickstart's first
           iteration. best_of_n@8 (verifier) stayed 0.18-0.25 and self_consistency@8
           0.02-0.07: at this accuracy the votes scatter. A lower
           acquire.min_vote_share keeps more majorities, most of them wrong
           (configs/label_free_sft.py: pseudo-label precision 0.00-0.17).
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
