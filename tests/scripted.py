"""Scripted generations for the stage tests: a GenerateFn that answers from a function
of (prompt, sample index, greedy) and records its calls, and `S`, one scripted
completion."""

from selfimprove_jax.records import Sample


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
