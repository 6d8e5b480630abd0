"""The `eval` command: validation and test metrics of a model through the loop's own
evaluation (evaluation.evaluate, on the splits of evaluate/splits.py), with its
settings built the way the loop builds them, from a config. For a run's workdir that is
the run's own saved config (task, task options, split sizes, sampling and evaluation
settings, seed), with the iteration of the checkpoint it scores, so it prints the
numbers the run printed for those weights; flags override single keys. For any other
model it is the default config. A run that started from another run's kept weights (a
chain's phase) shows that run and iteration (`parent`, `parent_path`), as its rows do.
"""

from __future__ import annotations

import dataclasses

from selfimprove_jax import config as config_lib
from selfimprove_jax import settings as settings_lib
from selfimprove_jax.errors import UserError
from selfimprove_jax.evaluate import splits as splits_lib
from selfimprove_jax.evaluate.heldout import evaluate
from selfimprove_jax.policy import model_generate
from selfimprove_jax.sampling import make_sampler
from selfimprove_jax.tasks import get_task

# eval's flags -> the config keys they set (both the run's and the loop's meaning)
FLAG_KEYS = {"task": "task.name", "n": "task.heldout_size", "test_n": "task.test_size",
             "k": "evaluate.maj_k",
             "max_new_tokens": "evaluate.max_new_tokens",
             "temperature": "sampling.temperature", "seed": "seed",
             "strategies": "evaluate.strategies", "strategy_n": "refine.n",
             "refine_rounds": "refine.rounds", "system_prompt": "system_prompt",
             "chat_template_kwargs": "chat_template_kwargs"}


def eval_config(spec: str, flags: dict, task_options: dict):
  """(config, where its settings come from, is a run) of `eval --model spec`: a run's
  saved config when `spec` names a run's workdir (else the default config), with the
  given flags (None = not given) and task options applied, validated. Cheap: nothing
  is loaded yet."""
  from selfimprove_jax.weights import run_dir
  run = run_dir.parse_run_spec(spec)
  config = config_lib.base_config()
  source = "the default config"
  if run is not None:
    config = config_lib.merge_saved(config, run_dir.saved_config(*run))
    source = f"the config of run {run[0]}"
  given = {FLAG_KEYS[f]: v for f, v in flags.items() if v is not None}
  if "task.name" in given and given["task.name"] != config.task.name:
    config.task.options = {}   # another task: the run's options do not apply
  config = config_lib.apply_overrides(config, [f"{k}={v}" for k, v in given.items()])
  config = config_lib.with_task_options(config, task_options)
  config_lib.validate(config)
  return config, source, run is not None


def evaluate_model(spec: str, flags: dict, task_options: dict, progress: bool = True) -> dict:
  """`selfimprove-jax eval`: validation metrics of model `spec` through `evaluate`, and
  the test split's greedy pass@1 and mean reward (test_*), with the settings of
  `eval_config`. For a run's checkpoint of iteration K the seeds are the run's own for
  iteration K, so every metric repeats what the run printed."""
  from selfimprove_jax.weights import load
  config, source, is_run = eval_config(spec, flags, task_options)
  try:
    task = get_task(config.task.name, **config.task.options.to_dict())
  except UserError as e:
    raise UserError(f"--task {config.task.name}: {e}") from None
  model = load(spec, prompt_format=settings_lib.prompt_format(config))   # the run's
  if model.tokenizer is None:
    raise UserError(f"model {spec!r} has no tokenizer to build prompts with")
  iteration = int(model.source.rpartition("@")[2]) if is_run else 0
  splits = splits_lib.carve(task, config.task.heldout_size, config.task.test_size, 0,
                            config.task.difficulty)
  sampler = make_sampler(model, max_batch=config.sampling.max_batch)
  generate = model_generate(sampler, model.params, model.tokenizer, progress)
  st = settings_lib.evaluate(config, settings_lib.environment(config, task))
  seed = lambda split: config_lib.stage_seed(config, iteration, split)
  out = {"model": model.source or spec, **(_parent(spec) if is_run else {}),
         "task": config.task.name, "settings": source,
         "validation": len(splits.validation),
         **evaluate(generate, task, splits.validation, st, seed("evaluate"))}
  if splits.test:   # as the loop scores it: greedy, no strategies
    out["test"] = len(splits.test)
    out.update(splits_lib.prefixed("test", evaluate(
        generate, task, splits.test, dataclasses.replace(st, maj_k=1, strategies=()),
        seed("evaluate_test"))))
  return out


def _parent(spec: str) -> dict:
  """{"parent": DIR@K, "parent_path": its absolute path} of the run checkpoint `spec`
  when that run started from another run's kept weights, else {}."""
  from selfimprove_jax.weights import run_dir
  meta = run_dir.saved_meta(*run_dir.parse_run_spec(spec))
  parent = run_dir.Parent.from_row(meta.get("loop", {}).get("parent"))
  return {"parent": parent.spec, "parent_path": parent.path} if parent else {}
