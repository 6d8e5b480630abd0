"""GRPO on the quickstart's task: SmolLM2-135M-Instruct learns two-digit addition and
subtraction by online RL with verifiable rewards (Shao et al. 2024): each of rl_steps
rounds per iteration samples 8 answers to each of 8 fresh problems, scores them with
the verifier, and takes one policy-gradient step on the group-relative advantages
(clipped ratio, k3 KL to the iteration's starting weights). Groups whose 8 answers are
all right or all wrong carry no advantage and are dropped (pass_rate_band). The
held-out split is the quickstart's 100 problems, so the two are compared directly.

Command:   selfimprove-jax run --config configs/grpo_arithmetic.py --workdir runs/grpo_arith
           RLOO (leave-one-out baseline, Ahmadian et al. 2024): --config.optim.loss=rloo
           Dr. GRPO (no std or length normalisation, Liu et al. 2025):
             --config.optim.loss=dr_grpo
           KL off (no reference pass; DAPO drops it too): --config.optim.kl_coef=0
Hardware:  CPU (2 cores) or one GPU.
Runtime:   63 min wall on the 2-core CPU dev machine (Intel Xeon, 24 GiB), 2026-12-02,
           shared with other agents' runs (load average 8-30), so inflated well past
           the 20-minute target: the baseline evaluation with maj@4 alone took 12 min,
           iterations 1-3 took 15, 18 and 6 min (as the load fell). The
           run was stopped once (SIGTERM) in iteration 1 and resumed with
           --config.evaluate.maj_k=1 --override_config (greedy pass@1 is unaffected),
           so maj@4 exists for the baseline only. Peak RSS 7.0 GB (resumed part).
Result:    held-out greedy pass@1 (the quickstart's 100 problems) 0.06 -> 0.34 -> 0.35
           -> 0.36 after iterations 1-3, all accepted (GRPO, KL 0.04; 11 updates in
           all). It does not match the SFT quickstart (0.06 -> 0.30 -> 0.46). From the
           logged metrics (metrics.jsonl, the acquire lines):
           - reward per round (train pass rate of the 64 samples): 0.06 0.09 0.16 0.06
             | 0.22 0.23 0.27 0.30 | 0.16 0.02 0.38 0.50: it climbs, noisily;
           - most groups carry no signal: zero_advantage_groups 0.62, 0.47, 0.78 (all 8
             answers right or all wrong); in iteration 3's last round all 8 groups did,
             each prompt's 8 answers were one identical string, and no update was taken.
             Entropy per token fell 1.55 -> 0.69 -> 0.35: the policy collapsed to
             near-greedy answers at temperature 0.7, so the group-relative signal dried
             up just as the reward rose;
           - KL to the iteration's start stayed small (0.056, 0.064, 0.007 per token)
             and clip_fraction was 0 (one update per batch: on-policy ratios are 1), so
             neither the KL anchor nor clipping held it back.
           So the first 4 updates did most of the work (0.06 -> 0.34) and later ones,
           with 22-53% of rows carrying advantage, added 0.02. Untried here: a higher
           sampling temperature or more samples per prompt against the collapse, and
           more rl_steps; RLOO, Dr. GRPO and KL off have rows of their own
           (configs/rloo_arithmetic.py 0.34, dr_grpo_arithmetic.py 0.32,
           grpo_arithmetic_no_kl.py 0.34: the same plateau).
           Seed 1 (`benchmarks/efficacy.py --only grpo_arithmetic --seeds 1`, from
           scratch on the idle machine, 10.0 min, peak RSS 8.3 GB): 0.06 -> 0.41 after
           iteration 1 (3 updates), then 0.25 and 0.33, both rolled back, so the best
           is 0.41. The same pattern as seed 0, sharper: the first few updates do most
           of the work (train reward 0.32 in iteration 1), then most groups carry no
           signal (zero_advantage_groups 0.66, 0.75, 0.56) while entropy falls (1.13 ->
           0.71 -> 0.64), and the later updates move held-out accuracy down. Across the
           two seeds GRPO's best (0.36, 0.41) is below the SFT quickstart's (0.50,
           0.38 at seeds 0, 1) on average but inside its seed spread.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "arithmetic"
  config.task.difficulty = 2                 # two-digit operands, one operation
  config.task.options.operators = "+-"
  config.task.heldout_size = 100
  config.loop.algorithm = "grpo"
  config.loop.iterations = 3
  config.loop.rl_steps = 4                   # acquire -> one update, 4 times per iteration
  # 8 x 8 = 64 rows per update: a GRPO step costs a 64-row forward and backward (and a
  # reference forward with the KL), whatever share of groups carries a signal
  config.loop.prompts_per_iteration = 8
  config.loop.samples_per_prompt = 8
  config.sampling.temperature = 0.7          # the quickstart's
  config.sampling.max_new_tokens = 16
  # No max_length filter: an answer cut off at 16 tokens is a wrong answer whose
  # negative advantage teaches brevity; dropping it left 6 of 64 rows in a first try
  config.select.filters = "pass_rate_band"
  config.train.max_seq_len = 64
  # Memory: the 64-row step runs as 8 accumulated micro-batches of 8 (the group
  # advantages are computed over the whole batch first), the vocabulary projection in
  # chunks of 32 positions; at 64 rows in one piece a first try reached 12 GB and was
  # killed on the 24 GiB dev machine
  config.optim.micro_batch_size = 8
  config.optim.logprob_chunk = 32
  config.optim.loss = "grpo"
  config.optim.learning_rate = 2e-5          # 12 updates in all: a small-model, few-step rate
  config.optim.schedule = "constant"
  config.optim.kl_coef = 0.04                # the GRPO paper's
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 16
  config.lock()
  return config
