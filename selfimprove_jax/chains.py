"""Chains of phases: a run that starts from the kept weights of its parent phase, both
driven by one command (`selfimprove-jax run` calls `run` here for every config).

A config with `parent.config = FILE` (and `model = "parent"`) is a chain's last phase.
`run` first runs FILE's config, with `parent.overrides` applied, as an ordinary run in
WORKDIR/parent, then this config in WORKDIR itself, starting from the parent run's last
accepted weights. A parent may name a parent of its own (WORKDIR/parent/parent), so a
chain has any number of phases, e.g. expert iteration for 4 iterations, then GRPO for 3
(configs/chain_sft_grpo.py).

Why phases are runs and not sections of one loop: every phase is then an ordinary run,
with its own workdir, config, checkpoints, metrics and summary, so it resumes, is
evaluated (`eval --model WORKDIR/parent`) and is compared like any run, and the loop
gains no phase branches: it only reads a model that is a run's workdir (`model` may
name any run's workdir; "parent" names the one this command runs first). Re-running the
command resumes whichever phase was interrupted: a finished phase restores its last
checkpoint and returns at once, an unfinished one continues where it stopped.

Provenance: the child resolves its parent (workdir and iteration) once, when it starts,
and keeps it in its loop state (loop.py, weights/run_dir.py `Parent`), so its rows, its
summary and `eval` name the weights it started from, after any resume. When the child's
task and split sizes are its parent's, both carve the same validation and test problems
(evaluate/splits.py), so the child's baseline repeats the parent's numbers and its gains
are measured on the parent's test split; otherwise one line at start-up says which keys
differ. That is a note, not a refusal: a chain may move to another task on purpose.
"""

from __future__ import annotations

import os

import jax

from selfimprove_jax import config as config_lib
from selfimprove_jax import loop
from selfimprove_jax.errors import UserError
from selfimprove_jax.runtime.checkpoint import foreign_workdir

# The parent phase's workdir, inside its child's (the loop reads model='parent' there).
PARENT_DIR = config_lib.PARENT_MODEL


def _print(msg: str) -> None:
  print(msg, flush=True)


def run(config, workdir: str, override_config: bool = False, log=_print,
        adopt_workdir: bool = False) -> dict:
  """Runs (or resumes) the chain that ends with `config` in `workdir`: its parent
  phases first, each in WORKDIR/parent of its child, then `config` itself (loop.run);
  returns the loop state of the last phase that ran (with `preempted` when a signal
  stopped it)."""
  if not config.parent.config:
    return loop.run(config, workdir, override_config, log, adopt_workdir)
  say = log if jax.process_index() == 0 else (lambda _: None)
  parent = parent_config(config)
  # the user's directory is checked before the parent phase writes into it (the parent's
  # own run checks WORKDIR/parent); the child then adopts it: what it holds besides the
  # run's own files is its parent's workdir
  parent_dir = os.path.join(workdir, PARENT_DIR)
  others = os.path.isdir(workdir) and set(os.listdir(workdir)) - {PARENT_DIR}
  if jax.process_index() == 0 and others and (why := foreign_workdir(workdir, adopt_workdir)):
    raise UserError(why)
  say(f"chain: parent phase {config.parent.config} in {parent_dir}")
  state = run(parent, parent_dir, override_config, log)
  if "preempted" in state:
    return state
  say(f"chain: phase {workdir}, from the kept weights of {parent_dir}")
  return loop.run(config, workdir, override_config, log, adopt_workdir=True)


def parent_config(config):
  """The parent phase's config: `parent.config` loaded with `parent.overrides`."""
  try:
    return config_lib.load_config(config.parent.config, config.parent.overrides)
  except UserError as e:
    raise UserError(f"parent.config={config.parent.config!r}: {e}") from None
