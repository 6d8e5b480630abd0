"""`guess_number`: a game with hidden state. The model guesses, the world says higher or lower.

Plays the `guess_number` task's games (tasks/guess_number.py): the first observation is
the problem's prompt; every model turn that ends by end-of-turn is one guess, read by the
task's extraction (`read_guess`: the project's numeric answer policy); the answer comes
in a new user turn:
- right: the episode ends, reward 1;
- a whole number in [1, N] but wrong: "My number is higher than 50. What is your next guess? Answer with
  just the number." (or
  lower), reward 0 (see `reward` below). A guess that repeats an earlier one, or that
  the earlier replies already ruled out, is answered the same way, and its step's
  `detail` says so (what the smoke checks count: does the model use the replies?);
- no whole number, one outside [1, N] (negative, huge), or a turn cut off by its token
  budget that does not open with a number (a cut-off reply states only the number it
  opened with: its last number may be unfinished): an invalid action (status
  'invalid', reward 0), told the rules again.
An episode not solved within `environment.max_turns` ends with reward 0 ('max_turns').
Nothing here runs model output: the reply is only read as text, so no sandbox.

Scores: outcome is pass@1 (solved within T turns, reward >= 1). Process is
`optimal_turns(problem)` = ceil(log2(N + 1)), the guesses binary search needs at worst:
held-out evaluation reports the solved episodes' turns over it (turns_over_optimal; a
lucky early guess goes below 1, a model that reads the replies but searches linearly
far above), next to invalid actions and the share that ran out of turns.

Options (`environment.options`):
- reward: 'outcome' (default) gives 1 for a solved game and 0 otherwise, the reward
  pass@1 counts and expert iteration filters on. 'progress' also gives an unsolved
  episode partial credit, 0.5 x the share of the bits it needed that the replies
  to its consistent guesses have given it (log2 N / size of the range still possible),
  so a GRPO group in which no episode solves still ranks the ones that searched well; it
  stays below 1, so pass@1 and SFT's `correct` filter read only solved games. An invalid
  last turn scores 0 either way.
- range_hint: False (default); True adds the range still possible to each reply ("My
  number is higher than 50: it is between 51 and 100."), a scaffold that reduces the
  game to picking a number inside the stated range.
"""

from __future__ import annotations

import math
import re

from selfimprove_jax.environments.base import Environment, Option, Spec, Step, read_options
from selfimprove_jax.errors import UserError
from selfimprove_jax.tasks import guess_number as game

OPTIONS = {
    "reward": Option(str, "outcome", "'outcome': 1 for a solved game, else 0; 'progress' "
                     "also gives an unsolved game credit for the range it ruled out",
                     choices=("outcome", "progress")),
    "range_hint": Option(bool, False, "each reply also states the range still possible"),
}
# a reply cut off by its token budget that opens with a whole number ("7 is a whole
# number between 1 and"), as SmolLM2-135M-Instruct's cut-off turns often do (a probe
# of 32 episodes at N = 20): a guess stated first is stated
_OPENING = re.compile(r"\s*(\d{1,9})(?![\d,/]|\.\d)")


class GuessNumber(Environment):
  """One game: the hidden number, the range the replies leave, the guesses so far."""

  def __init__(self, reward: str = "outcome", range_hint: bool = False):
    self.reward, self.range_hint = reward, range_hint

  def reset(self, problem) -> str:
    self.number, self.high = int(problem.reference), int(problem.metadata["high"])
    self.low_left, self.high_left = 1, self.high   # what the replies so far leave
    self.guesses: list[int] = []
    return problem.prompt

  def step(self, action: str, finish: str) -> Step:
    rules = f"Guess a whole number between 1 and {self.high}. {game.ANSWER}"
    if finish == "length":   # only a number it opened with: the rest is unfinished
      opening = _OPENING.match(action)
      if opening is None:
        return Step(observation=f"Your reply was too long. {rules}", status="invalid",
                    detail="reply cut off at its token budget")
      action = opening.group(1)
    guess = game.read_guess(action)
    if guess is None:
      return Step(observation=f"I found no guess in your reply. {rules}",
                  status="invalid", detail="no whole number")
    if not 1 <= guess <= self.high:
      return Step(observation=f"Your guess is not between 1 and {self.high}. {rules}",
                  status="invalid", detail="out of range")
    if guess == self.number:
      return Step(reward=1.0, done=True, detail=f"solved in {len(self.guesses) + 1}")
    detail = ("repeated" if guess in self.guesses else
              "ruled out" if not self.low_left <= guess <= self.high_left else "")
    self.guesses.append(guess)
    if guess < self.number:
      word, self.low_left = "higher", max(self.low_left, guess + 1)
    else:
      word, self.high_left = "lower", min(self.high_left, guess - 1)
    hint = (f": it is between {self.low_left} and {self.high_left}"
            if self.range_hint else "")
    return Step(observation=f"My number is {word} than {guess}{hint}. What is your next "
                f"guess? {game.ANSWER}",
                reward=self._partial(), detail=detail)

  def _partial(self) -> float:
    """An unsolved step's reward (module docstring, option `reward`)."""
    if self.reward == "outcome" or self.high < 2:
      return 0.0
    left = self.high_left - self.low_left + 1
    return 0.5 * math.log2(self.high / left) / math.log2(self.high)


def spec(task, options: dict, max_turns: int, max_tokens: int) -> Spec:
  """The game for the `guess_number` task's problems (module docstring); a bad option
  or another task is a one-line UserError."""
  if not isinstance(task, game.GuessNumberTask):
    raise UserError(f"plays only task guess_number, not {getattr(task, 'name', task)!r}")
  opts = read_options(OPTIONS, options)
  return Spec(name="guess_number",
              make=lambda: GuessNumber(**opts),
              max_turns=max_turns, max_tokens=max_tokens, observation="user",
              optimal_turns=lambda p: game.optimal_turns(int(p.metadata["high"])))
