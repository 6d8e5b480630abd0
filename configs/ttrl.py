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
Runtime:   11.6 min wall (`benchmarks/efficacy.py --only ttrl`, 2026-12-02, the 2-core
           Intel Xeon dev machine, partly shared with test runs); peak RSS 7.6 GB.
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 -> 0.01 -> 0.03:
           both iterations were rolled back (the gate kept the base weights) and the
           run stopped on the plateau rule; no gain. Why, from the metrics and
           records: every pseudo-label was wrong (ttrl_label_precision 0.0 in both
           iterations). Replies were cut at 16 new tokens mid-explanation ("To add 67
           and 53, we need to keep track ...") and the last number such a reply holds
           is an operand it restated, so the majorities elected the second operand
           (67 + 53 -> "53", 77 + 39 -> "39"). In iteration 1's third round the
           agreement reward reached 0.45 as the policy learned to restate operands,
           and held-out pass@1 fell to 0.01. Labelled groups: 33% then 4% of them.
           Since this run, a reply cut off at its token budget casts no vote
           (`refine.label_votes`), so such groups get no label and no reward; that
           rule is not yet measured here. Measured at commit f59c80d.
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
