"""`guess_number`: find a hidden whole number in [1, N], told "higher" or "lower".

The game is played by the `guess_number` environment (environments/guess_number.py):
each model turn is one guess, the environment answers higher / lower in a new user turn
and ends the episode when the guess is right. Alone (no environment) the task is a
single guess: reward 1 iff it is the number, chance 1/N.

A problem is one game. Its prompt names the game with five capital letters ("game
QXVBK", no digits for the model to mistake for a guess) and states the range and the
reply format; the hidden number is its `reference`, derived from the game's name and N
by a hash, so one prompt always hides one number: a problem's id (a hash of its prompt)
is stable, and the held-out partition of ids splits games, not numbers. A model that
memorised the training games' numbers learns nothing about a held-out game's.

Difficulty levels set N (binary search needs ceil(log2(N + 1)) guesses at worst):

  level      1    2    3    4     5     6     7
  N         10   20   50   100   200   500  1000
  optimum    4    5    6    7     8     9    10

Declared answer: the reply's guess is the number the project's numeric policy reads
(answers.py: a marked answer, else the final statement or the last number), so a reply
listing several numbers is read as its last one: hedging gains nothing.
"""

from __future__ import annotations

import math
import random
import string
from typing import Optional

from selfimprove_jax.errors import UserError
from selfimprove_jax.tasks import answers
from selfimprove_jax.tasks import problem as problem_lib
from selfimprove_jax.tasks.problem import Problem

LEVELS = {1: 10, 2: 20, 3: 50, 4: 100, 5: 200, 6: 500, 7: 1000}   # level -> N
# "Answer with just the number." as in arithmetic's prompt: of the wordings tried, the
# one after which SmolLM2-135M-Instruct most often replies with a bare number (others
# drew "I'm not sure what to suggest" even greedily)
ANSWER = "Answer with just the number."
NAME_LETTERS = 5   # 26^5 = 11.9M games per level: the held-out tenth never runs out


def format_prompt(game: str, high: int) -> str:
  """The task's prompt for game `game` over [1, high]."""
  return (f"Guess my secret number (game {game}). It is a whole number between 1 and "
          f"{high}; after each guess I will tell you if it is higher or lower. What is "
          f"your guess? {ANSWER}")


def hidden_number(game: str, high: int) -> int:
  """The number game `game` over [1, high] hides (a hash of both: stable everywhere)."""
  return 1 + problem_lib.derive_seed("guess_number", game, high) % high


def optimal_turns(high: int) -> int:
  """Guesses binary search needs at worst on [1, high]: ceil(log2(high + 1))."""
  return math.ceil(math.log2(high + 1))


def read_guess(completion: str) -> Optional[int]:
  """The reply's guess as an integer (module docstring), or None when it states no
  whole number (words only, a fraction, a number too long to read)."""
  value = answers.parse_number(answers.extract_numeric(completion))
  if value is None or value.denominator != 1:
    return None
  return int(value)


class GuessNumberTask(problem_lib.ProceduralSplits):
  """Guess-the-number games with N set by the difficulty level (module docstring)."""

  procedural = False   # `can_solve` cannot: a prompt does not show its number
  answer_format = ("one whole number, the guess: a marked answer, else the final statement "
                   "or the last number of the reply")

  def __init__(self, difficulty: int = 4,
               heldout_fraction: float = problem_lib.DEFAULT_HELDOUT_FRACTION):
    self.name = "guess_number"
    self.difficulty_range = (min(LEVELS), max(LEVELS))
    self.default_difficulty = self._level(difficulty)
    self.heldout_fraction = problem_lib.check_fraction(heldout_fraction, self.name)

  def _level(self, difficulty: Optional[int]) -> int:
    if difficulty is None:
      return self.default_difficulty
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or (
        difficulty not in LEVELS):
      raise UserError(f"task guess_number: difficulty must be an integer in "
                      f"{self.difficulty_range}, got {difficulty!r}")
    return difficulty

  def _generate(self, level: int, rng: random.Random) -> Problem:
    high = LEVELS[level]
    game = "".join(rng.choice(string.ascii_uppercase) for _ in range(NAME_LETTERS))
    return problem_lib.make_problem(format_prompt(game, high), hidden_number(game, high),
                                    level, {"game": game, "high": high})

  def extract_answer(self, completion: str,
                     problem: Optional[Problem] = None) -> Optional[str]:
    """The reply's guess as text, or None."""
    guess = read_guess(completion)
    return None if guess is None else str(guess)

  def score(self, problem: Problem, completion: str) -> float:
    """Single turn: 1.0 when the guess is the hidden number, else 0.0."""
    return float(read_guess(completion) == int(problem.reference))

  def can_solve(self, prompt: str) -> Optional[str]:
    """No prompt of this task can be solved from its text: the number is hidden."""
    return None
