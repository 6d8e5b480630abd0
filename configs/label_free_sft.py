"""Label-free self-improvement ("Large Language Models Can Self-Improve", Huang et al.
2022; the majority-vote label of TTRL, Zuo et al. 2025): SmolLM2-135M-Instruct samples 8
answers to each of 64 two-digit addition / subtraction problems and fine-tunes on the
answers that agree with their problem's majority (vote share >= 0.5). No reference
answer is read while choosing training data: the verifier never runs on training
samples (a sample's reward is its agreement with the majority). After selection, for
the metrics only, the verifier checks the majority answers: `pseudo_label_precision`
in metrics.jsonl is the share of them that are right. The held-out split (scored with
the references, as every evaluation is) is the quickstart's 100 problems.

Command:   selfimprove-jax run --config configs/label_free_sft.py --workdir runs/label_free
Hardware:  CPU (2 cores) or one GPU.
Runtime:   9 min 21 s wall on the 2-core CPU dev machine (Intel Xeon, 24 GiB),
           2026-12-02, shared with other agents' runs (load average ~9), run with
           --config.evaluate.maj_k=1 (greedy pass@1 only, to fit the time left); it
           stopped after iteration 2 (patience 2). Peak RSS 8.5 GB.
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 -> 0.05 -> 0.04;
           both iterations within evaluate.max_regression and accepted, no gain, so the
           best is the baseline's 0.06. The labels are the reason: at temperature 0.7
           the 8 samples of a problem rarely agree (a majority of >= 0.5 on 8 of 64
           problems in iteration 1, 27 of 64 in iteration 2), and the majorities were
           wrong: pseudo_label_precision 0.00 (0 of 8), then 0.07 (2 of 27). The model
           was trained on 4, then 63 samples of mostly wrong answers (the agreement
           rate, "train pass", rose 0.06 -> 0.25 as it grew more self-consistent, not
           more right). For this model and task, the verifier's labels (the quickstart,
           0.06 -> 0.50) are what make the loop work. Measured before the labelling
           rule of `refine.label_votes` (ties and replies cut at the token budget give
           no vote or label), which the TTRL row's wrong majorities led to; with it,
           not yet measured.
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
