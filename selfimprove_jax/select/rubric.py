"""The judge's rubric and its parser: a (question, response) pair in, a score in [0, 1]
(or None) out, through any GenerateFn.

The rubric is the additive 5-point one of Yuan et al. 2024 ("Self-Rewarding Language
Models"), shortened for small models. A reply the parser cannot read is *unparsed*
(score None); nothing here raises on model output. The judge stage (judge.py) and
best_of_n's judge scorer (refine.py) both score through `judge`.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

from selfimprove_jax.sampling import SamplingParams

MAX_POINTS = 5
RUBRIC = (
    "Review the question and the response below and score the response from 0 to 5 "
    "with this additive rubric:\n"
    "- add 1 point if the response is relevant to the question;\n"
    "- add 1 point if it addresses most of the question;\n"
    "- add 1 point if it answers the basic question in a useful way;\n"
    "- add 1 point if it answers directly and clearly;\n"
    "- add 1 point if it is correct and could not be improved.\n\n"
    "Question: {question}\n\nResponse: {response}\n\n"
    "Justify your score in one sentence, then end with the line \"Score: <points>\".")

# "Score: 4", "score = 3.5", "**Score:** 4/5", "Score: 4 points"; the last one counts.
_SCORE = re.compile(r"score\W{0,4}?[:=]\W{0,4}?(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+))?",
                    re.IGNORECASE)
_BARE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?\s*\.?\s*")


def judge_prompt(question: str, response: str) -> str:
  """The rubric prompt for one (question, response) pair."""
  return RUBRIC.format(question=question.strip(), response=str(response).strip())


def parse_score(text, max_points: int = MAX_POINTS) -> Optional[float]:
  """The judge's score scaled to [0, 1], or None when the reply states none (or one
  outside the scale). Never raises."""
  if not isinstance(text, str):
    return None
  found = _SCORE.findall(text)
  if found:
    value, denom = found[-1]
  else:
    m = _BARE.fullmatch(text)   # a reply that is only a number
    if m is None:
      return None
    value, denom = m.group(1), m.group(2) or ""
  try:
    scale = float(denom) if denom else float(max_points)
    x = float(value) / scale
  except (ValueError, ZeroDivisionError):
    return None
  return x if 0.0 <= x <= 1.0 else None


def judge(generate, questions: Sequence[str], responses: Sequence[str], *, samples: int = 1,
          max_new_tokens: int = 64, seed: int = 0):
  """Scores each response with `generate` (a refine.GenerateFn): one batched call of
  `samples` judgments per pair (greedy when 1), parsed scores averaged.
  Returns (scores: list[float | None], replies: list[list[str]])."""
  sp = SamplingParams(greedy=samples == 1, temperature=1.0, max_new_tokens=max_new_tokens)
  prompts = [judge_prompt(q, r) for q, r in zip(questions, responses)]
  out = generate(prompts, sp, samples, seed)
  scores, replies = [], []
  for group in out:
    texts = [s.completion for s in group]
    parsed = [x for x in (parse_score(t) for t in texts) if x is not None]
    scores.append(float(np.mean(parsed)) if parsed else None)
    replies.append(texts)
  return scores, replies
