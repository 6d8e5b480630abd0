"""Multi-turn code with execution feedback in the episode (RLEF, Gehring et al. 2024).

Command:   selfimprove-jax run --config configs/code_multiturn.py --workdir runs/code_multiturn
Hardware:  CPU or one GPU; programs run in the sandbox's worker pool (one per CPU).
Runtime:   not yet measured in full. A smoke run (10 held-out problems, no test split,
           8 x 2 episodes) on the 2-core AMD EPYC shared with other runs (load 8-15),
           2026-12-07: baseline evaluation 20.9 min (load and compile included),
           acquire 11.7 min, 2 optimizer steps 1.3 min. The default test split (100
           problems) adds 100 greedy episodes to each evaluation.
Result:    not yet measured; compare with configs/code_rlef.py (the same task and budgets,
           single-turn: 0.42 -> 0.58 held-out greedy pass@1, execution_feedback@2 equal).

Each episode is up to 2 submissions (environments/code_feedback.py): the model writes
`solve`, the sandbox runs all 8 tests, and a failing program is answered, in a new user
turn, with the failing test (call, result, expected) or the end of its error; the
episode's reward is its last submission's fraction of tests passed. Expert iteration
keeps the episodes whose last submission passed and trains on the whole episode, loss on
the model's tokens only (observations are masked). Held-out pass@1 is one greedy episode
per problem, so it counts a fix in the second turn; its first turn is the single-turn
row's greedy answer.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "code:list_ops"
  config.task.difficulty = 1            # as code_rlef: SmolLM2-135M is weak at code
  config.task.heldout_size = 50
  config.task.test_size = 50            # the reported split (the default 100 doubles the episodes)
  config.task.options.timeout_s = 2.0   # per program, all of its tests together
  config.environment.name = "code_feedback"
  config.environment.max_turns = 2      # R: a first program and one fix (code_rlef's
                                        # feedback revised up to 2 rounds, fixing 2 prompts)
  # prompt ~110 tokens + 2 turns of <= 128 + one observation (feedback cut to 400 chars)
  config.environment.max_tokens = 512
  config.environment.options.failing_tests = 1
  config.environment.options.max_chars = 400
  config.loop.algorithm = "sft"
  config.loop.iterations = 1
  config.loop.prompts_per_iteration = 32
  config.loop.samples_per_prompt = 4
  config.sampling.temperature = 0.7     # code_rlef: 1.0 passed 4 of 129 samples
  config.sampling.max_new_tokens = 128  # per turn
  # the sampler's KV cache holds max_tokens + max_new_tokens per slot: 64 slots, not 256
  config.sampling.max_batch = 64
  config.select.filters = "correct,dedup,max_length"   # episodes whose last program passed
  config.select.max_completion_tokens = 512            # = max_tokens: drops cut-off turns only
  config.train.epochs = 2
  config.train.batch_size = 4           # code_rlef: 16 rows ran out of memory on 24 GiB
  config.train.max_seq_len = 512        # >= environment.max_tokens (validation refuses less)
  config.optim.learning_rate = 2e-5
  config.optim.warmup_steps = 5
  config.evaluate.maj_k = 1
  config.evaluate.max_new_tokens = 128
  config.evaluate.strategies = ""       # the episode is the feedback loop
  config.lock()
  return config
