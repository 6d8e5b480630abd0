"""benchmarks/host_overhead.py: its scripted iteration (the loop's stage functions with a
scripted sampler behind the real ModelPolicy) runs every stage at a small size, on
arithmetic and on a jsonl file, and each stage made what it should: the verifier read
every scripted answer as the script meant it, the filters kept right answers only, the
batches cover the kept samples for the configured epochs, the records were written,
hashed and read back as a finished stage. Counts, not timings (the benchmark measures
those)."""

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import host_overhead as bench  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
  return bench.load_tokenizer()


@pytest.fixture(scope="module")
def vocab(tokenizer):
  return bench.plain_ids(tokenizer)


@pytest.mark.parametrize("name", ["arithmetic", "jsonl"])
def test_scripted_iteration_runs_every_stage(name, tmp_path, tokenizer, vocab):
  shape = bench.Shape(samples=200)
  r = bench.iteration(name, shape, str(tmp_path), tokenizer, vocab)
  c = r.counts
  assert (c["prompts"], r.samples, c["acquired"], c["resumed"]) == (25, 200, 200, 200)
  # 30% drawn right, less the few cut off before their answer; the verifier agrees
  assert c["right"] == c["intended"]
  assert 0.15 * 200 < c["right"] < 0.45 * 200
  # default filters: correct, dedup, max_length; sft batches of 16 over 2 epochs
  assert 0 < c["selected"] <= c["right"]
  assert c["batches"] == 2 * math.ceil(c["selected"] / 16)
  assert c["files"] >= 2 and c["bytes"] > 200 * 256   # acquire and select records
  assert 200 * 200 < r.tokens < 200 * shape.max_new
  assert set(r.seconds) == set(r.cpu) == set(bench.STAGES)
  assert all(s > 0 for s in r.seconds.values()), r.seconds
  assert r.workers == 0   # neither verifier is sandboxed
  # the iteration wrote only under its work dir
  assert os.path.isdir(tmp_path / "records")


def test_scripted_completions_end_as_the_task_reads_them(tokenizer, vocab):
  """A drawn completion decodes to random text that ends in the scripted answer, or is
  cut off at max_new with no answer; its ids are in the tokenizer's vocabulary."""
  task = bench.get_task("arithmetic")
  problems = task.train_problems(0, 4)
  sampler = bench.ScriptedSampler(tokenizer, vocab)
  sampler.draw(problems, "number", bench.Shape(samples=32, right=1.0, sd_tokens=200))
  for p, group in zip(problems, sampler.completions):
    for c in group:
      assert len(c.tokens) == len(c.logprobs) and (c.logprobs < 0).all()
      assert int(c.tokens.max()) < len(tokenizer)
      text = tokenizer.decode(c.content_tokens.tolist(), skip_special_tokens=True)
      if c.finish_reason == "length":
        assert len(c.tokens) == 336 and "####" not in text
      else:
        assert text.endswith(f"#### {p.reference}") and task.score(p, text) == 1.0
  assert sampler.intended == sum(c.finish_reason == "eos" for g in sampler.completions
                                 for c in g)


def test_report_rows_and_linearity():
  seconds = dict.fromkeys(bench.STAGES, 0.1)
  small = bench.Result("arithmetic", 1000, seconds, seconds, {}, 256_000)
  cpu = {s: 0.5 for s in bench.STAGES}
  large = bench.Result("arithmetic", 10000, {s: 1.0 for s in bench.STAGES}, cpu, {},
                       2_560_000)
  assert large.host == pytest.approx(7.0)   # the iteration's stages: resume apart
  assert large.generation == pytest.approx(2_560_000 / bench.H100_TOKENS_PER_S)
  assert bench.row(large).startswith("| arithmetic | 10,000 | 1.00 |")
  assert "| 700 |" in bench.row(large)   # us per sample
  assert bench.row(large).endswith("| 1.00 | 1.00 |")   # hash, resume read
  assert bench.row(large, "cpu").startswith("| arithmetic | 10,000 | 0.50 |")
  assert "| 350 |" in bench.row(large, "cpu")
  (line,) = bench.linearity([large, small])
  assert "10.00x for 10x the samples (linearity 1.00; CPU 0.50)" in line


def test_unknown_task_is_one_line(tmp_path):
  with pytest.raises(SystemExit, match="--tasks: unknown task 'chess'; known: arithmetic"):
    bench.task_spec("chess", str(tmp_path))
