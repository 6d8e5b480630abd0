"""STaR on a reasoning-gym generator (Zelikman et al. 2022): sample answers, keep those
reasoning-gym's own scorer accepts, and for each problem the model got wrong every
time, show it the reference answer as a hint and ask again (rationalization); a hinted
answer the scorer accepts is trained on as an answer to the original prompt, the hint
removed (`rationalized` in acquire.jsonl, the count in metrics.jsonl). Fine-tune the
*base* model on right answers and rationalizations each round (STaR restarts from the
pre-trained weights every outer iteration; so does ReST-EM).

Command:   selfimprove-jax run --config configs/star_reasoning_gym.py --workdir runs/star_rg
           (other generators: --config.task.name=reasoning_gym:<name>; STaR without
            rationalization: --config.acquire.rationalize=false)
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
  config.acquire.rationalize = True
  config.select.filters = "correct,dedup,max_length"   # right answers + rationalizations
  config.select.max_completion_tokens = 64
  config.train.max_seq_len = 256
  config.train.epochs = 2
  config.optim.learning_rate = 2e-5
  config.optim.warmup_steps = 5
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 64
  config.lock()
  return config
