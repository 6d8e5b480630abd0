"""GRPO on countdown: reach a target number from given numbers with + - * /.

Command:   selfimprove-jax run --config configs/grpo_countdown.py --workdir runs/grpo_countdown
Hardware:  one GPU recommended (a CPU works, slowly).
Runtime:   not yet measured on a GPU. On the 2-core CPU dev machine (idle, 2026-12-02)
           an update on the kept rows took 26.7 s, about 9 min an iteration (1.5 hours
           for the config's 10); the first CPU run was stopped in iteration 1.
Result:    not yet measured (baseline held-out greedy pass@1 0.08, 100 problems, two
           numbers); see benchmarks/EFFICACY.md

Remat, micro-batches and log-prob chunks because the first attempt ran out of memory
(the whole batch's logits asked for 67.7 GB). Prompts whose 8 samples are all right or
all wrong are dropped (pass_rate_band): they carry no GRPO signal.
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
