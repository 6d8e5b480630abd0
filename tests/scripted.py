"""Scripted generations for the stage tests: a GenerateFn that answers from a function
of (prompt, sample index, greedy) and records its calls, `S`, one scripted completion,
and `tokenized`, a GenerateFn with real tokens that the loop can train on."""

from selfimprove_jax.records import Sample
from selfimprove_jax.sampling import encode_prompts


def S(text, logprob=-1.0, num_tokens=1, tokens=None, logprobs=None):
  """A scripted completion: its summed log-prob spread evenly over its tokens."""
  return Sample(completion=text, num_tokens=num_tokens, completion_tokens=tokens or [],
                logprobs=logprobs or [logprob / num_tokens] * num_tokens)


class Scripted:
  """A GenerateFn answering from a function of (prompt, sample index, greedy), and
  recording every call (prompts, n) so tests can count model calls."""

  def __init__(self, reply):
    self.reply = reply
    self.calls = []

  def __call__(self, prompts, sp, n, seed):
    self.calls.append((list(prompts), n, sp.is_greedy))
    out = []
    for p in prompts:
      group = []
      for j in range(n):
        r = self.reply(p, j, sp.is_greedy)
        group.append(r if isinstance(r, Sample) else S(r, -1.0, 4))
      out.append(group)
    return out


def tokenized(reply, tokenizer):
  """A GenerateFn answering `reply(prompt, j)`, with real prompt and completion tokens
  (as the sampler would give them), so the loop can train on its samples."""
  def generate(prompts, sp, n, seed):
    ids = encode_prompts(tokenizer, list(prompts))
    out = []
    for p, pt in zip(prompts, ids):
      group = []
      for j in range(n):
        text = reply(p, j)
        toks = tokenizer.encode(text, add_special_tokens=False)
        group.append(Sample(prompt=p, prompt_tokens=pt, completion=text,
                            completion_tokens=toks, logprobs=[-1.0] * len(toks),
                            num_tokens=len(toks), sample_index=j))
      out.append(group)
    return out
  return generate
