"""Multi-turn environments: the model acts, a tool or a world answers, for several turns.

  spec = make("python_tool", task, max_turns=4, max_tokens=512, options={})
  groups = policy.episodes(spec, problems, sampling_params, n, seed)   # Samples

`base.py` is the protocol (`Environment.reset/step`, `Spec`), `episodes.py` runs
episodes through the continuous-batching sampler, and each environment is one module
with a `spec(task, options, max_turns, max_tokens) -> Spec` function, registered in
ENVIRONMENTS below:
- python_tool: arithmetic with a Python tool run in the sandbox (self-taught tool use).
- code_feedback: code tasks; the model submits a program and sees the failing test,
  for several turns (RLEF within an episode).
- guess_number: a game with hidden state, answered higher / lower.
"""

from __future__ import annotations

import importlib

from selfimprove_jax.environments.base import Environment, Spec, Step
from selfimprove_jax.errors import UserError

# name -> the module whose `spec` builds it (imported on use)
ENVIRONMENTS = {
    "python_tool": "selfimprove_jax.environments.python_tool",
    "code_feedback": "selfimprove_jax.environments.code_feedback",
    "guess_number": "selfimprove_jax.environments.guess_number",
}


def make(name: str, task, *, max_turns: int, max_tokens: int, options: dict) -> Spec:
  """The environment `name` for `task`'s problems; a bad option or a task it cannot
  play is a one-line UserError naming it."""
  if name not in ENVIRONMENTS:
    raise UserError(f"environment.name={name!r} is not one of {', '.join(ENVIRONMENTS)}")
  module = importlib.import_module(ENVIRONMENTS[name])
  try:
    return module.spec(task, dict(options), max_turns=max_turns, max_tokens=max_tokens)
  except UserError as e:
    raise UserError(f"environment.name={name!r}: {e}") from None


__all__ = ["ENVIRONMENTS", "Environment", "Spec", "Step", "make"]
