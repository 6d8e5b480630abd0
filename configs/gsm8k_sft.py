"""GSM8K expert iteration: train on GSM8K's train file, report its test file.

Command:   selfimprove-jax run --config configs/gsm8k_sft.py --workdir runs/gsm8k_sft
           (other paths: --config.task.name=jsonl:PATH --config.task.options.test_path=PATH)
Data:      huggingface-cli download openai/gsm8k --repo-type dataset --local-dir data/gsm8k
           (Parquet files main/{train,test}-00000-of-00001.parquet, loaded as they are:
           the reference is the text after '####'); any GSM8K .jsonl works as well
Hardware:  one GPU; on the 2-core CPU only with fewer problems and tokens.
Runtime:   not measured yet.
Result:    not measured yet.

The validation split (every decision) is the train file's own held-out side; the test
split is the first task.test_size problems of the test file, read by no decision, and
no train problem that is a twin of a test problem ever trains.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "jsonl:data/gsm8k/main/train-00000-of-00001.parquet"
  config.task.options.format = "gsm8k"
  config.task.options.test_path = "data/gsm8k/main/test-00000-of-00001.parquet"
  config.task.options.instruction = "Give your final answer after '####'."
  config.task.options.heldout_fraction = 0.05   # about 370 of 7,473 train problems
  config.task.heldout_size = 200
  config.task.test_size = 1319                  # the whole GSM8K test file
  config.loop.algorithm = "sft"
  config.loop.iterations = 3
  config.loop.prompts_per_iteration = 256
  config.loop.samples_per_prompt = 4
  config.sampling.temperature = 0.7
  config.sampling.max_new_tokens = 256
  config.select.filters = "correct,dedup,max_length"
  config.train.epochs = 2
  config.train.batch_size = 16
  config.train.max_seq_len = 512
  config.optim.learning_rate = 2e-5
  config.optim.warmup_steps = 5
  config.evaluate.maj_k = 4
  config.evaluate.max_new_tokens = 256
  config.lock()
  return config
