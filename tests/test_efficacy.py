"""benchmarks/efficacy.py: the Wilson interval, the "no measurable gain" rule, the
unknown-name error, and the table written from a real tiny run through the CLI."""

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import efficacy  # noqa: E402


def test_wilson_interval_matches_a_hand_computation():
  # 46 of 100, z = 1.96: centre (0.46 + 1.96^2/200) / (1 + 1.96^2/100),
  # half 1.96 / (1 + 1.96^2/100) * sqrt(0.46 * 0.54 / 100 + 1.96^2 / 40000)
  z = 1.96
  denom = 1 + z * z / 100
  centre = (0.46 + z * z / 200) / denom
  half = z / denom * math.sqrt(0.46 * 0.54 / 100 + z * z / 40000)
  lo, hi = efficacy.wilson_interval(46, 100, z=z)
  assert lo == pytest.approx(centre - half, abs=1e-12)
  assert hi == pytest.approx(centre + half, abs=1e-12)
  # by hand: centre 0.479208 / 1.038416 = 0.46148, half 1.88749 * 0.050794 = 0.09587
  assert (round(lo, 4), round(hi, 4)) == (0.3656, 0.5574)
  # 0 of 100 still has an upper bound above 0 (the normal approximation gives [0, 0])
  lo, hi = efficacy.wilson_interval(0, 100)
  assert lo == 0.0 and hi == pytest.approx(0.0370, abs=1e-4)


def test_gain_inside_the_baseline_interval_is_no_measurable_gain():
  # baseline 0.06 of 100: Wilson [0.028, 0.125]
  assert efficacy.gain_text(0.06, 0.10, 100) == "no measurable gain"
  assert efficacy.gain_text(0.06, 0.06, 100) == "no measurable gain"
  assert efficacy.gain_text(0.06, 0.30, 100) == "+0.24"
  # the same difference over fewer problems is inside the wider interval
  assert efficacy.gain_text(0.05, 0.15, 20) == "no measurable gain"


def _results(path, verdicts):
  """A hand-made records/iter_K/eval_heldout.jsonl: problem i right iff verdicts[i]."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for i, right in enumerate(verdicts):
      f.write(json.dumps({"problem_id": f"p{i}", "reward": float(right)}) + "\n")


def test_paired_gain_is_an_exact_mcnemar_test_on_two_result_files(tmp_path):
  """The issue's example: 0.06 -> 0.13 on 100 problems reads +0.07 whether 7 problems
  went up and none down (p = 2/2^7 = 0.016, a gain) or 9 up and 2 down (p = 0.065,
  none measurable)."""
  base = [True] * 6 + [False] * 94
  for up, down, p, text in [(7, 0, 0.015625, "+0.07 (7 up, 0 down, p=0.016)"),
                            (9, 2, 0.0654296875, "no measurable gain (9 up, 2 down, p=0.065)"),
                            (38, 3, 1.0479197953827679e-08, "+0.07 (38 up, 3 down, p<0.001)")]:
    after = list(base)
    for i in range(down):
      after[i] = False
    for i in range(6, 6 + up):
      after[i] = True
    _results(str(tmp_path / f"{up}" / "records" / "iter_0000" / "eval_heldout.jsonl"), base)
    _results(str(tmp_path / f"{up}" / "records" / "iter_0003" / "eval_heldout.jsonl"), after)
    before = efficacy.read_results(str(tmp_path / f"{up}"), 0)
    final = efficacy.read_results(str(tmp_path / f"{up}"), 3)
    pairs = efficacy.paired(before, final)
    assert pairs == {"up": up, "down": down, "p": pytest.approx(p)}
    assert efficacy.gain_text(0.06, 0.13, 100, pairs) == text
  assert efficacy.read_results(str(tmp_path), 5) is None
  assert efficacy.mcnemar_p(0, 0) == 1.0
  with pytest.raises(ValueError, match="different problems"):
    efficacy.paired(before, final[:-1])


def test_unknown_experiment_name_is_a_one_line_error():
  with pytest.raises(SystemExit) as e:
    efficacy.main(["--only", "quickstart,nope", "--table_only"])
  assert str(e.value).startswith("efficacy: unknown experiment nope; known: quickstart,")
  assert "\n" not in str(e.value)


def test_tiny_run_becomes_a_table_row(tmp_path, capsys):
  """configs/tiny.py through the CLI: the stored row holds what the run printed, the
  table shows it with its plot, and an experiment without a row is 'not yet measured'."""
  experiments = {"tiny": efficacy.Experiment("test paradigm", "configs/tiny.py", (1,)),
                 "other": efficacy.Experiment("never run", "configs/quickstart.py", (0,))}
  dirs = ["--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results"),
          "--table", str(tmp_path / "EFFICACY.md")]
  assert efficacy.main(["--only", "tiny"] + dirs, experiments) == 0

  with open(tmp_path / "runs" / "tiny-seed1" / "summary.json") as f:
    printed = json.load(f)["history"]
  with open(tmp_path / "results" / "tiny-seed1.json") as f:
    row = json.load(f)
  assert row["history"] == printed
  assert row["baseline_pass@1"] == printed[0]["pass@1"]
  assert row["heldout_n"] == 8 and row["seed"] == 1 and row["maj_key"] == "maj@2"
  assert row["iterations_run"] == 2 and row["wall_seconds"] > 0
  assert (tmp_path / "results" / "tiny-seed1.png").stat().st_size > 1000

  table = (tmp_path / "EFFICACY.md").read_text()
  line = next(l for l in table.splitlines() if l.startswith("| tiny |"))
  assert "test paradigm" in line and "(iter " in line and "n=8" in line
  assert "[heldout.png](efficacy/tiny-seed1.png)" in line
  assert "Wilson score interval" in table
  assert table.split("## Not yet measured")[1].strip().startswith("- other (seed 0)")
  # the measured config's own account of its result is quoted under the table
  said = table.split("## What the runs say")[1].split("## Not yet measured")[0]
  assert "- **tiny**: " in said and "other" not in said

  # a second from-scratch run must not silently resume the first
  with pytest.raises(SystemExit, match="already exists"):
    efficacy.main(["--only", "tiny"] + dirs, experiments)

  # a finished run made outside the script is imported from its own files, and the
  # row says its wall time is unknown
  dirs[dirs.index("--results_dir") + 1] = str(tmp_path / "imported")
  assert efficacy.main(["--only", "tiny", "--import_workdir",
                        str(tmp_path / "runs" / "tiny-seed1")] + dirs, experiments) == 0
  with open(tmp_path / "imported" / "tiny-seed1.json") as f:
    imported = json.load(f)
  assert imported["history"] == printed and imported["wall_seconds"] is None
  assert "run outside the script" in efficacy.table_line(imported)
  # the run kept its results per problem: the gain is the paired one, on the test split
  # (the last accepted weights' against the baseline's), validation's beside it
  assert row["paired"] is not None and set(row["paired"]) == {"up", "down", "p"}
  final = [r for r in printed if r["accepted"]][-1]
  assert row["test"]["n"] == 4 and row["test"]["final_iteration"] == final["iteration"]
  assert row["test"]["final"] == final["test_pass@1"]
  assert set(row["test"]["paired"]) == {"up", "down", "p"}
  assert "| test: " in line and " up, " in line and "p=" in line


def test_best_accepted_ignores_rolled_back_iterations():
  """A rolled-back iteration's higher score is not the result; strategies' scores are
  read from the same two rows."""
  history = [
      {"iteration": 0, "pass@1": 0.42, "execution_feedback@2": 0.42,
       "execution_feedback@2_revised": 0.58, "accepted": True, "reason": "baseline"},
      {"iteration": 1, "pass@1": 0.44, "execution_feedback@2": 0.46, "accepted": True,
       "reason": "accepted"},
      {"iteration": 2, "pass@1": 0.60, "execution_feedback@2": 0.62, "accepted": False,
       "reason": "rolled back: exploding update"},
  ]
  config = {"model": "m", "task": {"name": "code:list_ops", "difficulty": 1, "options": {},
                                   "heldout_size": 50},
            "evaluate": {"strategies": "execution_feedback"}}
  exp = efficacy.Experiment("p", "configs/code_rlef.py", (0,))
  row = efficacy.make_row("code_rlef", exp, 0, {"history": history, "stopped": None,
                                                "config": config}, 60.0, False)
  assert (row["best_pass@1"], row["best_iteration"]) == (0.44, 1)
  assert row["iterations_run"] == 2 and row["iterations_accepted"] == 1
  assert row["strategies"] == {"execution_feedback@2": [0.42, 0.46]}
  line = efficacy.table_line(row)
  assert "execution_feedback@2 0.42 -> 0.46" in line and "no measurable gain" in line
  assert "| - |" in line   # no maj@k column value


def test_every_config_is_an_experiment():
  names = {os.path.basename(e.config) for e in efficacy.EXPERIMENTS.values()}
  on_disk = {n for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".py")}
  assert names == on_disk - {"tiny.py"}


def test_table_keeps_the_trial_notes_and_links_them(tmp_path):
  """The hand-written `## Trial notes` tail survives a rewrite of the table, verbatim,
  and the rows, results and missing experiments with a `### NAME` section link to it."""
  experiments = {"tiny": efficacy.Experiment("p", "configs/tiny.py", (0,)),
                 "other": efficacy.Experiment("never run", "configs/quickstart.py", (0,))}
  history = [{"iteration": 0, "pass@1": 0.10, "accepted": True, "reason": "baseline"},
             {"iteration": 1, "pass@1": 0.50, "accepted": True, "reason": "accepted"}]
  config = {"model": "m", "task": {"name": "arithmetic", "difficulty": 1, "options": {},
                                   "heldout_size": 20}, "evaluate": {"strategies": ""}}
  row = efficacy.make_row("tiny", experiments["tiny"], 0, {"history": history,
                          "stopped": None, "config": config}, 60.0, False)
  results, table = str(tmp_path / "results"), tmp_path / "EFFICACY.md"
  efficacy.store_row(row, str(tmp_path), results)
  efficacy.write_table(results, str(table), experiments)
  first = table.read_text()
  assert "\n## Trial notes\n" not in first and "(#tiny)" not in first

  notes = ("## Trial notes\n\nBy hand.\n\n### tiny\n\nA trial: 0.10 -> 0.50.\n\n"
           "### other\n\nTried once, stopped.\n")
  table.write_text(first + "\n" + notes)
  efficacy.write_table(results, str(table), experiments)
  second = table.read_text()
  assert second.endswith("\n" + notes) and second.count("\n## Trial notes\n") == 1
  # the generated part is the first table's but for the links to the notes
  unlinked = (second.removesuffix("\n" + notes).replace("[tiny](#tiny)", "tiny")
              .replace(" ([trial notes](#tiny))", "").replace(" ([trial notes](#other))", ""))
  assert unlinked == first
  assert any(l.startswith("| [tiny](#tiny) |") for l in second.splitlines())
  said = second.split("## What the runs say")[1].split("## Not yet measured")[0]
  assert "- **tiny**: " in said and said.strip().endswith("([trial notes](#tiny))")
  missing = second.split("## Not yet measured")[1].split("## Trial notes")[0]
  assert "- other (seed 0)" in missing and missing.strip().endswith("(#other))")


def test_result_text_is_the_result_paragraph_without_the_pointer_here(tmp_path):
  path = tmp_path / "c.py"
  path.write_text('"""A run.\n\nCommand:   x\nResult:    0.06 -> 0.55, all accepted;\n'
                  '           see benchmarks/EFFICACY.md\n\nWhy its settings are so.\n"""\n')
  assert efficacy.result_text(str(path)) == "0.06 -> 0.55, all accepted"
  # every experiment's config says its result in a `Result:` line
  for exp in efficacy.EXPERIMENTS.values():
    text = efficacy.result_text(exp.config)
    assert text and "EFFICACY.md" not in text, exp.config
