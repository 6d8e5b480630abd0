"""Per-iteration host time of the state a run keeps, over 100 iterations: does
iteration 100 cost what iteration 10 does?

Two measurements (--mode):
  parts  the state-keeping parts driven directly at realistic sizes, before (the code
         they replaced, copied here) and after (the modules as they are), on the same
         record files, written each iteration under --dir (writing is not timed):
           ledger   a round's samples into the difficulty ledger, the curriculum's pass
                    rate, and the ledger's checkpoint form (before: a dict of dicts,
                    JSON round trip and the metadata file; after: select.ledger.Ledger,
                    loop_state.npz)
           novelty  self-play's earlier valid proposals for a round's 'repeat' check
                    (before: every earlier acquire file re-read and each valid
                    proposal parsed; after: paradigms.self_play.remember's summary)
           steps    every optimizer step's record for steps.jsonl (before: every
                    iteration's steps file re-read; after: loop._step_rows)
           replay   select.replay's pool (before: the last N accepted iterations'
                    select files re-read; after: loop._replay)
  loop   loop.run itself on configs/tiny.py with self-play (proposer and solver
         scripted, no sampling; the train step and checkpoints are real), the wall time
         between consecutive checkpoints. Run it from an older checkout with
         PYTHONPATH=<checkout> for the before figure.

  .venv/bin/python benchmarks/state_growth.py --mode parts
  .venv/bin/python benchmarks/state_growth.py --mode loop --iterations 100
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import types

from machine import cpu_name

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MARKS = (10, 50, 100)


def _h(*parts) -> int:
  return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


# ----------------------------------------------------------------------------- before


def old_update_ledger(ledger: dict, records, iteration: int, threshold: float) -> dict:
  """select.filters.update_ledger before: a dict of dicts, copied on every update."""
  from selfimprove_jax.records import group_by_problem
  ledger = dict(ledger)
  for pid, group in group_by_problem(records).items():
    e = dict(ledger.get(pid, {"attempts": 0, "successes": 0, "last_seen": -1}))
    e["attempts"] += len(group)
    e["successes"] += sum(r.reward >= threshold for r in group)
    e["last_seen"] = iteration
    ledger[pid] = e
  return ledger


def old_pass_rate(ledger: dict, iteration: int):
  rows = [e for e in ledger.values() if e["last_seen"] == iteration]
  attempts = sum(e["attempts"] for e in rows)
  return sum(e["successes"] for e in rows) / attempts if attempts else None


def old_earlier_keys(samples, task) -> frozenset:
  from selfimprove_jax.acquire import self_instruct
  valid = [x for x in samples if x.role == "proposer" and x.proposal_status == "valid"]
  return frozenset(self_instruct.canonical(task.parse_problem(x.proposal, canonical=True))
                   for x in valid)


def old_replay(records, history, k, n, selected):
  accepted = [row["iteration"] for row in history
              if row["accepted"] and 0 < row["iteration"] < k][-n:]
  seen = {(x.prompt, x.completion) for x in selected}
  out = []
  for x in (x for j in accepted for x in records.read(j, "select")):
    if (x.prompt, x.completion) not in seen:
      seen.add((x.prompt, x.completion))
      out.append(x)
  return out


# ----------------------------------------------------------------------------- parts


def _round_samples(k, r, args, task):
  """One round's records: P problems x G samples (ids new each iteration, a quarter
  seen before), and self-play's proposals (half valid, a few repeating earlier ones)."""
  from selfimprove_jax.records import Sample
  samples = []
  for i in range(args.prompts):
    pid = f"{(k - (i % 4 == 0)) * 100003 + i + r * 7919:016x}"
    for j in range(args.samples):
      samples.append(Sample(problem_id=pid, prompt=f"q{pid}", completion=f"a{_h(pid, j) % 5}",
                            reward=float(_h(pid, j) % 2), iteration=k))
  proposals = []
  for i in range(args.proposals):
    a, b = _h(k, r, i) % 90 + 10, _h(k, r, i, 1) % (40 * k) + 1
    problem = task.parse_problem(f"What is {a} + {b}?", canonical=True)
    valid = i % 2 == 0
    proposals.append(Sample(problem_id=f"{_h(k, r, i):016x}", role="proposer",
                            proposal=f"What is {a} + {b}?",
                            proposal_status="valid" if valid else "invalid",
                            proposal_id=problem.id if valid else None, iteration=k))
    proposals += [Sample(problem_id=problem.id, role="solver", completion=f"{a + b}",
                         reward=1.0, iteration=k) for _ in range(args.samples if valid else 0)]
  return samples, proposals


def _timed(fn):
  t = time.perf_counter()
  out = fn()
  return time.perf_counter() - t, out


def parts(args) -> dict:
  """{part: {'before': [seconds per iteration], 'after': [...]}}."""
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  from selfimprove_jax.evaluate import curriculum
  from selfimprove_jax.paradigms import self_play
  from selfimprove_jax.runtime.checkpoint import _write_npz_atomic
  from selfimprove_jax.select.ledger import Ledger
  from selfimprove_jax.settings import select as select_settings
  from selfimprove_jax.stage_cache import RunRecords
  from selfimprove_jax.tasks import get_task

  task = get_task("arithmetic", operators="+")
  root = tempfile.mkdtemp(dir=args.dir)
  records = RunRecords(root)
  times = {p: {"before": [], "after": []} for p in ("ledger", "novelty", "steps", "replay")}
  old_ledger, ledger, summary = {}, Ledger(), None
  select = select_settings(load_config(os.path.join(os.path.dirname(__file__), "..",
                                                    "configs", "tiny.py"), []))
  s = types.SimpleNamespace(records=records, read_back={}, stages=types.SimpleNamespace(
      select=dataclasses.replace(select, replay=args.replay)))   # what the loop reads
  state = loop.LoopState(history=[{"iteration": 0, "accepted": True}])
  meta_path = os.path.join(root, "metadata")
  for k in range(1, args.iterations + 1):
    rounds = [_round_samples(k, r, args, task) for r in range(args.rounds)]
    selected = [x for samples, _ in rounds for x in samples if x.reward >= 1.0]
    # ---- ledger (+ the curriculum's read + the checkpoint's form)
    def before_ledger():
      nonlocal old_ledger
      for samples, _ in rounds:
        old_ledger = old_update_ledger(old_ledger, samples, k, 1.0)
      old_pass_rate(old_ledger, k)
      meta = json.loads(json.dumps({"loop": {"ledger": old_ledger,
                                             "history": state.history}}, default=str))
      with open(meta_path, "w") as f:
        json.dump(meta, f)
    def after_ledger():
      for samples, _ in rounds:
        ledger.update(samples, k, 1.0)
      curriculum.ledger_pass_rate(ledger, k)
      meta = json.loads(json.dumps({"loop": {"history": state.history}}, default=str))
      with open(meta_path, "w") as f:
        json.dump(meta, f)
      _write_npz_atomic(os.path.join(root, "loop_state.npz"), ledger.arrays())
    # ---- novelty: what each round's 'repeat' check reads
    this_iteration: list = []
    def before_novelty():
      for _, proposals in rounds:
        keys = old_earlier_keys(records.earlier(k, "acquire") + this_iteration, task)
        _ = [self_play.self_instruct.canonical(task.parse_problem(x.proposal, canonical=True))
             in keys for x in proposals if x.role == "proposer"]
        this_iteration.extend(proposals)
    def after_novelty():
      nonlocal summary
      for _, proposals in rounds:
        keys = self_play.KeySet(summary["valid_proposals"] if summary else None)
        _ = [self_play.proposal_key(x, task) in keys for x in proposals
             if x.role == "proposer"]
        summary = self_play.remember(summary, proposals, task)
    for name, before, after in (("ledger", before_ledger, after_ledger),
                                ("novelty", before_novelty, after_novelty)):
      times[name]["before"].append(_timed(before)[0])
      if name == "novelty":
        this_iteration.clear()
      times[name]["after"].append(_timed(after)[0])
    for r, (_, proposals) in enumerate(rounds):
      records.write(k, f"acquire_{r}", proposals)
    # ---- replay: this iteration's selection plus the pool
    # (as iteration k + 1 would: this one is in the history, every fifth rolled back)
    records.write(k, "select", selected[:args.selected])
    state.history.append({"iteration": k, "accepted": k % 5 != 0})
    it = loop.Iteration(k + 1, Ledger(), {}, selected=[])
    times["replay"]["before"].append(_timed(
        lambda: old_replay(records, state.history, k + 1, args.replay, []))[0])
    # ---- steps
    records.write(k, "steps", [dict(iteration=k, step=i, loss=1.0 / (i + k), grad_norm=0.5)
                               for i in range(args.steps)])
    times["steps"]["before"].append(_timed(
        lambda: [x for j in range(1, k + 1) for x in records.rows(j, "steps")])[0])
    times["steps"]["after"].append(_timed(lambda: loop._step_rows(s, k))[0])
    times["replay"]["after"].append(_timed(lambda: loop._replay(s, state, it))[0])
  shutil.rmtree(root, ignore_errors=True)
  return times


# ----------------------------------------------------------------------------- loop


def loop_times(args) -> list:
  """Seconds between consecutive checkpoints of a scripted self-play run."""
  from selfimprove_jax import loop
  from selfimprove_jax.config import load_config
  from selfimprove_jax.records import Sample
  from selfimprove_jax.sampling import encode_prompts
  from selfimprove_jax.tasks import get_task

  task = get_task("arithmetic", operators="+")

  def reply(prompt: str, j: int) -> str:
    if prompt.startswith("Here are some example problems"):
      h = _h(prompt, j)
      return f"What is {h % 50 + 1} + {h // 50 % 50 + 1}?"
    p = task.parse_problem(prompt)
    return f"#### {p.reference if p is not None and j < 2 else 0}"

  def scripted(tokenizer):
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

  loop.Setup.generate = lambda self, params: scripted(self.base.tokenizer)
  stamps = []
  save = loop._checkpoint
  def stamped(*a, **kw):
    save(*a, **kw)
    stamps.append(time.perf_counter())
  loop._checkpoint = stamped
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py"), [
      "loop.algorithm=self_play", f"loop.iterations={args.iterations}",
      "loop.samples_per_prompt=4", "loop.rl_steps=2",
      f"loop.prompts_per_iteration={args.loop_prompts}",
      "select.filters=max_length", "evaluate.patience=1000", "evaluate.max_regression=1.0",
      "log.tensorboard=false", "log.plot=false"])
  workdir = tempfile.mkdtemp(dir=args.dir)
  loop.run(config, workdir, log=lambda *_: None)
  shutil.rmtree(workdir, ignore_errors=True)
  return [b - a for a, b in zip(stamps, stamps[1:])]   # iteration k: stamps[k] - stamps[k-1]


def _ms(xs, k: int, window: int = 5) -> float:
  """Median over iterations k-window+1..k (1-based), in ms."""
  import statistics
  return 1e3 * statistics.median(xs[max(0, k - window):k])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--mode", choices=("parts", "loop"), default="parts")
  p.add_argument("--iterations", type=int, default=100)
  p.add_argument("--prompts", type=int, default=256, help="parts: problems per round")
  p.add_argument("--samples", type=int, default=8, help="parts: G samples per problem")
  p.add_argument("--proposals", type=int, default=64, help="parts: self-play proposals a round")
  p.add_argument("--rounds", type=int, default=2, help="parts: rounds an iteration")
  p.add_argument("--selected", type=int, default=512, help="parts: selected samples kept")
  p.add_argument("--replay", type=int, default=4, help="parts: select.replay")
  p.add_argument("--steps", type=int, default=8, help="parts: optimizer steps an iteration")
  p.add_argument("--loop_prompts", type=int, default=16, help="loop: prompts an iteration")
  p.add_argument("--dir", default=None)
  args = p.parse_args()
  import selfimprove_jax
  print(f"{cpu_name()}, python {sys.version.split()[0]}, --mode {args.mode}, code from "
        f"{os.path.dirname(selfimprove_jax.__file__)}", flush=True)
  marks = [k for k in MARKS if k <= args.iterations]
  if args.mode == "parts":
    times = parts(args)
    print("| part | code | " + " | ".join(f"iter {k} (ms)" for k in marks) + " | "
          f"{marks[-1]} / {marks[0]} |")
    print("|---|---|" + "---|" * (len(marks) + 1))
    for name, by in times.items():
      for code in ("before", "after"):
        xs = by[code]
        print(f"| {name} | {code} | " + " | ".join(f"{_ms(xs, k):.2f}" for k in marks)
              + f" | {_ms(xs, marks[-1]) / max(_ms(xs, marks[0]), 1e-9):.2f} |")
  else:
    xs = loop_times(args)
    print("| iteration | " + " | ".join(str(k) for k in marks) + " |")
    print("|---|" + "---|" * len(marks))
    print("| seconds (median of 5) | " + " | ".join(f"{_ms(xs, k) / 1e3:.2f}" for k in marks)
          + " |")
    print(json.dumps([round(x, 3) for x in xs]))


if __name__ == "__main__":
  main()
