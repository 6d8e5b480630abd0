"""Self-rewarding DPO (Yuan et al. 2024): the model judges its own answers' pairs.

Command:   selfimprove-jax run --config configs/self_rewarding_dpo.py --workdir runs/srdpo
           (a separate judge: --config.judge.model=<spec>)
Hardware:  CPU or one GPU.
Runtime:   9.8 min wall on the 2-core Intel Xeon dev machine (23 GiB), idle, 2026-12-02
           (it stopped after 2 of 3 iterations on the plateau rule); peak RSS 14.5 GB.
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06, unchanged:
           nothing was trained (no judge reply stated a score, so 0 DPO pairs); see
           benchmarks/EFFICACY.md

4 answers per problem, each judged with an additive 5-point rubric; the best- and
worst-judged answers become a DPO pair. No verifier enters training; on arithmetic it
scores held-out answers and the judge's agreement with it (judge_agreement).
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
  config.loop.dpo_pairs = "judge"            # judge's best vs worst, not the verifier
  config.loop.iterations = 3
  config.loop.prompts_per_iteration = 64
  config.loop.samples_per_prompt = 4
  config.sampling.max_new_tokens = 24
  config.select.filters = "max_length"
  config.judge.model = ""                    # the model judges itself
  config.judge.samples = 1
  config.judge.max_new_tokens = 48
  config.train.epochs = 1
  config.train.batch_size = 8
  config.train.max_seq_len = 96
  config.optim.learning_rate = 5e-6
  config.optim.warmup_steps = 2
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 24
  config.lock()
  return config
