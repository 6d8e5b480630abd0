"""The stages' wiring in the loop: what each stage hands the next (DPO trains on the
selected samples only), and evaluation's majority vote in each problem's own format."""

import dataclasses
import json
import os

import pytest

from selfimprove_jax import loop
from selfimprove_jax.config import load_config
from selfimprove_jax.errors import UserError
from selfimprove_jax.evaluate import heldout as evaluation
from selfimprove_jax.paradigms import registry as algorithms
from selfimprove_jax.records import read_records
from selfimprove_jax.sampling import SamplingParams
from selfimprove_jax.tasks import get_task

from run_files import TINY
from scripted import S, Scripted


def _spy_on_batches(monkeypatch, name: str) -> list:
  """The samples each call of algorithm `name`'s batch builder receives, in order."""
  seen = []
  algo = algorithms.ALGORITHMS[name]
  def spy(samples, config, seed):
    seen.append(list(samples))
    return algo.batches(samples, config, seed)
  monkeypatch.setitem(algorithms.ALGORITHMS, name, dataclasses.replace(algo, batches=spy))
  return seen


def test_dpo_trains_only_on_selected_samples_never_on_heldout_prompts(monkeypatch, tmp_path):
  """Half of each round's prompts are held-out problems (as a leaky prompt source
  would give) and a filter drops some samples: the DPO pairs are built from exactly
  the selected records, which hold no held-out prompt."""
  seen = _spy_on_batches(monkeypatch, "dpo")
  take = loop.PromptStream.take
  def leaky(self, n, share=0.0):
    return take(self, n - n // 2, share) + leaked[: n // 2]
  monkeypatch.setattr(loop.PromptStream, "take", leaky)
  config = load_config(TINY, ["loop.algorithm=dpo", "loop.iterations=1",
                              "select.filters=dedup,max_length",
                              "select.max_completion_tokens=5", "log.tensorboard=false",
                              "log.plot=false"])
  task = get_task("arithmetic")
  leaked = task.heldout(config.task.heldout_size, config.task.difficulty)
  loop.run(config, str(tmp_path), log=lambda *_: None)
  rec = tmp_path / "records" / "iter_0001"
  acquired = read_records(str(rec / "acquire.parquet"))
  selected = read_records(str(rec / "select.parquet"))
  held = {p.id for p in leaked}
  assert any(s.problem_id in held for s in acquired)        # the leak reached acquire
  assert len(selected) < len(acquired)
  assert seen == [selected]                                 # pairs from these only
  assert not any(s.problem_id in held for s in seen[0])
  row = json.loads(open(os.path.join(tmp_path, "metrics.jsonl")).readlines()[1])
  assert row["kept"] == len(selected)


def test_majority_vote_reads_answers_in_each_problems_format(tmp_path):
  """jsonl task, numeric references: two replies state the answer in words, two say
  7. Read with the problem both worded ones are the reference and win the tie (first
  seen); read without it (the whole reply), the two identical '7' replies would win."""
  path = tmp_path / "qa.jsonl"
  path.write_text("".join(json.dumps({"prompt": f"What is {i} * 6?", "answer": str(i * 6)})
                          + "\n" for i in range(1, 21)))
  task = get_task(f"jsonl:{path}")
  problems = task.heldout(2)
  replies = lambda p: [f"I think it is {p.reference}.", f"So {p.reference}, I believe",
                       "7", "7"]
  by_prompt = {p.prompt: replies(p) for p in problems}
  gen = Scripted(lambda prompt, j, greedy: S("7" if greedy else by_prompt[prompt][j]))
  m = evaluation.heldout_scores(gen, task, problems, 4,
                                SamplingParams(temperature=1.0, max_new_tokens=8), seed=0)
  assert m["pass@1"] == 0.0          # greedy says 7
  assert m["maj@4"] == 1.0 and m["pass@4"] == 1.0


def test_greedy_evaluation_stops_where_sampling_stops():
  """The greedy pass@1 answers end at the configured stop sequences too (a few-shot
  raw prompt would otherwise run on into the next 'Q:' and its numbers)."""
  task = get_task("arithmetic", operators="+")
  calls = []
  def gen(prompts, sp, n, seed):
    calls.append(sp)
    return [[S("1") for _ in range(n)] for _ in prompts]
  sample = SamplingParams(temperature=0.7, max_new_tokens=8, stop_sequences=("\n",))
  evaluation.heldout_scores(gen, task, task.heldout(2, 1), 2, sample, seed=0)
  assert [c.is_greedy for c in calls] == [True, False]
  assert all(c.stop_sequences == ("\n",) for c in calls)


def test_replay_trains_on_earlier_accepted_iterations_selected_samples(monkeypatch, tmp_path):
  """select.replay=1: iteration 2 trains on its own selected samples plus iteration
  1's (read from its records), each (prompt, completion) once; iteration 1 had none to
  replay. An on-policy algorithm refuses the key."""
  seen = _spy_on_batches(monkeypatch, "sft")
  config = load_config(TINY, ["loop.iterations=2", "select.replay=1", "select.filters=dedup",
                              "evaluate.max_regression=1.0", "log.tensorboard=false",
                              "log.plot=false"])
  state = loop.run(config, str(tmp_path), log=lambda *_: None)
  assert [r["accepted"] for r in state["history"]] == [True, True, True]
  first = read_records(str(tmp_path / "records" / "iter_0001" / "select.parquet"))
  second = read_records(str(tmp_path / "records" / "iter_0002" / "select.parquet"))
  assert seen[0] == first and "replayed" not in state["history"][1]
  own = {(x.prompt, x.completion) for x in second}
  again = [x for x in first if (x.prompt, x.completion) not in own]
  assert again and seen[1] == second + again
  assert state["history"][2]["replayed"] == len(again)
  with pytest.raises(UserError, match="select.replay=1 .*algorithm=grpo"):
    algorithms.algorithm(load_config(TINY, ["loop.algorithm=grpo", "select.replay=1"]))
