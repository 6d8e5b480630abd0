"""What a caller asks the sampler for (`SamplingParams`) and what it gets back
(`Completion`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol, Sequence, Union

import numpy as np

from selfimprove_jax.errors import UserError

# A stop sequence is either text (encoded with the sampler's tokenizer, without
# special tokens) or the token ids themselves.
StopSequence = Union[str, tuple[int, ...]]

FINISH_REASONS = ("eos", "stop", "length")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Decoding controls. `greedy` (or temperature 0) takes the argmax; otherwise the
  logits are divided by `temperature`, cut to the `top_k` largest (0 = all) and then
  to the smallest set whose probability reaches `top_p` (1.0 = all), in that order
  (the order transformers applies them). Generation stops at EOS, at any of
  `stop_sequences` (token-level match of the generated ids), or after
  `max_new_tokens`."""
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  max_new_tokens: int = 128
  stop_sequences: tuple[StopSequence, ...] = ()

  def __post_init__(self):
    stops = tuple(s if isinstance(s, str) else tuple(int(t) for t in s)
                  for s in (self.stop_sequences or ()))
    object.__setattr__(self, "stop_sequences", stops)
    if self.temperature < 0:
      raise UserError(f"temperature must be >= 0, got {self.temperature}")
    if not 0.0 < self.top_p <= 1.0:
      raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if self.max_new_tokens < 1:
      raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if any(len(s) == 0 for s in stops):
      raise UserError("stop_sequences must not contain an empty sequence")

  @property
  def is_greedy(self) -> bool:
    return self.greedy or self.temperature == 0.0

  @classmethod
  def from_config(cls, cfg: Any) -> "SamplingParams":
    """From a mapping or `ml_collections.ConfigDict` holding some of the fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
    unknown = set(items) - names
    if unknown:
      raise UserError(f"unknown sampling fields {sorted(unknown)}; known: {sorted(names)}")
    if "stop_sequences" in items:
      items["stop_sequences"] = tuple(items["stop_sequences"] or ())
    return cls(**items)


@dataclasses.dataclass
class Completion:
  """One sampled continuation of prompt `prompt_index` (its `sample_index`-th).

  `tokens` are the generated ids only, up to and including the EOS token or the
  matched stop sequence (whose length is `num_stop_tokens`; 0 when finished by
  length). `logprobs` are the chosen tokens' log-probs under the raw model
  distribution (what RL needs); `sample_logprobs` under the distribution actually
  sampled from (temperature, top-k, top-p applied; 0 for greedy)."""
  prompt_index: int
  sample_index: int
  tokens: np.ndarray           # int32 [num_tokens]
  logprobs: np.ndarray         # float32 [num_tokens]
  sample_logprobs: np.ndarray  # float32 [num_tokens]
  finish_reason: str           # one of FINISH_REASONS
  num_stop_tokens: int = 0
  text: Optional[str] = None   # set by the text-level helpers

  @property
  def num_tokens(self) -> int:
    return int(self.tokens.shape[0])

  @property
  def content_tokens(self) -> np.ndarray:
    """The tokens without the trailing EOS / stop sequence."""
    return self.tokens[:self.num_tokens - self.num_stop_tokens]

  def to_json(self) -> dict:
    """The record the CLI prints with --json."""
    return {"prompt_index": self.prompt_index, "sample_index": self.sample_index,
            "text": self.text, "num_tokens": self.num_tokens,
            "sum_logprob": float(np.sum(self.logprobs, dtype=np.float64)),
            "finish_reason": self.finish_reason}


@dataclasses.dataclass(frozen=True)
class Request:
  """One continuation `Sampler.serve` is asked for: `tokens` (a context given as ids,
  never re-tokenized) continued by at most `max_new` tokens. (stream, index) names it
  and its PRNG key: an episode and its turn, unique within one `serve` call."""
  stream: int
  index: int
  tokens: Sequence[int]
  max_new: int


class Feed(Protocol):
  """Where `Sampler.serve` gets its work and returns its results: requests appear
  while earlier ones finish (an episode's next turn after its environment answered).

  take(k, flush): up to k waiting requests. With flush=False it must not wait for work
  handed over by the latest `done` (that work runs while the sampler decodes); with
  flush=True (nothing is decoding) it waits for all of it, and returns [] only when no
  request will ever come. Which requests a call returns must depend on nothing but
  the order of calls (not on timing), so a run is reproducible.
  done(results): the requests that finished in the latest decode chunk, as
  (request, completion) pairs in slot order."""

  def take(self, k: int, flush: bool) -> list[Request]:
    ...

  def done(self, results: list) -> None:
    ...
