"""Label-free RL (TTRL-style reward) on arithmetic: GRPO where a sample's reward is 1
when its answer agrees with the majority of its group's 8 answers, and the group gets
no reward when the majority holds under half the votes or is tied. The problems'
references are never read for a reward: they only serve as the hidden check behind
`ttrl_label_precision` (how often the majority was right) and `ttrl_hidden_pass_rate`,
and as the held-out split's references. For prompts without answers, point task.name at
a jsonl file whose rows have only a prompt (or a `hidden_answer`, used for evaluation
and precision only) and set task.options.answer_kind = "number" for numeric answers.

Command:   selfimprove-jax run --config configs/ttrl.py --workdir runs/ttrl
Hardware:  CPU (2 cores) or one GPU.
Runtime:   5.5 min wall on the 2-core Intel Xeon dev machine, idle, 2026-12-02
           (`benchmarks/efficacy.py --only ttrl`, commit 0c45867); peak RSS 7.4 GB.
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 -> 0.19 -> 0.19,
           both iterations accepted: +0.13, outside the baseline's 95% interval
           [0.03, 0.12], on one seed. From the metrics: few groups earn a label at all
           (ttrl_labeled_share 0.125, then 0.0; mean vote share 0.21, 0.19), and the
           labels it made were mostly right (ttrl_label_precision 0.67: 2 of 3). So
           iteration 1's 3 updates pushed toward 2 right answers and 1 wrong one, which
           moved greedy answers (pass@1 0.19) but not sampled ones (sampled reward 0.06
           before and after, pass@4 0.18 -> 0.16); iteration 2 found no label, so its
           updates carried no advantage and the score stayed.
           The label rule matters: an earlier run (commit f59c80d, 11.6 min, partly
           shared with tests), before replies cut off at the 16-token budget lost
           their vote, fell to 0.01 and 0.03 (both rolled back) with
           ttrl_label_precision 0.0: such replies ("To add 67 and 53, we need to keep
           track ...") end on an operand they restate, and the majorities elected it
           (67 + 53 -> "53"); the agreement reward reached 0.45 as the policy learned
           to restate operands.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "arithmetic"
  config.task.difficulty = 2
  config.task.options.operators = "+-"
  config.task.heldout_size = 100
  config.loop.algorithm = "ttrl"
  config.loop.iterations = 2
  config.loop.rl_steps = 3
  config.loop.prompts_per_iteration = 8
  config.loop.samples_per_prompt = 8
  config.acquire.min_vote_share = 0.5        # below it (or on a tie) a group earns nothing
  config.sampling.temperature = 0.7          # samples agree more than at 1.0
  config.sampling.max_new_tokens = 16
  config.select.filters = ""                 # every sample is trained on
  config.train.max_seq_len = 64
  config.optim.loss = "grpo"
  config.optim.learning_rate = 5e-6
  config.optim.schedule = "constant"
  config.optim.kl_coef = 0.0                 # no reference pass: a CPU budget choice
  config.optim.micro_batch_size = 4          # memory: see self_play_arithmetic.py
  config.optim.logprob_chunk = 32
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 16
  config.lock()
  return config
