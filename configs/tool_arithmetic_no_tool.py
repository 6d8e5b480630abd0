"""The quickstart recipe without the tool, on configs/tool_arithmetic.py's problems: what
expert iteration reaches on 4-digit arithmetic chains when the model must answer in
its head (the comparison row for self-taught tool use, issue 27).

Command:   selfimprove-jax run --config configs/tool_arithmetic_no_tool.py --workdir runs/tool_arithmetic_no_tool
Hardware:  CPU (2 cores is enough) or one GPU.
Runtime:   not yet measured (the quickstart's budgets took 18.9 min on the 2-core CPU)
Result:    not yet measured

Quickstart's settings (configs/quickstart.py) but for the task (difficulty, operators,
validation and test sizes as in configs/tool_arithmetic.py) and an answer budget that
holds an 8-digit number.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "arithmetic"
  config.task.difficulty = 6                 # as configs/tool_arithmetic.py
  config.task.options.operators = "+-*"
  config.task.heldout_size = 50
  config.task.test_size = 50
  config.loop.algorithm = "sft"
  config.loop.iterations = 4
  config.loop.prompts_per_iteration = 256
  config.loop.samples_per_prompt = 2
  config.sampling.temperature = 0.7
  config.sampling.max_new_tokens = 24        # an 8-digit answer, with room to spare
  config.select.filters = "correct,dedup,max_length"
  config.train.epochs = 3
  config.train.batch_size = 16
  config.train.max_seq_len = 64
  config.optim.learning_rate = 5e-5
  config.optim.warmup_steps = 2
  config.optim.schedule = "cosine"
  config.remat = True
  config.sampling.max_batch = 128
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 24
  config.lock()
  return config
