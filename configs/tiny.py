"""Tiny: a randomly initialised 2-layer model on one-digit arithmetic, for tests and
for checking that the loop runs end to end in seconds.

Command:   selfimprove-jax run --config configs/tiny.py --workdir runs/tiny
Hardware:  CPU.
Runtime:   under a minute on a 2-core CPU.
Result:    nothing to learn from a random model's samples beyond format; held-out
           pass@1 stays near 0. It exercises every stage, checkpoint and report.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "tiny"
  config.mesh.data = -1
  config.task.name = "arithmetic"
  config.task.difficulty = 1
  config.task.heldout_size = 8
  config.task.test_size = 4
  config.loop.algorithm = "sft"
  config.loop.iterations = 2
  config.loop.prompts_per_iteration = 8
  config.loop.samples_per_prompt = 2
  config.sampling.max_new_tokens = 8
  config.sampling.max_batch = 64
  config.select.filters = "dedup"
  config.select.max_completion_tokens = 8
  config.train.epochs = 1
  config.train.batch_size = 8
  config.train.max_seq_len = 64
  config.optim.learning_rate = 1e-3
  config.evaluate.maj_k = 2
  config.evaluate.max_new_tokens = 8
  config.evaluate.patience = 10
  config.log.progress = False
  config.lock()
  return config
