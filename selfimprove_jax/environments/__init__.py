"""Multi-turn environments: the model acts, a tool or a world answers, for several turns.

  spec = make("python_tool", task, max_turns=4, max_tokens=512, options={})
  groups = policy.episodes(spec, problems, sampling_params, n, seed)   # Samples

`base.py` is the protocol (`Environment.reset/step`, `Spec`) and the one reader of
options (`Option`, `read_options`), `episodes.py` runs episodes through the
continuous-batching sampler, and each environment is one module with an OPTIONS table
and a `spec(task, options, max_turns, max_tokens) -> Spec` function, registered in
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


def options_markdown() -> str:
  """Every environment's options as the Markdown table the README shows, rendered from
  their OPTIONS tables so that the two cannot drift (a test checks the README)."""
  rows = ["| environment | option | default | allowed | what it sets |",
          "|---|---|---|---|---|"]
  for name, module in ENVIRONMENTS.items():
    for key, o in importlib.import_module(module).OPTIONS.items():
      rows.append(f"| `{name}` | `{key}` | `{o.default!r}` | {o.allowed()} | {o.help} |")
  return "\n".join(rows)


__all__ = ["ENVIRONMENTS", "Environment", "Spec", "Step", "make", "options_markdown"]
