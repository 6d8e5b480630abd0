"""Self-rewarding DPO (Yuan et al. 2024, "Self-Rewarding Language Models"): sample 4
answers per problem, the model judges each with an additive 5-point rubric, and its
best- and worst-judged answers become a DPO pair. No verifier enters training; on
arithmetic the verifier still scores held-out answers and measures the judge's
agreement with it every iteration (judge_agreement, judge_unparsed in metrics.jsonl).

Command:   selfimprove-jax run --config configs/self_rewarding_dpo.py --workdir runs/srdpo
           (a separate judge: --config.judge.model=<spec>)
Hardware:  CPU or one GPU.
Runtime:   9.8 min wall on the 2-core Intel Xeon dev machine (23 GiB), idle, 2026-12-02
           (`benchmarks/efficacy.py --only self_rewarding_dpo`; it stopped after 2 of 3
           iterations on the plateau rule); peak RSS 14.5 GB.
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06, unchanged: no
           gain, because nothing was trained. Why, from the metrics: the model never
           acted as a judge. judge_unparsed was 1.0 in both iterations: none of its
           replies to the rubric (score 0-5, end with "Score: <points>", 48 new
           tokens) stated a score; they answered the question instead ("The answer to
           the question "What is 81 - 75?" is 1.") or chatted. With every judge score
           missing, no prompt had a best and a worst answer to pair, so both
           iterations made 0 DPO pairs and were "not accepted: trained on nothing".
           A 135M model cannot be its own judge here; a larger judge
           (`judge.model`) or the verifier's pairs (configs/dpo_arithmetic.py: 0.06 ->
           0.47) are what work at this size.
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
