"""Multi-turn rollout throughput: episodes through `Sampler.serve` (each turn
re-prefills its episode's ids, observations appended as ids) against single-turn
generation of the same number of sampled tokens, and against what a user would write
instead with transformers: a loop of `model.generate` calls, one per turn, over the
batch of histories.

  python benchmarks/episodes.py                         # CPU: 16 episodes x 3 turns x 32 tokens
  python benchmarks/episodes.py --episodes 256 --turns 4 --new_tokens 128 --dtype bfloat16

Every side runs the smollm2_135m architecture with the same random weights, EOS
ignored, so every turn samples exactly --new_tokens tokens; the scripted environment
answers each turn with the same short observation (about 20 tokens, a user turn of
SmolLM2's chat template) and ends the episode after --turns turns.
  tokens/s = sampled tokens / wall time of one whole call (after an untimed warm-up)
Single-turn: `Sampler.generate` of --episodes rows with --turns x --new_tokens new
tokens each, from the same first prompts. Torch: per turn, `generate(do_sample=True)`
on the left-padded histories, the observation ids appended on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from machine import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

OBSERVATION = "The tool says: 4217. Continue, and give the final answer when you can."


def _setup(args):
  from selfimprove_jax.environments.base import Environment, Spec, Step
  from selfimprove_jax.model import get_preset, init_params
  from selfimprove_jax.weights import tokenizer as tokenizer_lib
  config = get_preset("smollm2_135m").replace(dtype=args.dtype)
  params = init_params(config, seed=0)
  tokenizer = tokenizer_lib.from_gguf(tokenizer_lib.smollm2_gguf_path())

  class Scripted(Environment):
    def __init__(self):
      self.k = 0

    def reset(self, problem):
      return f"Problem {problem.id}: what is 1234 * 5678 - 42? Use the tool if you like."

    def step(self, action, finish):
      self.k += 1
      return Step(observation=OBSERVATION, done=self.k >= args.turns)

  max_tokens = 64 + args.turns * (args.new_tokens + 40)
  spec = Spec(name="scripted", make=Scripted, max_turns=args.turns, max_tokens=max_tokens)
  return config, params, tokenizer, spec


def bench_ours(config, params, tokenizer, spec, args) -> dict:
  import jax
  from selfimprove_jax.environments import episodes
  from selfimprove_jax.sampling import Sampler, SamplingParams, encode_prompts
  from selfimprove_jax.tasks.problem import Problem
  problems = [Problem(id=f"p{i}", prompt="", reference="") for i in range(args.episodes)]
  sampler = Sampler(config, eos_ids=(), tokenizer=tokenizer, max_batch=args.episodes)
  sp = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
  run = lambda seed: episodes.run(sampler, params, tokenizer, spec, problems, sp, 1, seed)
  t0 = time.perf_counter()
  run(0)
  warm = time.perf_counter() - t0
  times = []
  for r in range(args.repeats):
    t0 = time.perf_counter()
    out = run(r + 1)
    times.append(time.perf_counter() - t0)
  sampled = sum(sum(s.action_mask) for g in out for s in g)
  assert sampled == args.episodes * args.turns * args.new_tokens, sampled
  multi = {"tokens_per_s": sampled / min(times), "call_s": min(times), "warmup_s": warm}
  # single turn: the same sampled tokens as one long reply per episode
  first = encode_prompts(tokenizer, [spec.make().reset(p) for p in problems])
  long = SamplingParams(temperature=1.0, max_new_tokens=args.turns * args.new_tokens)
  single_sampler = Sampler(config, eos_ids=(), max_batch=args.episodes)
  single_sampler.generate(params, first, long, seed=0)
  times = []
  for r in range(args.repeats):
    t0 = time.perf_counter()
    single_sampler.generate(params, first, long, seed=r + 1)
    times.append(time.perf_counter() - t0)
  device = jax.devices()[0]
  return {"multi_turn": multi,
          "single_turn": {"tokens_per_s": sampled / min(times), "call_s": min(times)},
          "device": device.device_kind if device.platform != "cpu" else cpu_name()}


def bench_torch(config, params, tokenizer, spec, args) -> dict:
  import torch
  from sampling import torch_model
  from selfimprove_jax.sampling import encode_prompts, encode_reply
  from selfimprove_jax.tasks.problem import Problem
  model = torch_model(config, params, args.dtype)
  device = next(model.parameters()).device
  problems = [Problem(id=f"p{i}", prompt="", reference="") for i in range(args.episodes)]
  first = encode_prompts(tokenizer, [spec.make().reset(p) for p in problems])
  obs = encode_reply(tokenizer, OBSERVATION, closed=False)

  def episode_batch(seed):
    torch.manual_seed(seed)
    histories = [list(p) for p in first]
    for turn in range(args.turns):
      T = max(len(h) for h in histories)
      ids = torch.zeros((len(histories), T), dtype=torch.long)
      mask = torch.zeros((len(histories), T), dtype=torch.long)
      for i, h in enumerate(histories):
        ids[i, T - len(h):] = torch.tensor(h)
        mask[i, T - len(h):] = 1
      with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                             pad_token_id=0)
      new = out[:, T:].cpu().tolist()
      histories = [h + n + (obs if turn + 1 < args.turns else []) for h, n in zip(histories, new)]
    return histories

  episode_batch(0)
  times = []
  for r in range(args.repeats):
    t0 = time.perf_counter()
    episode_batch(r + 1)
    times.append(time.perf_counter() - t0)
  sampled = args.episodes * args.turns * args.new_tokens
  return {"tokens_per_s": sampled / min(times), "call_s": min(times)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--episodes", type=int, default=16)
  ap.add_argument("--turns", type=int, default=3)
  ap.add_argument("--new_tokens", type=int, default=32)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--no_torch", action="store_true")
  args = ap.parse_args()
  config, params, tokenizer, spec = _setup(args)
  ours = bench_ours(config, params, tokenizer, spec, args)
  row = {"episodes": args.episodes, "turns": args.turns, "new_tokens": args.new_tokens,
         "dtype": args.dtype, **ours}
  row["multi_over_single"] = (ours["multi_turn"]["tokens_per_s"]
                              / ours["single_turn"]["tokens_per_s"])
  if not args.no_torch:
    row["torch_multi_turn"] = bench_torch(config, params, tokenizer, spec, args)
    row["ours_over_torch"] = (ours["multi_turn"]["tokens_per_s"]
                              / row["torch_multi_turn"]["tokens_per_s"])
  print(json.dumps(row, indent=1))


if __name__ == "__main__":
  main()
