"""The environment protocol: what a multi-turn episode talks to.

An episode starts from a task problem: `reset(problem)` gives the first observation
(the text of the first user turn: the problem, and the tools or rules the environment
offers). Each model turn is handed to `step(action, finish)`, which answers with a
`Step`: the observation the model sees next, this turn's reward, and whether the
episode is over. The episode's reward is its last step's.

An `Environment` is one episode's world (a fresh one per episode, so it may keep state:
a hidden number, the program last submitted). A `Spec` says how to make them and how
their episodes are framed:
- `stop_sequences`: what ends a model turn besides the end-of-turn token (a tool
  call's closing tag); a turn ended by end-of-turn is the model's answer.
- `observation`: 'user' puts the observation in a new user turn of the chat template
  after the model's reply; 'inline' appends it straight after the model's tokens (a
  tool's output inside the model's own turn, Toolformer-style).
- `max_turns` and `max_tokens` bound an episode: model turns, and all of its tokens
  from the first observation on.

Model output is hostile input: a step that runs the action (a tool call, a program)
runs it in the sandbox, and answers a limit hit with the sandbox's status and detail
instead of raising.

Options (`config.environment.options`): each environment declares a table, option name
-> `Option` (type, default, allowed range or choices, a line of help), and reads the
user's options with `read_options`. One reader, so every environment rejects an unknown
key, a wrong type and a value out of range in the same words, and the README's list of
options is rendered from the same tables (`environments.options_markdown`; a test
checks).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, Mapping, Optional

from selfimprove_jax.errors import UserError

FINISHES = ("eos", "stop", "length")   # how a model turn ended (sampling.FINISH_REASONS)
OBSERVATIONS = ("user", "inline")
# a step's status: 'ok', 'invalid' (the action was not understood: no tool call, no
# program, no guess), or how a sandboxed tool run ended ('error', 'timeout', 'memory',
# 'output_limit', 'killed', 'refused')


@dataclasses.dataclass(frozen=True)
class Step:
  """The environment's answer to one model turn."""
  observation: str = ""      # what the model sees next (unused when done)
  reward: float = 0.0        # this turn's reward, in [0, 1]
  done: bool = False
  status: str = "ok"         # module docstring
  detail: str = ""           # what went wrong, in words
  tool_call: bool = False    # the turn called a tool (process measures)


class Environment(abc.ABC):
  """One episode's world."""

  @abc.abstractmethod
  def reset(self, problem) -> str:
    """Starts an episode on a task problem; returns the first observation's text."""

  @abc.abstractmethod
  def step(self, action: str, finish: str) -> Step:
    """The model's turn `action` (its text, without the end-of-turn token or stop
    sequence), which ended by `finish` (one of FINISHES: 'stop' is a stop sequence of
    the spec, 'length' a turn cut off by its token budget)."""


@dataclasses.dataclass(frozen=True)
class Spec:
  """How to make an environment's episodes (module docstring)."""
  name: str
  make: Callable[[], Environment]
  max_turns: int = 4
  max_tokens: int = 512
  stop_sequences: tuple = ()
  observation: str = "user"
  # the fewest turns that can solve a problem (process measure: turns over the
  # optimum); None where the environment has no such number
  optimal_turns: Callable = lambda problem: None

  def __post_init__(self):
    if self.observation not in OBSERVATIONS:
      raise ValueError(f"environment {self.name!r}: observation must be one of "
                       f"{', '.join(OBSERVATIONS)}, got {self.observation!r}")
    if self.max_turns < 1 or self.max_tokens < 2:
      raise ValueError(f"environment {self.name!r}: max_turns must be >= 1 and "
                       f"max_tokens >= 2")


@dataclasses.dataclass(frozen=True)
class Option:
  """One environment option (module docstring): `kind` is bool, int, float or str; a
  number may be bounded by `low` and `high` (inclusive), a string by `choices`."""
  kind: type
  default: object
  help: str
  low: Optional[float] = None
  high: Optional[float] = None
  choices: tuple = ()

  def __post_init__(self):
    if self.read(self.default) != self.default:
      raise ValueError(f"an option's default {self.default!r} is not {self.allowed()}")

  def allowed(self) -> str:
    """What the option accepts, in words: 'an integer in [16, 4096]', 'True or False'."""
    if self.kind is bool:
      return "True or False"
    if self.kind is str:
      return f"one of {', '.join(self.choices)}" if self.choices else "a string"
    noun = "an integer" if self.kind is int else "a number"
    if self.low is not None and self.high is not None:
      return f"{noun} in [{self.low}, {self.high}]"
    if self.low is not None:
      return f"{noun} >= {self.low}"
    return noun if self.high is None else f"{noun} <= {self.high}"

  def read(self, value):
    """`value` as this option's type (an integer given for a number becomes a float), or
    None when it is not allowed. A bool is no number: True is not 1."""
    if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, self.kind) or (self.kind is not bool and isinstance(value, bool)):
      return None
    if self.choices and value not in self.choices:
      return None
    # written as `not low <= value` so that NaN, which compares False, is refused
    if (self.low is not None and not self.low <= value
        or self.high is not None and not value <= self.high):
      return None
    return value


def read_options(table: Mapping[str, Option], options: Mapping) -> dict:
  """Every option of `table`: the user's value where `options` gives one, else its
  default. An unknown key, a wrong type or a value out of range is a one-line UserError
  naming `environment.options.KEY`, the value and what is allowed."""
  unknown = sorted(set(options) - set(table))
  if unknown:
    key = unknown[0]
    raise UserError(f"environment.options.{key}={options[key]!r} is not an option; the "
                    f"options are {', '.join(table)}")
  out = {}
  for key, option in table.items():
    value = option.read(options.get(key, option.default))
    if value is None:
      raise UserError(f"environment.options.{key}={options[key]!r} must be "
                      f"{option.allowed()}")
    out[key] = value
  return out
