"""Stage records on disk (records.py, stage_cache.py): Samples as Parquet read back
bit-exact, the same samples give the same bytes, a JSONL stage file of an older run
still loads and is reused, a corrupt Parquet file means the stage runs again (one log
line), process 0 alone writes, a realistic acquisition costs at most 6 bytes a token,
and `selfimprove-jax records export` writes the JSONL form."""

import dataclasses
import json
import os
import sys
import time

import numpy as np
import pytest

from selfimprove_jax import cli, records, stage_cache
from selfimprove_jax.records import Sample
from selfimprove_jax.runtime import distributed
from selfimprove_jax.runtime.files import hash_path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import records_size  # noqa: E402

# a line of acquire.jsonl as the version before Parquet wrote it (a real run's first
# record, its prompt ids cut short); no optional field but `reference`
OLD_LINE = ('{"problem_id": "ffbbfa40a4b7d412", "prompt": "What is 81 - 75? Answer with just '
            'the number.", "reference": "6", "prompt_tokens": [1, 9690, 198, 2683], '
            '"completion": "1.8", "completion_tokens": [1348, 4119, 2], "logprobs": '
            '[-3.5928573608398438, -2.1537342071533203, -0.44887351989746094], "reward": 0.0, '
            '"finish_reason": "eos", "num_tokens": 3, "sample_index": 0, "iteration": 1, '
            '"verifier_status": "ok", "verifier_detail": ""}\n')


def _full_sample(**changes) -> Sample:
  """A Sample with every field set (none left None), unicode text included."""
  lps = np.float32([-0.0, -1e-7, -2.5, -13.75, -3.4028235e38]).tolist()
  s = Sample(
      problem_id="p-ü", prompt="Solve: 2·3 = ? ✓ 日本語", reference="6",
      prompt_tokens=[1, 2, 3], completion="6 🎉\nDone", completion_tokens=[7, 8, 9, 10, 11],
      logprobs=lps, reward=0.75, finish_reason="stop", num_tokens=5, sample_index=3,
      iteration=2, verifier_status="timeout", verifier_detail="took 5 s", judge_score=2.5,
      judge_reply="Score: 2.5 — fine", verifier_reward=1.0, refined=True, vote_share=0.625,
      majority_answer="6", refine_rounds=2, rationalized=False, role="solver",
      proposal="What is 2·3?", proposal_status="valid", proposal_id="prop-1",
      solver_pass_rate=0.5, answer="6", pseudo_label="6", action_mask=[1, 1, 0, 0, 1],
      turns=[{"text": "call", "tokens": [7, 8], "reward": 0.5, "tool_call": True,
              "observation": "→ 6", "status": "ok"}], episode_end="done")
  return s.replace(**changes)


def _bits(values) -> list:
  return np.asarray(values, np.float64).view(np.uint64).tolist()


def test_every_field_round_trips_bit_exact(tmp_path):
  full = _full_sample()
  assert all(getattr(full, f.name) is not None for f in dataclasses.fields(Sample))
  rows = [full,
          _full_sample(prompt_tokens=[], completion_tokens=[], logprobs=[], completion="",
                       action_mask=[], turns=[]),   # empty lists stay empty lists
          Sample(problem_id="q", prompt="x", prompt_tokens=[1, 2, 3]),   # optional unset
          _full_sample(sample_index=4),   # the same prompt ids as the row above
          Sample(problem_id="q", prompt_tokens=[4, 5], logprobs=[-0.5])]
  path = str(tmp_path / "acquire.parquet")
  records.write_records(path, rows)
  back = records.read_records(path)
  assert back == rows
  for a, b in zip(back, rows):
    assert _bits(a.logprobs) == _bits(b.logprobs)   # -0.0 keeps its sign, float32 exact
  assert back[3].prompt_tokens is not back[2].prompt_tokens   # stored once, own lists
  assert back[2].judge_score is None and back[2].turns is None and back[2].reference is None


def test_logprobs_float32_cannot_hold_are_kept_as_float64(tmp_path):
  rows = [Sample(logprobs=[-0.1, -1 / 3]), Sample(logprobs=[-2.0])]
  path = str(tmp_path / "select.parquet")
  records.write_records(path, rows)
  back = records.read_records(path)
  assert _bits(back[0].logprobs) == _bits([-0.1, -1 / 3])
  import pyarrow.parquet as pq
  assert str(pq.read_schema(path).field("logprobs").type) == "list<element: double>"
  records.write_records(path, [Sample(logprobs=np.float32([-0.1]).tolist())])
  assert str(pq.read_schema(path).field("logprobs").type) == "list<element: float>"


def test_same_samples_same_bytes_and_digest(tmp_path):
  rows = records_size.realistic_samples(prompts=3, samples=2, completion_tokens=32)
  first = records.encode_records(rows)
  time.sleep(1.1)   # a timestamp in the file would show
  assert records.encode_records([s.replace() for s in rows]) == first
  path = str(tmp_path / "acquire.parquet")
  digest = records.write_records(path, rows)
  assert digest == hash_path(path) == records.records_digest(path, rows)
  assert records.records_digest(path, rows[:-1]) != digest
  import pyarrow.parquet as pq
  meta = pq.read_metadata(path).metadata
  assert set(meta) == {b"ARROW:schema", b"selfimprove_jax.records"}


def test_a_realistic_acquisition_is_at_most_6_bytes_a_token(tmp_path):
  rows = records_size.realistic_samples(prompts=64, samples=8, prompt_tokens=100,
                                        completion_tokens=256)
  tokens = sum(len(s.prompt_tokens) + len(s.completion_tokens) for s in rows)
  path = str(tmp_path / "acquire.parquet")
  records.write_records(path, rows)
  per_token = os.path.getsize(path) / tokens
  jsonl = str(tmp_path / "acquire.jsonl")
  records.write_records(jsonl, rows)
  assert per_token <= 6.0, per_token
  assert os.path.getsize(jsonl) / tokens > 3 * per_token   # what JSONL spent
  assert records.read_records(path) == rows


def _stage(tmp_path, rows, log):
  """Runs stage 'acquire' through the cache; returns (rows, hash, from disk, runs)."""
  runs = []
  def run():
    runs.append(1)
    return rows
  out = stage_cache.cached(str(tmp_path), "acquire", run, 1, log.append)
  return (*out, len(runs))


def test_an_old_jsonl_stage_file_loads_and_is_reused(tmp_path):
  path = tmp_path / "records" / "iter_0001" / "acquire.jsonl"
  os.makedirs(path.parent)
  path.write_text(OLD_LINE)
  with open(path.parent / "stages.json", "w") as f:
    json.dump({"acquire": hash_path(str(path))}, f)
  log = []
  rows, digest, cached, runs = _stage(path.parent, None, log)
  assert cached and runs == 0 and not log
  assert rows == [Sample.from_json(json.loads(OLD_LINE))] and digest == hash_path(str(path))
  assert rows[0].logprobs[0] == -3.5928573608398438
  assert not os.path.exists(path.parent / "acquire.parquet")   # left as it was
  assert stage_cache.RunRecords(str(tmp_path)).read(1, "acquire") == rows
  assert stage_cache.RunRecords(str(tmp_path)).earlier(2, "acquire") == rows


def test_a_new_stage_replaces_an_old_runs_file_of_the_other_form(tmp_path):
  (tmp_path / "acquire.jsonl").write_text(OLD_LINE)   # not in stages.json: not finished
  rows = [_full_sample()]
  log = []
  got, digest, cached, runs = _stage(tmp_path, rows, log)
  assert not cached and runs == 1 and got == rows and not log
  assert sorted(os.listdir(tmp_path)) == ["acquire.parquet", "stages.json"]
  assert digest == hash_path(str(tmp_path / "acquire.parquet"))
  got, _, cached, runs = _stage(tmp_path, None, log)
  assert cached and runs == 0 and got == rows and not log


@pytest.mark.parametrize("damage", ["flip", "truncate", "replace"])
def test_a_corrupt_parquet_stage_runs_again_with_one_log_line(tmp_path, damage):
  rows = records_size.realistic_samples(prompts=2, samples=2, completion_tokens=16)
  log = []
  _, digest, cached, _ = _stage(tmp_path, rows, log)
  assert not cached
  path = tmp_path / "acquire.parquet"
  data = bytearray(path.read_bytes())
  if damage == "flip":
    data[len(data) // 2] ^= 0xFF
  elif damage == "truncate":
    data = data[:len(data) // 2]
  else:   # a readable Parquet file, with other samples
    data = records.encode_records(rows[:1])
  path.write_bytes(bytes(data))
  got, again, cached, runs = _stage(tmp_path, rows, log)
  assert not cached and runs == 1 and got == rows and again == digest
  assert len(log) == 1 and str(path) in log[0] and "running the stage again" in log[0]
  assert hash_path(str(path)) == digest   # rewritten
  path.unlink()   # gone while stages.json lists it
  got, _, cached, runs = _stage(tmp_path, rows, log)
  assert not cached and runs == 1 and len(log) == 2 and "is missing" in log[1]


def test_an_unreadable_verified_file_runs_again(tmp_path):
  """A file whose hash stages.json holds but that this version cannot read (a field it
  does not know, or not its Parquet) is refused with one line and run again."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  path = str(tmp_path / "acquire.parquet")
  pq.write_table(pa.table({"problem_id": ["p"], "novel_field": [1]}), path)
  with pytest.raises(ValueError, match="not a records file"):
    records.read_records(path)
  table = pa.table({"problem_id": ["p"], "novel_field": [1]}).replace_schema_metadata(
      {"selfimprove_jax.records": "1"})
  pq.write_table(table, path)
  with pytest.raises(ValueError, match="unknown record field 'novel_field'"):
    records.read_records(path)
  with open(tmp_path / "stages.json", "w") as f:
    json.dump({"acquire": hash_path(path)}, f)
  log = []
  got, _, cached, runs = _stage(tmp_path, [Sample(problem_id="p")], log)
  assert not cached and runs == 1 and len(log) == 1 and "novel_field" in log[0]


def test_only_process_0_writes_and_all_get_the_hash(tmp_path, monkeypatch):
  rows = [_full_sample(), Sample(problem_id="q")]
  steps = [{"iteration": 1, "loss": 0.5}]
  primary = (stage_cache.write(str(tmp_path / "a"), "select", rows),
             stage_cache.write(str(tmp_path / "a"), "steps", steps))
  monkeypatch.setattr(distributed, "is_primary", lambda: False)
  other = (stage_cache.write(str(tmp_path / "b"), "select", rows),
           stage_cache.write(str(tmp_path / "b"), "steps", steps))
  assert other == primary
  assert not os.path.exists(tmp_path / "b")
  assert sorted(os.listdir(tmp_path / "a")) == ["select.parquet", "steps.jsonl"]


def test_plain_rows_are_jsonl_and_no_rows_an_empty_parquet(tmp_path):
  run = stage_cache.RunRecords(str(tmp_path))
  run.write(1, "steps", [{"iteration": 1, "loss": 0.25}])
  run.write(1, "select", [])
  run.write(2, "steps", [])
  assert sorted(os.listdir(run.iteration_dir(1))) == ["select.parquet", "steps.jsonl"]
  assert run.rows(1, "steps") == [{"iteration": 1, "loss": 0.25}]
  assert run.read(1, "select") == [] and run.rows(2, "steps") == []
  log = []
  for samples in (True, False):   # an empty stage is reused whatever its rows would be
    got = stage_cache.cached(str(tmp_path / str(samples)), "eval_test", lambda: [], 1,
                             log.append, samples=samples)
    again = stage_cache.cached(str(tmp_path / str(samples)), "eval_test", None, 1,
                               log.append, samples=samples)
    assert got[:2] == again[:2] and got[0] == [] and again[2] and not log


def test_records_export_writes_jsonl(tmp_path, capsys):
  workdir = tmp_path / "run"
  run = stage_cache.RunRecords(str(workdir))
  rows = [_full_sample(), Sample(problem_id="q", prompt_tokens=[1, 2, 3])]
  run.cached(1, "acquire", lambda: rows, print)
  run.write(1, "select", rows[1:])
  run.write(2, "eval_test", [{"id": "p", "correct": True}])
  old = os.path.join(run.iteration_dir(2), "acquire.jsonl")   # an older run's form
  with open(old, "w") as f:
    f.write(OLD_LINE)
  assert cli.main(["records", "export", str(workdir)]) == 0
  out = workdir / "records_jsonl"
  assert sorted(os.path.relpath(os.path.join(r, n), out) for r, _, ns in os.walk(out)
                for n in ns) == ["iter_0001/acquire.jsonl", "iter_0001/select.jsonl",
                                 "iter_0002/acquire.jsonl", "iter_0002/eval_test.jsonl"]
  lines = (out / "iter_0001" / "acquire.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [s.to_json() for s in rows]
  assert (out / "iter_0002" / "acquire.jsonl").read_text() == OLD_LINE
  assert records.read_jsonl(str(out / "iter_0002" / "eval_test.jsonl")) == [
      {"id": "p", "correct": True}]
  assert "wrote 4 files" in capsys.readouterr().out
  # a second export needs --force; the run's own files are untouched
  assert cli.main(["records", "export", str(workdir)]) == 2
  assert cli.main(["records", "export", str(workdir), "--out", str(out), "--force"]) == 0
  assert run.read(1, "acquire") == rows
