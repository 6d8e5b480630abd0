"""Per-run state that grows with the run, kept so that an iteration's work does not:
the difficulty ledger as arrays beside the checkpoint (not JSON in its metadata), and
the running summaries that self-play's novelty check, select.replay and the step
records read instead of every earlier record file. Each is checked against what
re-reading the records gives, on a scripted multi-iteration run."""

import dataclasses
import json
import os
import types

import jax
import numpy as np
import pytest

from selfimprove_jax import loop, settings
from selfimprove_jax.acquire import rounds as acquire
from selfimprove_jax.acquire import self_instruct
from selfimprove_jax.config import load_config
from selfimprove_jax.evaluate import curriculum
from selfimprove_jax.paradigms import registry as algorithms
from selfimprove_jax.paradigms import self_play
from selfimprove_jax.records import Sample
from selfimprove_jax.runtime.checkpoint import LOOP_ARRAYS, Checkpointer
from selfimprove_jax.runtime.files import UnreadableFile
from selfimprove_jax.select.ledger import Ledger
from selfimprove_jax.stage_cache import RunRecords
from selfimprove_jax.tasks import get_task

from run_files import TINY
from scripted import Scripted

TASK = get_task("arithmetic", operators="+")


def _samples(k, pids_rewards):
  return [Sample(problem_id=pid, reward=r, iteration=k) for pid, r in pids_rewards]


def _old_update(ledger: dict, records, iteration, threshold) -> dict:
  """The dict ledger as select.filters.update_ledger kept it before (the reference)."""
  ledger = dict(ledger)
  for s in records:
    e = dict(ledger.get(s.problem_id, {"attempts": 0, "successes": 0, "last_seen": -1}))
    e["attempts"] += 1
    e["successes"] += s.reward >= threshold
    e["last_seen"] = iteration
    ledger[s.problem_id] = e
  return ledger


def _scripted_ledger(iterations=6):
  """(Ledger, the old dict ledger) after the same scripted rounds: prompts seen again
  across iterations, several rounds an iteration, ids of different lengths."""
  rng = np.random.default_rng(0)
  ledger, old = Ledger(), {}
  for k in range(1, iterations + 1):
    for _ in range(2):
      pids = [f"p{int(i)}" * (1 + int(i) % 3) for i in rng.integers(0, 40, size=12)]
      rounds = _samples(k, [(pid, float(rng.integers(0, 2))) for pid in pids])
      ledger.update(rounds, k, 1.0)
      old = _old_update(old, rounds, k, 1.0)
  return ledger, old


def test_ledger_matches_the_dict_it_replaces():
  ledger, old = _scripted_ledger()
  assert ledger.to_dict() == old and list(ledger.to_dict()) == list(old)   # same order
  for k in (5, 6, 7):
    rows = [e for e in old.values() if e["last_seen"] == k]
    want = (sum(e["successes"] for e in rows) / sum(e["attempts"] for e in rows)
            if rows else None)
    assert curriculum.ledger_pass_rate(ledger, k) == want
  assert curriculum.ledger_pass_rate(ledger, 6) is not None
  assert Ledger.from_dict(old) == ledger and Ledger.from_arrays(ledger.arrays()) == ledger


def _state(ledger, summaries=None):
  return loop.LoopState(iteration=3, accepted_iteration=2, best_pass1=0.25, difficulty=2,
                        history=[{"iteration": 0, "accepted": True}], adjust={},
                        ledger=ledger, summaries=summaries or {})


def test_ledger_round_trips_through_a_checkpoint_beside_it(tmp_path, monkeypatch):
  """Saved as arrays in checkpoints/K/loop_state.npz (the metadata holds no ledger),
  covered by the manifest hash, restored equal."""
  ledger, _ = _scripted_ledger()
  keys = self_play.KeySet().with_keys(["a", "b", None])
  state = _state(ledger, {"self_play": {"valid_proposals": keys.hashes}})
  ckpt = Checkpointer(str(tmp_path))
  meta = {"loop": state.to_json(), "config": {}}
  ckpt.save(3, {"w": np.arange(4, dtype=np.float32)}, meta, True, arrays=state.arrays())
  step = ckpt.step_dir(3)
  assert os.path.isfile(os.path.join(step, LOOP_ARRAYS))
  assert "ledger" not in ckpt.restore_meta(3)["loop"]
  assert LOOP_ARRAYS in ckpt.manifest()["checkpoints"]["3"]["files"]
  back = loop.LoopState.from_checkpoint(ckpt.restore_meta(3)["loop"],
                                        ckpt.restore_loop_arrays(3))
  assert back.ledger == ledger and back.to_json() == json.loads(json.dumps(state.to_json()))
  summary = back.summaries["self_play"]["valid_proposals"]
  assert np.array_equal(summary, keys.hashes) and summary.dtype == np.uint64
  assert "a" in self_play.KeySet(summary) and "c" not in self_play.KeySet(summary)
  assert ckpt.verify(3) is None
  # the file is part of the checkpoint: damaged, the checkpoint no longer verifies
  path = os.path.join(step, LOOP_ARRAYS)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(data))
  monkeypatch.setenv("SELFIMPROVE_JAX_VERIFY", "full")
  assert "content hash mismatch" in ckpt.verify(3)
  monkeypatch.delenv("SELFIMPROVE_JAX_VERIFY")
  # unparseable (a verify that trusted its stats): one line naming the file
  with open(path, "wb") as f:
    f.write(b"PK not a zip")
  with pytest.raises(UnreadableFile, match=LOOP_ARRAYS) as e:
    ckpt.restore_loop_arrays(3)
  assert "\n" not in str(e.value)
  ckpt.close()


def test_a_checkpoint_with_the_ledger_in_its_metadata_still_loads(tmp_path):
  """Checkpoints written before the arrays: JSON ledger in the metadata, no
  loop_state.npz. Read as they are; saved again, in the new form."""
  ledger, old = _scripted_ledger()
  ckpt = Checkpointer(str(tmp_path))
  loop_json = dict(_state(Ledger()).to_json(), ledger=old)
  ckpt.save(2, {"w": np.zeros(2, np.float32)}, {"loop": loop_json, "config": {}}, True)
  assert ckpt.restore_loop_arrays(2) == {}
  state = loop.LoopState.from_checkpoint(ckpt.restore_meta(2)["loop"],
                                         ckpt.restore_loop_arrays(2))
  assert state.ledger == ledger and state.summaries == {}
  assert state.ledger.entry(next(iter(old))) == old[next(iter(old))]
  ckpt.save(3, {"w": np.zeros(2, np.float32)}, {"loop": state.to_json(), "config": {}},
            True, arrays=state.arrays())
  assert "ledger" not in ckpt.restore_meta(3)["loop"]
  again = loop.LoopState.from_checkpoint(ckpt.restore_meta(3)["loop"],
                                         ckpt.restore_loop_arrays(3))
  assert again.ledger == ledger
  ckpt.close()


# ----------------------------------------------------------------------------- novelty


class Proposer(Scripted):
  """Proposals drawn from a small pool (so later rounds repeat earlier ones); solver
  answers right for the first half of each group."""

  def __init__(self, seed):
    self.rng = np.random.default_rng(seed)
    super().__init__(self._reply)

  def _reply(self, prompt, j, greedy):
    if prompt.startswith("Here are some example problems"):
      a, b = self.rng.integers(1, 9, size=2)
      return f"What is {a} + {b}?"
    p = TASK.parse_problem(prompt)
    return f"The answer is {p.reference if j < 2 else 0}"


def _old_earlier_keys(earlier_samples, task) -> frozenset:
  """What self-play read before: every earlier record, each valid proposal parsed."""
  return frozenset(self_instruct.canonical(task.parse_problem(x.proposal, canonical=True))
                   for x in earlier_samples
                   if x.role == "proposer" and x.proposal_status == "valid")


def test_novelty_summary_gives_the_verdicts_of_rereading_every_record(tmp_path):
  """Five scripted iterations of two self-play rounds: each round's verdicts, judged
  against the running summary, equal the verdicts against the keys read back from
  every earlier acquire file (the old way), and repeats do occur."""
  config = load_config(TINY, ["loop.algorithm=self_play", "loop.samples_per_prompt=4",
                              "loop.prompts_per_iteration=6", "log.tensorboard=false",
                              "log.plot=false"])
  st = algorithms.ALGORITHMS["self_play"].settings(config)
  records, summary, statuses = RunRecords(str(tmp_path)), None, []
  seeds = TASK.train_problems(0, 6, 1)
  for k in range(1, 6):
    this_iteration = []
    for r in range(2):
      round_ = acquire.Round(Proposer(10 * k + r), None, TASK, [], settings.acquire(config),
                             k * 100 + r, k, st, summary)
      samples = self_play.self_play_round(round_, seeds)
      proposers = [s for s in samples if s.role == "proposer"]
      earlier = _old_earlier_keys(records.earlier(k, "acquire") + this_iteration, TASK)
      old = self_play.check_proposals([s.proposal for s in proposers], TASK, [],
                                      [p.prompt for p in seeds], st, earlier)
      assert [s.proposal_status for s in proposers] == [v for v, _ in old]
      records.write(k, f"acquire_{r}", samples)
      this_iteration += samples
      summary = self_play.remember(summary, samples, TASK)
      statuses += [s.proposal_status for s in proposers]
    # the summary holds exactly the keys of every valid proposal so far
    everything = _old_earlier_keys(records.earlier(k + 1, "acquire"), TASK)
    assert len(summary["valid_proposals"]) == len(everything)
    assert all(key in self_play.KeySet(summary["valid_proposals"]) for key in everything)
  assert statuses.count("repeat") >= 5 and statuses.count("valid") >= 5


def test_key_set_membership_and_insertion():
  keys = self_play.KeySet()
  assert "x" not in keys and None not in keys
  keys = keys.with_keys(["b", "a", "b", None])
  assert len(keys) == 3 and "a" in keys and None in keys and "c" not in keys
  assert np.all(np.diff(keys.hashes.astype(np.float64)) > 0)   # sorted, unique
  more = keys.with_keys(["c", "a"])
  assert len(more) == 4 and len(keys) == 3 and "c" in more


# ----------------------------------------------------------------------------- replay


class _Counting(RunRecords):
  """RunRecords that counts the files it reads."""

  def __init__(self, workdir):
    super().__init__(workdir)
    self.reads = []

  def read(self, k, stage):
    self.reads.append((k, stage))
    return super().read(k, stage)

  def rows(self, k, name):
    self.reads.append((k, name))
    return super().rows(k, name)


def _old_replay(records, history, k, n, selected):
  """select.replay as before: the last n accepted iterations' select files, re-read."""
  accepted = [row["iteration"] for row in history
              if row["accepted"] and 0 < row["iteration"] < k][-n:]
  seen = {(x.prompt, x.completion) for x in selected}
  out = []
  for x in (x for j in accepted for x in records.read(j, "select")):
    if (x.prompt, x.completion) not in seen:
      seen.add((x.prompt, x.completion))
      out.append(x)
  return out


@pytest.mark.parametrize("n", [1, 3, 50])
def test_replay_pool_gives_what_rereading_gave_reading_each_file_once(n, tmp_path):
  """Twelve scripted iterations (some rolled back, selections that repeat earlier
  ones): every iteration's replayed samples equal the old re-reading's, and each
  select file is read at most once."""
  records, plain = _Counting(str(tmp_path)), RunRecords(str(tmp_path))
  select = dataclasses.replace(settings.select(load_config(TINY, [])), replay=n)
  # what _replay reads of the run's set-up
  s = types.SimpleNamespace(stages=types.SimpleNamespace(select=select), records=records,
                            read_back={})
  state = loop.LoopState(history=[{"iteration": 0, "accepted": True}])
  rng = np.random.default_rng(n)
  for k in range(1, 13):
    selected = [Sample(prompt=f"q{int(i)}", completion=f"a{int(j)}", iteration=k)
                for i, j in rng.integers(0, 6, size=(5, 2))]
    plain.write(k, "select", selected)
    selected = plain.read(k, "select")   # as the loop holds them: as read back
    it = loop.Iteration(k, Ledger(), {}, selected=selected)
    reference = _old_replay(plain, state.history, k, n, selected)
    assert loop._replay(s, state, it) == reference
    assert it.counts.get("replayed", 0) == len(reference)
    state.history.append({"iteration": k, "accepted": bool(k % 4)})
  # each accepted iteration (1-11 but 4 and 8) read once, when it joined the pool
  assert sorted(j for j, _ in records.reads) == [1, 2, 3, 5, 6, 7, 9, 10, 11]
  assert len(s.read_back["select"]) == min(n, 9)


def test_step_rows_read_each_iterations_file_once(tmp_path):
  records = _Counting(str(tmp_path))
  s = types.SimpleNamespace(records=records, read_back={})   # what _step_rows reads
  for k in range(1, 8):
    records.write(k, "steps", [dict(iteration=k, step=i, loss=1.0 / (k + i)) for i in range(3)])
    rows = loop._step_rows(s, k)
    assert rows == [x for j in range(1, k + 1) for x in RunRecords(str(tmp_path)).rows(j, "steps")]
  assert [j for j, _ in records.reads] == list(range(1, 8))


# ----------------------------------------------------------------------------- in the loop


def _propose(text, max_chars=1000):
  """The random tiny model writes no problems: its proposer replies become one-digit
  additions, a function of the reply (as test_self_play's run maps them)."""
  h = sum(map(ord, text or ""))
  return f"What is {h % 10} + {h // 10 % 10}?"


def _self_play_config(iterations):
  return load_config(TINY, [
      "loop.algorithm=self_play", "loop.rl_steps=2", "loop.prompts_per_iteration=4",
      "loop.samples_per_prompt=2", "select.filters=", "self_instruct.max_new_tokens=8",
      f"loop.iterations={iterations}", "curriculum.enabled=true", "log.tensorboard=false",
      "log.plot=false"])


def _saved(workdir, k):
  ckpt = Checkpointer(str(workdir))
  meta, arrays = ckpt.restore_meta(k), ckpt.restore_loop_arrays(k)
  params = [np.asarray(x) for x in jax.tree.leaves(ckpt.restore_arrays(k)["params"])]
  ckpt.close()
  return loop.LoopState.from_checkpoint(meta["loop"], arrays), params


def test_a_run_resumed_from_an_old_format_checkpoint_ends_as_an_uninterrupted_one(
    monkeypatch, tmp_path):
  """Self-play with the curriculum on: iteration 1 saved in the old form (the ledger
  as JSON in the metadata, no loop_state.npz), then resumed by this code for
  iteration 2 (its novelty summary rebuilt from the records, once): the same history,
  weights, ledger and summary as a run that was never interrupted."""
  monkeypatch.setattr(self_instruct, "clean_proposal", _propose)
  quiet = lambda *_: None
  loop.run(_self_play_config(2), str(tmp_path / "reference"), log=quiet)
  old_json, old_arrays = loop.LoopState.to_json, loop.LoopState.arrays
  with monkeypatch.context() as m:
    m.setattr(loop.LoopState, "to_json",
              lambda self: dict(old_json(self), ledger=self.ledger.to_dict()))
    m.setattr(loop.LoopState, "arrays", lambda self: None)
    loop.run(_self_play_config(1), str(tmp_path / "resumed"), log=quiet)
  assert not os.path.exists(tmp_path / "resumed" / "checkpoints" / "1" / LOOP_ARRAYS)
  ckpt = Checkpointer(str(tmp_path / "resumed"))
  assert "ledger" in ckpt.restore_meta(1)["loop"]
  ckpt.close()
  loop.run(_self_play_config(2), str(tmp_path / "resumed"), log=quiet)
  want, want_params = _saved(tmp_path / "reference", 2)
  got, got_params = _saved(tmp_path / "resumed", 2)
  drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"
                        and not k.startswith("peak_rss")} for r in rows]
  assert drop(got.history) == drop(want.history)
  assert got.ledger == want.ledger and len(got.ledger) > 0
  assert (got.summaries["self_play"]["valid_proposals"].tolist()
          == want.summaries["self_play"]["valid_proposals"].tolist() != [])
  for x, y in zip(got_params, want_params):
    np.testing.assert_array_equal(x, y)
