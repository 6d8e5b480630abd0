"""Multi-turn episodes through the continuous-batching sampler.

`run` plays G episodes per problem: each starts from its environment's first
observation (chat-templated like any prompt), and every model turn is one request to
`Sampler.serve`, whose context is the episode's own ids so far: the prompt, the
sampled ids of earlier turns exactly as sampled, and the observations' ids appended
after them. Nothing is re-tokenized, so the log-probs a loss reads are those of what
was sampled. (Each turn re-prefills its history; reusing the slot's KV cache across
turns is not built.)

`EpisodeFeed` is the host side: `Sampler.serve` hands it each finished turn, it sends
the turn to the episode's environment on a thread pool (a sandboxed tool call runs
while the sampler decodes the next chunk) and queues the episode's next turn once the
answer is in. Answers are collected in the order the turns were handed over, one
chunk later, so the run is reproducible whatever the tools' timing.

An episode is one `Sample`: `completion_tokens` its ids after the prompt, `action_mask`
1 at the model's own tokens (observations carry no loss), `logprobs` 0 at the
observations', `turns` one dict per model turn (TURN_FIELDS), the reward its last
step's, `episode_end` why it ended.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import sys
from typing import Callable, Optional, Sequence

from selfimprove_jax.environments.base import Environment, Spec, Step
from selfimprove_jax.errors import UserError
from selfimprove_jax.records import Sample
from selfimprove_jax.runtime.checkpoint import fault_point
from selfimprove_jax.sampling import Request, SamplingParams, encode_prompts, encode_reply
from selfimprove_jax.sampling import encode_text

# what a turn records: the model's text and ids (with its end-of-turn token or stop
# sequence), how it ended, the observation's text and ids (empty after the last turn),
# the step's reward, status, detail and whether it called a tool
TURN_FIELDS = ("text", "tokens", "finish_reason", "observation", "observation_tokens",
               "reward", "status", "detail", "tool_call")
ENDS = ("done", "max_turns", "max_tokens", "error")
_ANSWERED = 0   # turns answered in this process (the crash tests' `episode_turn@K`)


@dataclasses.dataclass
class _Episode:
  index: int
  problem: object
  sample_index: int
  env: Environment
  prompt_text: str
  prompt: list
  history: list = dataclasses.field(default_factory=list)
  mask: list = dataclasses.field(default_factory=list)
  logprobs: list = dataclasses.field(default_factory=list)
  turns: list = dataclasses.field(default_factory=list)
  reward: float = 0.0
  end: str = ""

  @property
  def context(self) -> list:
    return self.prompt + self.history


class EpisodeFeed:
  """`Sampler.serve`'s feed (sampling.Feed) for a set of episodes (module docstring)."""

  def __init__(self, spec: Spec, tokenizer, episodes: Sequence[_Episode], max_new: int,
               workers: int = 8, on_end: Optional[Callable[[], None]] = None):
    self.spec, self.tokenizer, self.max_new = spec, tokenizer, max_new
    self.episodes = list(episodes)
    self.queue: list[Request] = []
    self.pending: list[list] = []   # per `done` call: [(episode, turn, future)], in order
    self.on_end = on_end
    self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers),
                                                      thread_name_prefix="environment")
    for e in self.episodes:
      self._continue(e)

  def close(self):
    self.pool.shutdown(wait=True)

  # Feed ---------------------------------------------------------------------------------

  def take(self, k: int, flush: bool) -> list[Request]:
    # Answers to turns handed over before the latest `done` are collected now (their
    # tools ran while the last chunk decoded); the latest ones only when flushing.
    ready = self.pending if flush else self.pending[:-1]
    self.pending = [] if flush else self.pending[-1:]
    for batch in ready:
      for episode, turn, future in batch:
        self._answer(episode, turn, future.result())
        global _ANSWERED
        _ANSWERED += 1
        fault_point("episode_turn", _ANSWERED)   # crash tests: SIGKILL mid-episode
    out, self.queue = self.queue[:k], self.queue[k:]
    return out

  def done(self, results: list) -> None:
    batch = []
    for request, c in results:
      e = self.episodes[request.stream]
      tokens = [int(t) for t in c.tokens]
      text = self.tokenizer.decode([int(t) for t in c.content_tokens],
                                   skip_special_tokens=True)
      e.history += tokens
      e.mask += [1] * len(tokens)
      e.logprobs += [float(x) for x in c.logprobs]
      turn = {"text": text, "tokens": tokens, "finish_reason": c.finish_reason}
      e.turns.append(turn)
      batch.append((e, turn, self.pool.submit(_step, e.env, text, c.finish_reason)))
    self.pending.append(batch)

  # episodes -----------------------------------------------------------------------------

  def _answer(self, e: _Episode, turn: dict, step: Step) -> None:
    turn.update(reward=float(step.reward), status=step.status, detail=step.detail,
                tool_call=bool(step.tool_call), observation="", observation_tokens=[])
    e.reward = float(step.reward)
    if step.status == "env_error":
      return self._end(e, "error")
    if step.done:
      return self._end(e, "done")
    if len(e.turns) >= self.spec.max_turns:
      return self._end(e, "max_turns")
    if self.spec.observation == "inline":
      ids = encode_text(self.tokenizer, step.observation)
    else:
      ids = encode_reply(self.tokenizer, step.observation,
                         closed=turn["finish_reason"] == "eos")
    if len(e.context) + len(ids) >= self.spec.max_tokens:
      return self._end(e, "max_tokens")
    turn.update(observation=step.observation, observation_tokens=ids)
    e.history += ids
    e.mask += [0] * len(ids)
    e.logprobs += [0.0] * len(ids)
    self._continue(e)

  def _continue(self, e: _Episode) -> None:
    room = self.spec.max_tokens - len(e.context)
    if room < 1:
      return self._end(e, "max_tokens")
    self.queue.append(Request(stream=e.index, index=len(e.turns), tokens=e.context,
                              max_new=min(self.max_new, room)))

  def _end(self, e: _Episode, why: str) -> None:
    e.end = why
    if self.on_end is not None:
      self.on_end()


def _step(env: Environment, text: str, finish: str) -> Step:
  """One environment step; an environment that raises ends its episode (status
  'env_error', the exception in the detail) instead of the whole acquisition."""
  try:
    return env.step(text, finish)
  except Exception as e:  # an environment's bug must not lose every episode of the round
    return Step(status="env_error", detail=f"{type(e).__name__}: {e}"[:500])


# size: the sampler, its params and tokenizer travel apart (as ModelPolicy holds them)
def run(sampler, params, tokenizer, spec: Spec, problems: Sequence, sp: SamplingParams,
        n: int, seed: int, progress: bool = False, workers: int = 8) -> list[list[Sample]]:
  """n episodes per problem, as `Sample`s grouped by problem in sample order (module
  docstring). sp.max_new_tokens bounds each model turn; spec.max_tokens the episode."""
  jax = sys.modules.get("jax")
  if jax is not None and jax.process_count() > 1:
    # each host would step its own environments, and a tool's time limit could end a
    # call on one host and not another: the hosts' episodes would part
    raise UserError(f"environment {spec.name!r}: multi-turn episodes run in one process "
                    f"for now ({jax.process_count()} processes here)")
  if not isinstance(sp, SamplingParams):
    sp = SamplingParams.from_config(sp)
  sp = dataclasses.replace(sp, stop_sequences=tuple(sp.stop_sequences) + spec.stop_sequences)
  episodes = []
  for p in problems:
    for j in range(n):
      env = spec.make()
      text = env.reset(p)
      episodes.append(_Episode(index=len(episodes), problem=p, sample_index=j, env=env,
                               prompt_text=text, prompt=[]))
  prompts = encode_prompts(tokenizer, [e.prompt_text for e in episodes])
  for e, ids in zip(episodes, prompts):
    e.prompt = ids
  too_long = [e for e in episodes if len(e.prompt) >= spec.max_tokens]
  if too_long:
    raise ValueError(f"environment {spec.name!r}: a first observation of "
                     f"{len(too_long[0].prompt)} tokens leaves no room in max_tokens="
                     f"{spec.max_tokens}")
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=len(episodes), desc="episodes", unit="ep")
  feed = EpisodeFeed(spec, tokenizer, episodes, sp.max_new_tokens, workers,
                     on_end=(lambda: bar.update(1)) if bar is not None else None)
  try:
    sampler.serve(params, feed, sp, max_context=spec.max_tokens, seed=seed)
  finally:
    feed.close()
    if bar is not None:
      bar.close()
  out: list[list[Sample]] = [[] for _ in problems]
  for i, e in enumerate(episodes):
    out[i // n].append(to_sample(e, tokenizer))
  return out


def to_sample(e: _Episode, tokenizer) -> Sample:
  last = e.turns[-1] if e.turns else {}
  return Sample(
      problem_id=getattr(e.problem, "id", ""), prompt=e.prompt_text,
      reference=getattr(e.problem, "reference", None), prompt_tokens=list(e.prompt),
      completion=tokenizer.decode(e.history, skip_special_tokens=True),
      completion_tokens=list(e.history), logprobs=list(e.logprobs), reward=e.reward,
      finish_reason=last.get("finish_reason", "length"), num_tokens=len(e.history),
      sample_index=e.sample_index, verifier_status=last.get("status", "ok"),
      verifier_detail=last.get("detail", ""), action_mask=list(e.mask),
      turns=[dict(t) for t in e.turns], episode_end=e.end or "max_tokens")


def turn_counts(turns: Sequence[dict]) -> dict:
  """Of these turns: tool calls, tool calls that did not run cleanly (a sandbox limit or
  an error), and invalid actions."""
  return {"tool_calls": sum(bool(t.get("tool_call")) for t in turns),
          "tool_errors": sum(bool(t.get("tool_call")) and t.get("status") not in
                             ("ok", "invalid") for t in turns),
          "invalid": sum(t.get("status") == "invalid" for t in turns)}


def process_metrics(samples: Sequence[Sample], spec: Optional[Spec] = None) -> dict:
  """What episodes did, beyond their reward: turns used, tool calls and tool errors
  per episode, invalid actions, the share that ran out of turns or tokens, and (where
  the environment knows the optimum) turns used over the optimum."""
  eps = [s for s in samples if s.turns is not None]
  if not eps:
    return {}
  n = len(eps)
  counts = turn_counts([t for s in eps for t in s.turns])
  out = {
      "episode_turns": sum(len(s.turns) for s in eps) / n,
      "episode_success": sum(s.reward >= 1.0 for s in eps) / n,
      "episode_tool_calls": counts["tool_calls"] / n,
      "episode_tool_errors": counts["tool_errors"] / n,
      "episode_invalid": counts["invalid"] / n,
      "episode_out_of_turns": sum(s.episode_end == "max_turns" for s in eps) / n,
      "episode_out_of_tokens": sum(s.episode_end == "max_tokens" for s in eps) / n,
  }
  return out
