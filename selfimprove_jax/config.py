"""Experiment configs: every key of a run and its default, loading and overrides.

`base_config()` is the one place where each key has its default; files in
`configs/` start from it, change what their experiment needs and return it locked.
`load_config(path, overrides)` runs such a file's `get_config()` and applies
command-line overrides `--config.a.b=value` (typed by the existing default).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os

import ml_collections

from selfimprove_jax.errors import UserError, check_names
from selfimprove_jax.model.lora import check_lora_config, default_lora_config
from selfimprove_jax.optimize.config import check_optim_config, default_optim_config


# The names in the stages' registries (select.FILTERS, refine.STRATEGIES,
# refine.SCORERS). Validation checks against these lists so that it imports no stage
# code; tests/test_architecture.py keeps them equal to the registries. Paradigm names
# and each paradigm's own constraints are the registry's (algorithms.algorithm, called
# by the loop before set-up).
FILTER_NAMES = ("correct", "pass_rate_band", "dedup", "max_length", "judge", "refined",
                "tool_used")
STRATEGY_NAMES = ("greedy", "best_of_n", "self_consistency", "self_refine",
                  "execution_feedback")
SCORER_NAMES = ("verifier", "judge", "logprob")


# size: the table of every config key and its default, one per line
def base_config() -> ml_collections.ConfigDict:
  """Every key of an experiment, with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Model spec: preset name, HF directory, .gguf file, 'smollm2-135m-instruct',
  # or a workdir (its last accepted checkpoint) / 'DIR@K'.
  c.model = "smollm2-135m-instruct"
  # Chains (chains.py): a run whose model is "parent" starts from the kept weights of its
  # parent phase, which the same command runs first in WORKDIR/parent (a parent may have
  # a parent of its own: WORKDIR/parent/parent).
  c.parent = ml_collections.ConfigDict()
  c.parent.config = ""                 # the parent phase's config file ('' = none)
  c.parent.overrides = ()              # its overrides, e.g. ("loop.iterations=4",)
  c.dtype = "float32"                 # compute dtype: 'float32' | 'bfloat16'
  # 'chat': prompts go through the tokenizer's chat template (when it has one);
  # 'raw': as plain text, for base (not instruction-tuned) models.
  c.prompt_format = "chat"
  c.prompt_template = "{prompt}"      # 'raw' only: the text sent, e.g. few-shot + "{prompt}"
  # 'chat' only: a system turn before each prompt ('' = none beyond what the template
  # itself adds). Like prompt_template and the prompts, it is inserted as text.
  c.system_prompt = ""
  # Variables for the chat template, "name=value,..." (e.g. "enable_thinking=false" for
  # Qwen3): a string, so --config.chat_template_kwargs=... and the CLI flag both work.
  c.chat_template_kwargs = ""
  # Recompute each block's activations in the backward pass of the train step: less
  # memory, and on a GPU also faster (SmolLM2-135M, H100: 229k vs 200k tokens/s,
  # benchmarks/RESULTS.md); on a CPU it only costs time.
  c.remat = False
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

  c.task = ml_collections.ConfigDict()
  c.task.name = "arithmetic"           # arithmetic | countdown | reasoning_gym:<n> | jsonl:<path>
                                       # | code:<family> | code_jsonl:<path>
  c.task.difficulty = 2                # starting difficulty level (tasks with a knob)
  c.task.heldout_size = 100            # the validation split: what every decision reads
  c.task.test_size = 100               # the test split: scored, read by no decision (0: none)
  c.task.fresh_size = 0                # new held-out-side problems each evaluation (tasks
                                       # that generate problems; 0: none)
  c.task.options = ml_collections.ConfigDict()  # keyword options of the task (e.g. operators)

  c.loop = ml_collections.ConfigDict()
  c.loop.iterations = 3                # rounds after the baseline evaluation (iteration 0)
  c.loop.algorithm = "sft"             # 'sft' (expert iteration) | 'dpo' | 'grpo' |
                                       # 'self_play' (proposer-solver) | 'spin' |
                                       # 'ttrl' (label-free, majority-vote reward)
  c.loop.prompts_per_iteration = 64
  c.loop.samples_per_prompt = 8        # G
  c.loop.restart_from_base = False     # ReST-EM: fine-tune the base weights each round
  c.loop.rl_steps = 4                  # grpo: acquire -> update steps per iteration
  c.loop.dpo_pairs = "verifier"        # dpo: 'verifier' (right vs wrong) | 'judge' (the
                                       # judge's best vs worst: self-rewarding DPO)

  # Acquisition extras (refine/, acquire/self_instruct.py)
  c.acquire = ml_collections.ConfigDict()
  c.acquire.refine_strategy = ""       # '' | self_consistency | best_of_n | self_refine
                                       # | execution_feedback:
                                       # its final answers are marked `refined` (training
                                       # targets; keep them with the 'refined' filter)
  c.acquire.min_vote_share = 0.5       # self_consistency targets and ttrl pseudo-labels
                                       # need this majority share
  # Label-free (LMSI, Huang et al. 2022; TTRL's reward, Zuo et al. 2025): no reference
  # answer is read while acquiring and selecting; a sample's reward is whether it agrees
  # with its prompt's self_consistency majority. The verifier checks the majority labels
  # after selection, for the metrics only (pseudo_label_precision).
  c.acquire.label_free = False
  # STaR's rationalization (Zelikman et al. 2022): a problem none of whose samples is
  # right is answered again with the reference answer as a hint; a right answer is
  # added as a sample of the original prompt (hint removed), marked `rationalized`.
  c.acquire.rationalize = False
  c.acquire.self_instruct_share = 0.0  # fraction of each iteration's prompts the model proposes

  # Multi-turn environments (environments/): with a name, every sample is an episode in
  # which the model acts and the environment answers (a sandboxed tool, test feedback on
  # a program, a game); the environment's reward replaces the verifier's. '' = one
  # prompt, one reply.
  c.environment = ml_collections.ConfigDict()
  c.environment.name = ""              # '' | python_tool | code_feedback | guess_number
  c.environment.max_turns = 4          # model turns per episode at most
  c.environment.max_tokens = 512       # an episode's tokens from its first observation on
  c.environment.options = ml_collections.ConfigDict()  # the environment's own options

  # Inference refinement strategies (refine/strategies.py): acquisition and evaluate.strategies
  c.refine = ml_collections.ConfigDict()
  c.refine.n = 8                       # best_of_n candidates / self_consistency votes
  c.refine.rounds = 2                  # self_refine / execution_feedback: rounds at most
  c.refine.scorer = "auto"             # best_of_n: auto (verifier, else judge, else
                                       # logprob) | verifier | judge | logprob
  c.refine.critique_tokens = 64

  # LLM-as-judge (select/judge.py)
  c.judge = ml_collections.ConfigDict()
  c.judge.model = ""                   # '' = the current model judges itself; else a spec
  c.judge.samples = 1                  # judgments per completion (averaged; 1 = greedy)
  c.judge.max_new_tokens = 64
  c.judge.use_as_reward = False        # the judge's score replaces the verifier's reward
  c.judge.score_records = False        # judge every acquired sample even when no filter,
                                       # reward or pair needs it (logs agreement)

  c.self_instruct = ml_collections.ConfigDict()
  c.self_instruct.proposals = 32       # candidate problems proposed per iteration
  c.self_instruct.examples = 3         # seed examples shown per proposal prompt
  c.self_instruct.ngram = 3            # word n-grams for the overlap checks
  c.self_instruct.max_overlap = 0.8    # Jaccard at or above this = duplicate / leak
  c.self_instruct.votes = 4            # non-procedural tasks: self-consistency samples
  c.self_instruct.min_vote_share = 0.6
  c.self_instruct.max_new_tokens = 64

  # Proposer-solver self-play (paradigms/self_play.py); the proposer's prompt, novelty
  # checks and token budget are self_instruct's (examples, ngram, max_overlap,
  # max_new_tokens); the solver samples loop.samples_per_prompt answers per proposal
  c.self_play = ml_collections.ConfigDict()
  c.self_play.invalid_reward = -0.5    # the proposer's reward for a rejected proposal
  c.self_play.max_level = 0            # proposals above this task level are rejected
                                       # ('too_hard'); 0 = any level

  # Curriculum from the ledger (evaluate/curriculum.py): tasks with a difficulty knob
  c.curriculum = ml_collections.ConfigDict()
  c.curriculum.enabled = False
  c.curriculum.min_pass_rate = 0.3     # training pass rate band; outside it the training
  c.curriculum.max_pass_rate = 0.7     # difficulty moves by `step` levels
  c.curriculum.step = 1

  c.sampling = ml_collections.ConfigDict()
  c.sampling.temperature = 1.0
  c.sampling.top_k = 0
  c.sampling.top_p = 1.0
  c.sampling.max_new_tokens = 48
  c.sampling.max_batch = 256           # rows per compiled sampler call
  c.sampling.stop_sequences = ()       # texts that end a completion (e.g. ("\n",) for a
                                       # base model answering one line of a few-shot prompt)

  c.select = ml_collections.ConfigDict()
  c.select.filters = "correct,dedup,max_length"   # in order; also pass_rate_band, judge,
                                       # refined, tool_used (episodes that called a tool)
  c.select.reward_threshold = 1.0
  c.select.min_pass_rate = 0.0
  c.select.max_pass_rate = 1.0
  c.select.dedup_ngram = 3
  c.select.dedup_threshold = 0.9
  c.select.max_completion_tokens = 256
  c.select.judge_threshold = 0.6       # 'judge' filter: keep judge scores >= this (0-1)
  # ReST-style growing data (sft, dpo): the selected samples of up to this many earlier
  # accepted iterations train again beside this iteration's; 0 = this iteration's only
  c.select.replay = 0

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 2
  c.train.batch_size = 16
  c.train.max_seq_len = 160            # prompt + completion, right-padded
  c.optim = default_optim_config()
  # LoRA (model/lora.py): rank > 0 trains low-rank adapters on the `targets`
  # matrices instead of every weight.
  c.lora = default_lora_config()

  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.maj_k = 4                 # samples per held-out prompt for maj@k / pass@k
  c.evaluate.max_regression = 0.02     # accept unless held-out pass@1 drops more than this
  c.evaluate.patience = 2              # stop after this many iterations without improvement
  c.evaluate.max_new_tokens = 48
  c.evaluate.strategies = ""           # e.g. 'best_of_n,self_consistency': held-out score
                                       # of each (config.refine) beside greedy
  c.evaluate.rules = ""                # the watchers act: 'SIGNAL>THRESHOLD:ACTION,...'
                                       # (evaluate/rules.py), e.g.
                                       # 'watch_proxy_divergence>=1:stop'

  c.log = ml_collections.ConfigDict()
  c.log.tensorboard = True
  c.log.plot = True
  c.log.progress = True
  return c


# Keys that do not change a run's results: a resumed run may change them freely.
# parent.*: what the parent phase is, its own run checks (its saved config); the child
# keeps the parent weights it started from whatever they say later (loop.py)
NON_RESULT_KEYS = ("loop.iterations", "log.tensorboard", "log.plot", "log.progress",
                   "sampling.max_batch", "parent.config", "parent.overrides")


def load_config(path: str, overrides=()) -> ml_collections.ConfigDict:
  """Loads `configs/<name>.py`'s get_config() and applies `a.b=value` overrides."""
  if not os.path.isfile(path):
    raise UserError(f"config file {path} does not exist (or is not a file)")
  spec = importlib.util.spec_from_file_location(
      "_sij_config_" + os.path.basename(path).removesuffix(".py"), path)
  if spec is None or spec.loader is None:
    raise UserError(f"config file {path} is not a Python file")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise UserError(f"config file {path} has no get_config()")
    config = module.get_config()
  except UserError:
    raise
  except Exception as e:   # the user's file: one line, not a traceback of it
    raise UserError(f"config file {path} failed to load: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"config file {path}: get_config() returned a "
                    f"{type(config).__name__}, not an ml_collections ConfigDict")
  config = apply_overrides(config, overrides)
  validate(config)
  return config


def _parse_value(text: str, current):
  if isinstance(current, bool):
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise ValueError("expected true or false")
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, (tuple, list)):
    return tuple(ast.literal_eval(text))
  return text


def apply_overrides(config, overrides) -> ml_collections.ConfigDict:
  """Applies 'a.b=value' strings; an unknown key or badly typed value is a UserError."""
  config = ml_collections.ConfigDict(config.to_dict())
  for item in overrides:
    key, sep, value = item.partition("=")
    key = key.removeprefix("--config.").removeprefix("config.")
    if not sep:
      raise UserError(f"override {item!r} is not of the form --config.key=value")
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise UserError(f"unknown config key {key!r}")
      node = node[p]
    if parts[-1] not in node:
      raise UserError(f"unknown config key {key!r}")
    try:
      node[parts[-1]] = _parse_value(value, node[parts[-1]])
    except (ValueError, SyntaxError) as e:
      raise UserError(f"bad value for {key}: {value!r} ({e})") from None
  config.lock()
  return config


def merge_saved(config, saved: dict) -> ml_collections.ConfigDict:
  """`config` with the values of a saved config dict (a run's): keys the saved one
  lacks keep their values here (the run predates them)."""
  def merged(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
      out[k] = merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) \
          and k != "options" else v
    return out
  return ml_collections.ConfigDict(merged(config.to_dict(), saved))


def with_task_options(config, options: dict) -> ml_collections.ConfigDict:
  """`config` with task.options set from `options` (name -> value)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in options.items():
    config.task.options[key] = value
  return config


# (low, high, low_open) bounds of numeric keys; None = unbounded on that side. A value
# outside is refused before anything runs: it would fail later in a traceback, or
# worse, run and "accept" an iteration that did nothing (e.g. epochs=0).
RANGES = {
    "seed": (0, None), "task.difficulty": (0, None), "task.heldout_size": (1, None),
    "task.test_size": (0, None), "task.fresh_size": (0, None),
    "loop.iterations": (0, None), "loop.prompts_per_iteration": (1, None),
    "loop.samples_per_prompt": (1, None), "loop.rl_steps": (1, None),
    "acquire.min_vote_share": (0.0, 1.0), "acquire.self_instruct_share": (0.0, 1.0),
    "refine.n": (1, None), "refine.rounds": (1, None), "refine.critique_tokens": (1, None),
    "judge.samples": (1, None), "judge.max_new_tokens": (1, None),
    "self_instruct.proposals": (1, None), "self_instruct.examples": (1, None),
    "self_instruct.ngram": (1, None), "self_instruct.max_overlap": (0.0, 1.0, True),
    "self_instruct.votes": (1, None), "self_instruct.min_vote_share": (0.0, 1.0),
    "self_instruct.max_new_tokens": (1, None),
    "self_play.invalid_reward": (-1.0, 0.0), "self_play.max_level": (0, None),
    "curriculum.min_pass_rate": (0.0, 1.0), "curriculum.max_pass_rate": (0.0, 1.0),
    "curriculum.step": (1, None),
    "sampling.temperature": (0.0, None), "sampling.top_k": (0, None),
    "sampling.top_p": (0.0, 1.0, True), "sampling.max_new_tokens": (1, None),
    "sampling.max_batch": (1, None),
    "select.reward_threshold": (0.0, 1.0), "select.min_pass_rate": (0.0, 1.0),
    "select.max_pass_rate": (0.0, 1.0), "select.dedup_ngram": (1, None),
    "select.dedup_threshold": (0.0, 1.0, True), "select.max_completion_tokens": (1, None),
    "select.judge_threshold": (0.0, 1.0), "select.replay": (0, None),
    "train.epochs": (1, None), "train.batch_size": (1, None), "train.max_seq_len": (2, None),
    "evaluate.maj_k": (1, None), "evaluate.max_regression": (0.0, 1.0),
    "evaluate.patience": (1, None), "evaluate.max_new_tokens": (1, None),
}


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _check_ranges(config) -> None:
  flat = _flat(config)
  for key, value in flat.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise UserError(f"{key}={value!r} is not a finite number")
  for key, (low, high, *open_low) in RANGES.items():
    value = flat[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise UserError(f"{key}={value!r} is not a number")
    too_low = value <= low if open_low and open_low[0] else value < low
    if too_low or (high is not None and value > high):
      bounds = (f"in {'(' if open_low and open_low[0] else '['}{low}, {high}]"
                if high is not None else f">= {low}")
      raise UserError(f"{key}={value!r} must be {bounds}")
  for key, size in config.mesh.items():
    if not isinstance(size, int) or (size != -1 and size < 1):
      raise UserError(f"mesh.{key}={size!r} must be -1 (the remaining devices) or >= 1")


def names(value) -> list[str]:
  """'a,b' or a sequence of names -> the list of non-empty names."""
  return [s.strip() for s in (value.split(",") if isinstance(value, str) else value)
          if s.strip()]


def _known(key: str, value, known: tuple, what: str) -> None:
  try:
    check_names(names(value), known, what)
  except UserError as e:
    raise UserError(f"{key}={value!r}: {e}") from None


# `model` of a run that starts from its parent phase's kept weights (chains.py)
PARENT_MODEL = "parent"


# environments/__init__.py registers exactly these (a test checks)
ENVIRONMENT_NAMES = ("python_tool", "code_feedback", "guess_number")
# the algorithms whose batches read an episode's action mask (the others' samples are
# their own: proposals, targets, pseudo-labels)
ENVIRONMENT_ALGORITHMS = ("sft", "grpo", "dpo")   # grpo with optim.loss rloo, dr_grpo too


def _check_environment(config) -> None:
  e = config.environment
  if not isinstance(e.name, str):
    raise UserError(f"environment.name={e.name!r} must be a string")
  if not e.name:
    return
  if e.name not in ENVIRONMENT_NAMES:
    raise UserError(f"environment.name={e.name!r} is not one of "
                    f"{', '.join(ENVIRONMENT_NAMES)}")
  for key, low in (("max_turns", 1), ("max_tokens", 2)):
    value = e[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise UserError(f"environment.{key}={value!r} must be an integer >= {low}")
  if config.loop.algorithm not in ENVIRONMENT_ALGORITHMS:
    raise UserError(f"environment.name={e.name!r} trains with loop.algorithm one of "
                    f"{', '.join(ENVIRONMENT_ALGORITHMS)}, not {config.loop.algorithm!r}")
  a = config.acquire
  for key, on in (("acquire.refine_strategy", a.refine_strategy),
                  ("acquire.label_free", a.label_free), ("acquire.rationalize", a.rationalize),
                  ("acquire.self_instruct_share", a.self_instruct_share > 0),
                  ("judge.use_as_reward", config.judge.use_as_reward),
                  ("evaluate.strategies", bool(names(config.evaluate.strategies)))):
    if on:
      raise UserError(f"{key} does not apply to environment episodes "
                      f"(environment.name={e.name!r}): the environment scores them")
  if e.max_tokens > config.train.max_seq_len:
    raise UserError(f"environment.max_tokens={e.max_tokens} is above train.max_seq_len="
                    f"{config.train.max_seq_len}: longer episodes would be trained on cut "
                    f"short; raise train.max_seq_len or lower environment.max_tokens")


def _check_acquire(config) -> None:
  _check_environment(config)
  a = config.acquire
  if a.label_free and a.refine_strategy != "self_consistency":
    raise UserError(f"acquire.label_free needs acquire.refine_strategy=self_consistency "
                    f"(its majority answer is the label), not {a.refine_strategy!r}")
  if a.label_free and a.rationalize:
    raise UserError("acquire.rationalize shows the reference answer as a hint; "
                    "acquire.label_free reads no reference")
  if a.label_free and config.judge.use_as_reward:
    raise UserError("judge.use_as_reward: with acquire.label_free the reward is the "
                    "agreement with the majority answer")


def _check_parent(config) -> None:
  p = config.parent
  if not isinstance(p.config, str):
    raise UserError(f"parent.config={p.config!r} must be a config file's path")
  if isinstance(p.overrides, str) or not all(isinstance(o, str) and "=" in o
                                             for o in p.overrides):
    raise UserError(f"parent.overrides={p.overrides!r} must be a tuple of 'key=value' "
                    f"strings")
  if p.config and config.model != PARENT_MODEL:
    raise UserError(f"parent.config={p.config!r}: a run with a parent phase starts from its "
                    f"kept weights; set model={PARENT_MODEL!r}, not {config.model!r}")
  if not p.config and config.model == PARENT_MODEL:
    raise UserError(f"model={PARENT_MODEL!r} needs parent.config, the parent phase's config "
                    f"file")
  if p.overrides and not p.config:
    raise UserError("parent.overrides apply to parent.config, which is not set")


def validate(config) -> None:
  """One-line UserErrors for values the loop would otherwise trip over later."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"the config is a {type(config).__name__}, not an ml_collections "
                    f"ConfigDict (get_config() must return one)")
  _check_ranges(config)
  check_optim_config(config.optim)
  check_lora_config(config.lora)
  _known("select.filters", config.select.filters, FILTER_NAMES, "select filter")
  _check_acquire(config)
  if config.optim.continue_state and config.loop.restart_from_base:
    raise UserError("optim.continue_state carries the optimizer across iterations, and "
                    "loop.restart_from_base starts each one from the base weights: pick one")
  if config.prompt_format not in ("chat", "raw"):
    raise UserError(f"prompt_format={config.prompt_format!r} is not one of chat, raw")
  if config.prompt_template.count("{prompt}") != 1:
    raise UserError(f"prompt_template={config.prompt_template!r} must contain {{prompt}} once")
  if config.prompt_format == "chat" and config.prompt_template != "{prompt}":
    raise UserError("prompt_template is used with prompt_format='raw' only")
  if not isinstance(config.system_prompt, str):
    raise UserError(f"system_prompt={config.system_prompt!r} must be a string")
  if config.system_prompt and config.prompt_format == "raw":
    raise UserError("system_prompt is used with prompt_format='chat' only (a raw prompt has "
                    "no turns: put the text in prompt_template)")
  template_kwargs(config.chat_template_kwargs)
  if config.dtype not in ("float32", "bfloat16"):
    raise UserError(f"dtype={config.dtype!r} is not one of float32, bfloat16")
  if not isinstance(config.model, str) or not config.model:
    raise UserError(f"model={config.model!r} must name a model (a preset, a path or "
                    f"smollm2-135m-instruct)")
  _check_parent(config)
  _known("evaluate.strategies", config.evaluate.strategies, STRATEGY_NAMES,
         "refinement strategy")
  _known("acquire.refine_strategy", config.acquire.refine_strategy, STRATEGY_NAMES,
         "refinement strategy")
  if config.refine.scorer not in ("auto", *SCORER_NAMES):
    raise UserError(f"refine.scorer={config.refine.scorer!r} is not one of auto, "
                    f"{', '.join(SCORER_NAMES)}")
  if config.loop.dpo_pairs not in ("verifier", "judge"):
    raise UserError(f"loop.dpo_pairs={config.loop.dpo_pairs!r} is not one of verifier, judge")
  if config.curriculum.min_pass_rate > config.curriculum.max_pass_rate:
    raise UserError("curriculum band: need 0 <= min_pass_rate <= max_pass_rate <= 1")
  if config.select.min_pass_rate > config.select.max_pass_rate:
    raise UserError(f"select.min_pass_rate={config.select.min_pass_rate} is above "
                    f"select.max_pass_rate={config.select.max_pass_rate}")


_RENDER_ARGS = frozenset((
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length",
    "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"))


def template_kwargs(text) -> dict:
  """'enable_thinking=false,n=2' -> {'enable_thinking': False, 'n': 2}: true/false are
  booleans, numbers numbers, anything else a string (no commas inside values)."""
  if not isinstance(text, str):
    raise UserError(f"chat_template_kwargs={text!r} must be a string 'name=value,...'")
  out: dict = {}
  for item in (i.strip() for i in text.split(",")):
    if not item:
      continue
    name, sep, value = (x.strip() for x in item.partition("="))
    if not sep or not name.isidentifier():
      raise UserError(f"chat_template_kwargs={text!r}: {item!r} is not name=value "
                      f"(name a Python identifier)")
    if name in _RENDER_ARGS:   # apply_chat_template's own arguments, not template variables
      raise UserError(f"chat_template_kwargs={text!r}: {name!r} is an argument of "
                      f"apply_chat_template, not a template variable")
    if value.lower() in ("true", "false"):
      out[name] = value.lower() == "true"
    else:
      try:
        number = ast.literal_eval(value)
        out[name] = number if isinstance(number, (int, float)) else value
      except (ValueError, SyntaxError):
        out[name] = value
  return out


def stage_seed(config, iteration: int, stage: str, step: int = 0) -> int:
  """The seed of one stage of one iteration: every random choice of the loop is a
  function of (config.seed, iteration, stage, step), so a re-run stage repeats itself."""
  from selfimprove_jax.tasks.problem import derive_seed
  return derive_seed(config.seed, iteration, stage, step) % (2**31 - 1)


def to_json(config) -> str:
  return json.dumps(config.to_dict(), sort_keys=True, default=str)


def result_differences(saved: dict, current: dict) -> list[str]:
  """Keys (dotted) whose values differ between two config dicts and change results."""
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = v
    return out
  # both sides as JSON would hold them (a tuple default and its saved list agree)
  a = flat(json.loads(json.dumps(saved, default=str)))
  b = flat(json.loads(json.dumps(current, default=str)))
  # A key added to base_config() after a workdir was written reads as its default
  # there, so new features (off by default) do not lock out existing runs.
  new = flat(json.loads(json.dumps(base_config().to_dict(), default=str)))
  keys = sorted(set(a) | set(b))
  return [k for k in keys if k not in NON_RESULT_KEYS
          and a.get(k, new.get(k)) != b.get(k, new.get(k))]
