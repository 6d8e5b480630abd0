"""What a run shows and writes: stage lines, progress bars, metrics as JSONL and
TensorBoard events, a PNG plot of held-out scores, and the final summary table.
Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
import sys

import jax
from tqdm.auto import tqdm

from selfimprove_jax.runtime.files import write_json_atomic

def _summary_writer():
  """tensorboardX.SummaryWriter, imported without torch: its writer module imports
  torch (when installed) only to name a type in annotations, 2-3 s of a run's CPU
  start-up (benchmarks/RESULTS.md, "Start-up"); scalars never need it."""
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None   # `import torch` raises ImportError: numpy types instead
  try:
    from tensorboardX import SummaryWriter
  finally:
    if block and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return SummaryWriter


class Reporter:
  """Logging and metric files for one run directory."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, plot: bool = True,
               progress: bool = True, log=print):
    """What to write besides the stage lines and metrics.jsonl (config.log)."""
    self.workdir = workdir
    self.write_tensorboard, self.write_plot, self.show_progress = tensorboard, plot, progress
    self.primary = jax.process_index() == 0
    self._log = log
    self._tb = None

  def log(self, msg: str) -> None:
    if self.primary:
      self._log(msg)

  def stage(self, iteration: int, name: str, summary: str) -> None:
    self.log(f"[iter {iteration}] {name}: {summary}")

  def progress(self, items, desc: str):
    if not (self.primary and self.show_progress):
      return items
    return tqdm(items, desc=desc, leave=False)

  def write_config(self, config: dict) -> None:
    """WORKDIR/config.json: the run's resolved config (every key, overrides applied)."""
    if self.primary:
      write_json_atomic(os.path.join(self.workdir, "config.json"),
                        json.loads(json.dumps(config, default=str)))

  # ------------------------------------------------------------------ per iteration

  def iteration(self, row: dict, history: list, steps: list = ()) -> None:
    """After iteration row['iteration'] is saved: metrics.jsonl from the history, and
    steps.jsonl from every optimizer step so far (`steps`, iteration by iteration, each
    given its global step), both rewritten whole so a resumed run never duplicates or
    loses a line; TensorBoard gets the row and this iteration's steps."""
    if not self.primary:
      return
    steps = self.rewrite(history, steps)
    self._tensorboard(row)
    self._tensorboard_steps([x for x in steps if x["iteration"] == row["iteration"]])
    if self.write_plot:
      plot(history, os.path.join(self.workdir, "heldout.png"))
    decision = "accepted" if row["accepted"] else row["reason"]
    test = f" (test {row['test_pass@1']:.3f})" if "test_pass@1" in row else ""
    self.log(f"[iter {row['iteration']}] validation pass@1 {row['pass@1']:.3f}{test} "
             f"-> {decision}")

  def rewrite(self, history: list, steps: list) -> list:
    """metrics.jsonl and steps.jsonl, rewritten whole from the loop state's history and
    every iteration's step records (a resumed run calls it first, so a row lost to a
    kill after the checkpoint, or a deleted file, comes back); returns the steps with
    their global step."""
    steps = [dict(global_step=i + 1, **x) for i, x in enumerate(steps)]
    if self.primary:
      _write_lines(os.path.join(self.workdir, "metrics.jsonl"), history)
      _write_lines(os.path.join(self.workdir, "steps.jsonl"), steps)
    return steps

  def _writer(self):
    if self._tb is None:
      self._tb = _summary_writer()(os.path.join(self.workdir, "tensorboard"))
    return self._tb

  def _tensorboard(self, row: dict) -> None:
    if not self.write_tensorboard:
      return
    tb = self._writer()
    for key, value in row.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        tb.add_scalar(key.replace("@", "_at_"), value, row["iteration"])
    tb.flush()

  def _tensorboard_steps(self, steps: list) -> None:
    """Each optimizer step's metrics as `step/<name>` at its global step."""
    if not (self.write_tensorboard and steps):
      return
    tb = self._writer()
    for x in steps:
      for key, value in x.items():
        if key not in ("iteration", "global_step", "step") and math.isfinite(value):
          tb.add_scalar(f"step/{key}", value, x["global_step"])
    tb.flush()

  # ------------------------------------------------------------------ end of run

  def finish(self, history: list, stopped, result: dict, parent: dict = None) -> None:
    """The final table and summary.json; `result` is what the run reports (the test
    score of its last accepted weights, evaluate/splits.py); `parent`: the run whose
    kept weights this one started from (its parent_* fields), if any."""
    if not self.primary:
      return
    if parent:
      self.log(f"started from run {parent['parent_run']}@{parent['parent_iteration']} "
               f"({parent['parent_path']})")
    self.log(summary_table(history))
    if stopped:
      self.log(f"stopped early: {stopped}")
    if result:
      self.log(f"result: {result['split']} pass@1 {result['pass@1']:.3f} of the weights of "
               f"iteration {result['iteration']} (validation {result['validation_pass@1']:.3f})")
    write_json_atomic(os.path.join(self.workdir, "summary.json"),
                      {"history": history, "stopped": stopped, "result": result,
                       **({"parent": parent} if parent else {})})
    if self._tb is not None:
      self._tb.close()


def _write_lines(path: str, rows) -> None:
  """JSON lines, written to a temporary file and renamed into place."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for r in rows:
      f.write(json.dumps(r, default=str) + "\n")
  os.replace(tmp, path)


def _maj_key(row: dict):
  return next((k for k in row if k.startswith("maj@")), None)


def summary_table(history: list) -> str:
  """Plain-text table: iteration, validation pass@1 and maj@k, test pass@1, samples
  kept, decision."""
  mk = _maj_key(history[0]) if history else None
  head = ["iter", "pass@1", mk or "maj@k", "test pass@1", "kept", "train pass", "decision"]
  lines = [head]
  for r in history:
    lines.append([str(r["iteration"]), f"{r['pass@1']:.3f}",
                  f"{r[mk]:.3f}" if mk and mk in r else "-",
                  f"{r['test_pass@1']:.3f}" if "test_pass@1" in r else "-",
                  str(r.get("kept", 0)),
                  f"{r['train_pass_rate']:.3f}" if "train_pass_rate" in r else "-",
                  "baseline" if r["iteration"] == 0 else
                  ("accepted" if r["accepted"] else r["reason"])])
  widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
  fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
  return "\n".join([fmt(lines[0]), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines[1:]])


def plot(history: list, path: str) -> None:
  """PNG of validation pass@1 (and maj@k), test and fresh pass@1 per iteration;
  rolled-back iterations marked."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  its = [r["iteration"] for r in history]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot(its, [r["pass@1"] for r in history], "o-", label="validation pass@1 (greedy)")
  mk = _maj_key(history[0]) if history else None
  if mk:
    ax.plot(its, [r.get(mk, float("nan")) for r in history], "s--", label=f"validation {mk}")
  for key, style in (("test_pass@1", "^-"), ("fresh_pass@1", "v:")):
    if any(key in r for r in history):
      ax.plot(its, [r.get(key, float("nan")) for r in history], style,
              label=key.replace("_", " ", 1))
  bad = [r for r in history if not r["accepted"]]
  if bad:
    ax.plot([r["iteration"] for r in bad], [r["pass@1"] for r in bad], "rx", ms=10,
            label="rolled back")
  ax.set_xlabel("iteration")
  ax.set_ylabel("score")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize=8)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)
