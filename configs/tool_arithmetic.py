"""Self-taught tool use (Toolformer-style): SmolLM2-135M-Instruct learns to call a
sandboxed Python tool on 4-digit arithmetic chains, by expert iteration on its episodes.

Command:   selfimprove-jax run --config configs/tool_arithmetic.py --workdir runs/tool_arithmetic
Hardware:  CPU (2 cores) or one GPU; tool calls run in the sandbox's worker pool.
Runtime:   not yet measured (budgets sized for roughly 15-20 min on a 2-core CPU; a
           32-episode probe took 76-250 s on the shared 2-core AMD EPYC machine)
Result:    not yet measured (target of issue 27: test pass@1 +0.30 over the baseline
           after 4 iterations, and above configs/tool_arithmetic_no_tool.py)

Each problem is an episode of at most 3 turns (environments/python_tool.py): the model
may write a ```python block, sees its output inline, then answers. 'correct' and
'tool_used' keep the right episodes that called the tool (Toolformer keeps the calls
that helped); the base model answered none of 32 such problems in its head.
A probe of the base model (32 problems, one episode each at temperature 0.7, shared
2-core AMD EPYC): 0.38 of its episodes called the tool and none was solved (it ran the
worked example's numbers, not the problem's); with the problem after the tool's
description, 0.09 called it and 1 of 32 was solved. So expert iteration starts from a
few right episodes per iteration, as the quickstart did (18 kept in its first).
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "arithmetic"
  config.task.difficulty = 6                 # 4-digit operands, a chain of two operations
  config.task.options.operators = "+-*"
  config.task.heldout_size = 50              # validation: what the gate reads
  config.task.test_size = 50                 # test: the reported number
  config.environment.name = "python_tool"
  config.environment.max_turns = 3           # call, (retry,) answer
  config.environment.max_tokens = 320        # the first observation is ~150 tokens
  config.environment.options.timeout_s = 2.0
  config.environment.options.memory_mb = 64
  config.environment.options.max_output_chars = 200
  config.loop.algorithm = "sft"
  config.loop.iterations = 4
  # episodes cost several turns each, every turn re-prefilling its history: 48 x 2
  # episodes per iteration instead of the quickstart's 256 x 2 single answers
  config.loop.prompts_per_iteration = 48
  config.loop.samples_per_prompt = 2
  config.sampling.temperature = 0.7
  config.sampling.max_new_tokens = 48        # per model turn
  config.sampling.max_batch = 32             # KV cache: (320 + 48) entries per slot
  config.select.filters = "correct,tool_used,dedup"   # right episodes that called the tool
  config.train.epochs = 3
  config.train.batch_size = 8
  config.train.max_seq_len = 320             # >= environment.max_tokens
  config.optim.learning_rate = 5e-5
  config.optim.warmup_steps = 2
  config.optim.schedule = "cosine"
  config.remat = True
  config.evaluate.maj_k = 1                  # one greedy episode per problem
  config.evaluate.max_new_tokens = 48
  config.lock()
  return config
