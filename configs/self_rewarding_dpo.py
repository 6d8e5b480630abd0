"""Self-rewarding DPO (Yuan et al. 2024, "Self-Rewarding Language Models"): sample 4
answers per problem, the model judges each with an additive 5-point rubric, and its
best- and worst-judged answers become a DPO pair. No verifier enters training; on
arithmetic the verifier still scores held-out answers and measures the judge's
agreement with it every iteration (judge_agreement, judge_unparsed in metrics.jsonl).

Command:   selfimprove-jax run --config configs/self_rewarding_dpo.py --workdir runs/srdpo
           (a separate judge: --config.judge.model=<spec>)
Hardware:  CPU or one GPU.
Runtime:   not yet measured (judging adds one generation pass per sample).
Result:    not yet measured. A 135M model is a weak judge: watch judge_agreement; when
           it stays near chance the pairs are noise and the gate rolls iterations back.
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
