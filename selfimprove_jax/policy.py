"""The model as the stages use it: prompt texts in, `Sample`s out.

`GenerateFn` (prompts, sampling params, n, seed -> n samples per prompt) is the one
interface through which acquisition, evaluation, the judge, refinement strategies and
self-instruct call a model, so each can be tested with a scripted generator;
`model_generate` is the real one: encode (chat template) -> sample -> decode, written
once here; its `episodes` plays multi-turn episodes in an environment.
"""

from __future__ import annotations

from typing import Callable, Sequence

from selfimprove_jax.environments import episodes as episodes_lib
from selfimprove_jax.records import Sample
from selfimprove_jax.sampling import SamplingParams, encode_prompts, encode_text

GenerateFn = Callable[[Sequence[str], SamplingParams, int, int], list]   # -> list[list[Sample]]


class ModelPolicy:
  """The real GenerateFn: chat-templated prompts through `sampler` with `params`;
  samples come back grouped by prompt, in sample order. `target` writes a given answer
  as the model's reply would be tokenized (SPIN's chosen side), so nothing else needs
  the tokenizer."""

  def __init__(self, sampler, params, tokenizer, progress: bool = False):
    self.sampler, self.params, self.tokenizer, self.progress = (sampler, params, tokenizer,
                                                                 progress)

  def __call__(self, prompts, sp, n, seed):
    out = [[] for _ in prompts]
    if not prompts:
      return out
    tok = self.tokenizer
    ids = encode_prompts(tok, list(prompts))
    for c in self.sampler.generate(self.params, ids, sp, n=n, seed=seed,
                                   progress=self.progress):
      i = c.prompt_index
      # the arrays as they are: transformers' decode lists an array in C where it
      # checks a list's every element in Python (a fifth of the decode), and tolist
      # makes the same Python ints and floats as a loop over the elements, faster
      # (benchmarks/host_overhead.py)
      out[i].append(Sample(
          completion=tok.decode(c.content_tokens, skip_special_tokens=True),
          prompt=prompts[i], prompt_tokens=ids[i],
          completion_tokens=c.tokens.tolist(),
          logprobs=c.logprobs.tolist(), finish_reason=c.finish_reason,
          num_tokens=int(c.num_tokens), sample_index=int(c.sample_index)))
    return out

  def episodes(self, spec, problems, sp, n, seed) -> list:
    """n multi-turn episodes per problem in environment `spec` (environments/), as
    Samples grouped by problem, in sample order."""
    return episodes_lib.run(self.sampler, self.params, self.tokenizer, spec, problems, sp,
                            n, seed, progress=self.progress)

  def target(self, prompt: str, text: str) -> Sample:
    """`text` as a completion of `prompt`: its tokens, as text (a marker spelled in a
    reference is characters, not a turn boundary), followed by the end-of-turn token a
    sampled reply ends with (the sampler's first EOS id, the one control token a
    target adds); no log-probs (not sampled)."""
    eos = list(self.sampler.eos_ids[:1])
    tokens = encode_text(self.tokenizer, text) + eos
    return Sample(prompt=prompt, prompt_tokens=encode_prompts(self.tokenizer, [prompt])[0],
                  completion=text, completion_tokens=tokens, num_tokens=len(tokens))


def model_generate(sampler, params, tokenizer, progress: bool = False) -> GenerateFn:
  """The real GenerateFn (a `ModelPolicy`): encode (chat template) -> sample -> decode."""
  return ModelPolicy(sampler, params, tokenizer, progress)
