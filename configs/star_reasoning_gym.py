"""STaR on a reasoning-gym generator: sample answers, keep those reasoning-gym's own
scorer accepts, and fine-tune the *base* model on them each round (STaR, Zelikman et
al. 2022, restarts from the pre-trained weights every outer iteration; so does ReST-EM).

Command:   selfimprove-jax run --config configs/star_reasoning_gym.py --workdir runs/star_rg
           (other generators: --config.task.name=reasoning_gym:<name>)
Hardware:  CPU or one GPU; needs `pip install 'selfimprove_jax[reasoning]'`.
Runtime:   not yet measured.
Result:    not yet measured.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "reasoning_gym:leg_counting"
  config.task.heldout_size = 100
  config.loop.algorithm = "sft"
  config.loop.restart_from_base = True
  config.loop.iterations = 3
  config.loop.prompts_per_iteration = 128
  config.loop.samples_per_prompt = 8
  config.sampling.max_new_tokens = 64
  config.select.filters = "correct,dedup,max_length"
  config.select.max_completion_tokens = 64
  config.train.max_seq_len = 256
  config.train.epochs = 2
  config.optim.learning_rate = 2e-5
  config.optim.warmup_steps = 5
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 64
  config.lock()
  return config
