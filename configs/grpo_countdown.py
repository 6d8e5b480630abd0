"""GRPO on countdown: SmolLM2-135M-Instruct learns to reach a target number from given
numbers with + - * /, by online RL with verifiable rewards (group-normalised
advantages, clipped ratio, k3 KL to the iteration's starting weights).

Command:   selfimprove-jax run --config configs/grpo_countdown.py --workdir runs/grpo_countdown
Hardware:  one GPU recommended (a CPU works, slowly).
Runtime:   not yet measured on a GPU; each iteration is rl_steps x (16 prompts x 8
           samples + one update). On the 2-core CPU dev machine (idle, 2026-12-02) the
           baseline evaluation took 3.5 min and one rl step 40 s of sampling plus a
           3.5-minute update of all 128 rows (before the GRPO batch shrank to the kept
           rows): about 36 min an iteration, so the run was stopped in iteration 1.
           With the batch sized to the kept rows (16 of them here) an update took
           26.7 s, about 9 min an iteration (1.5 hours for the config's 10).
           Its first attempt ran out of memory: the whole batch's logits asked for
           67.7 GB, hence remat, micro-batches and log-prob chunks below.
Result:    not yet measured. Baseline held-out greedy pass@1 0.08 (maj@4 0.04, pass@4
           0.05, 100 problems, two numbers), train pass rate 0.01-0.02: of each rl
           step's 128 samples the pass-rate band kept 8-16 (1-2 prompts with both right
           and wrong answers) and the length cap 2-10. Prompts whose 8 samples are all
           right or all wrong are dropped (pass_rate_band): they carry no GRPO signal.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "countdown"
  config.task.difficulty = 1                 # two numbers
  config.task.heldout_size = 100
  config.loop.algorithm = "grpo"
  config.loop.iterations = 10
  config.loop.rl_steps = 8
  config.loop.prompts_per_iteration = 16
  config.loop.samples_per_prompt = 8
  config.sampling.temperature = 1.0
  config.sampling.max_new_tokens = 64
  config.select.filters = "pass_rate_band,max_length"
  config.select.max_completion_tokens = 64
  config.train.max_seq_len = 192
  # memory: the whole 128 x 192 batch's logits at once asked for 67.7 GB on the CPU
  config.remat = True
  config.optim.micro_batch_size = 16
  config.optim.logprob_chunk = 64
  config.optim.loss = "grpo"
  config.optim.learning_rate = 1e-6
  config.optim.schedule = "constant"
  config.optim.kl_coef = 0.04
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 64
  config.evaluate.patience = 4
  config.lock()
  return config
