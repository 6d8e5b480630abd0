"""Evaluating a model outside the loop: `selfimprove-jax eval`."""

from __future__ import annotations

from selfimprove_jax import stages
from selfimprove_jax.errors import UserError
from selfimprove_jax.sampling import SamplingParams, make_sampler
from selfimprove_jax.tasks import get_task


def evaluate_model(spec: str, task_name: str, *, n: int = 100, k: int = 4,
                   max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0,
                   progress: bool = True, strategies: str = "", strategy_n: int = 8,
                   refine_rounds: int = 2) -> dict:
  """Held-out pass@1 (greedy), maj@k and pass@k of model `spec` on `task_name`, and
  the held-out score of each refinement strategy named in `strategies` (refine.py)."""
  from selfimprove_jax import refine
  from selfimprove_jax.weights import load
  refine.parse_strategies(strategies)   # a bad name or task fails before the slow load
  try:
    task = get_task(task_name)
  except UserError as e:
    raise UserError(f"--task {task_name}: {e}") from None
  model = load(spec)
  if model.tokenizer is None:
    raise UserError(f"model {spec!r} has no tokenizer to build prompts with")
  problems = task.heldout(n)
  sampler = make_sampler(model)
  sample = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
  metrics = stages.evaluate_heldout(sampler, model.params, model.tokenizer, task, problems,
                                    k=k, sample=sample, seed=seed, progress=progress)
  if strategies:
    ctx = refine.Context(refine.model_generate(sampler, model.params, model.tokenizer,
                                               progress), task, problems)
    ctx.judge = ctx.generate
    cfg = refine.StrategyConfig(n=strategy_n, rounds=refine_rounds, sample=sample)
    metrics.update(refine.heldout_metrics(ctx, strategies, cfg, seed + 2))
  return {"model": spec, "task": task_name, "heldout": len(problems), **metrics}
