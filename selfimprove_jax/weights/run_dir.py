"""A run's workdir as a model: `DIR` (its last accepted, verified checkpoint) or `DIR@K`
(iteration K). The base model named in the run's saved config supplies the
architecture and tokenizer; the checkpoint supplies the weights.

A run whose own model is a run's workdir has a parent (`Parent`): the run and the
iteration whose kept weights it started from, resolved once when it starts and kept in
its loop state, so a resumed run (and anything that loads its checkpoints) reads the
same parent weights even after the parent run went on (chains.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Optional

import jax
import ml_collections

from selfimprove_jax.errors import UserError
from selfimprove_jax.model import lora as lora_lib

# runtime.checkpoint (and with it Orbax, 0.3-0.6 s of imports) is imported where a run
# directory is read: a spec that names no directory never needs it
_AT = re.compile(r"^(?P<dir>.+)@(?P<it>\d+)$")


def parse_run_spec(spec: str) -> Optional[tuple[str, Optional[int]]]:
  """(workdir, iteration or None) when `spec` names a run's workdir, else None."""
  m = _AT.match(spec)
  if not m and not os.path.isdir(spec):
    return None   # a preset, a file or a Hub id: no run, and no Orbax import
  from selfimprove_jax.runtime.checkpoint import ENTRIES, MANIFEST, is_run_dir
  if is_run_dir(spec):   # a run whose own name has '@' ("runs/exp@1") is that run
    return spec, None
  workdir, it = (m["dir"], int(m["it"])) if m else (spec, None)
  if is_run_dir(workdir):
    return workdir, it
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise UserError(f"{workdir} looks like a run directory (it has checkpoints/) but has "
                    f"neither {MANIFEST} nor {ENTRIES}/ to verify them with")
  if m:
    raise UserError(f"{workdir} is not a run directory (no {MANIFEST}); 'DIR@K' names "
                    f"iteration K of a run")
  return None


@dataclasses.dataclass(frozen=True)
class Parent:
  """The run a run started from: its workdir as the config names it, the same path
  resolved (absolute), and the iteration whose kept weights it took."""
  run: str
  path: str
  iteration: int

  @property
  def spec(self) -> str:
    """The model spec of exactly those weights."""
    return f"{self.run}@{self.iteration}"

  def row(self) -> dict:
    """The fields every metrics row and the loop state carry."""
    return {"parent_run": self.run, "parent_path": self.path,
            "parent_iteration": self.iteration}

  @classmethod
  def from_row(cls, row: Optional[dict]) -> Optional["Parent"]:
    return None if not row else cls(row["parent_run"], row["parent_path"],
                                     row["parent_iteration"])


def parent_of(spec: str, kept: Optional[dict] = None) -> Optional[Parent]:
  """The parent of a run whose model is `spec` (None when `spec` names no run): `kept`,
  the parent fields of the run's own loop state, once it has started; else `spec`
  resolved now (`DIR`: its newest accepted checkpoint that verifies; `DIR@K`)."""
  if kept:
    return Parent.from_row(kept)
  run = parse_run_spec(spec)
  if run is None:
    return None
  parent_dir, iteration = run
  if iteration is None:
    from selfimprove_jax.runtime.checkpoint import Checkpointer
    ckpt = Checkpointer(parent_dir, log=lambda _: None, read_only=True)
    try:
      iteration = ckpt.latest_good(only_accepted=True)
    finally:
      ckpt.close()
    if iteration is None:
      raise UserError(f"model={spec!r}: run {parent_dir} has no verified accepted checkpoint")
  return Parent(parent_dir, os.path.abspath(parent_dir), iteration)


def saved_meta(workdir: str, iteration: Optional[int] = None) -> dict:
  """The config and loop state ({"config", "loop"}) a run saved with the checkpoint
  `load_run` loads: iteration `iteration`, else the newest accepted one that verifies
  (a corrupt newest checkpoint is passed over here as it is there, so eval's settings
  are the loaded weights')."""
  from selfimprove_jax.runtime.checkpoint import Checkpointer
  ckpt = Checkpointer(workdir, log=lambda _: None, read_only=True)
  try:
    steps = ckpt.steps()
    if iteration is None:
      iteration = ckpt.latest_good(only_accepted=True)
      if iteration is None:
        raise UserError(f"run {workdir} has no verified accepted checkpoint to read its "
                        f"config from")
    elif iteration not in steps:
      raise UserError(f"run {workdir} has no checkpoint for iteration {iteration} "
                      f"(have {steps})")
    elif (problem := ckpt.verify(iteration)) is not None:
      raise UserError(f"checkpoint {ckpt.step_dir(iteration)}: {problem}")
    return ckpt.restore_meta(iteration)
  finally:
    ckpt.close()


def saved_config(workdir: str, iteration: Optional[int] = None) -> dict:
  """The config of `saved_meta`."""
  return saved_meta(workdir, iteration)["config"]


def _note(msg: str) -> None:
  print(f"selfimprove-jax: note: {msg}", file=sys.stderr, flush=True)


def abstract_weights(params, dtype=jax.numpy.float32):
  """ShapeDtypeStructs (with shardings) of `params` as checkpoints hold them: fp32
  master weights."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding),
                      params)


@dataclasses.dataclass(frozen=True)
class RunWeights:
  """A run checkpoint's weights as trained: the base model (a LoadedModel of the run's
  config.model), the LoRA config (None for full fine-tuning) and the trained tree
  (adapters under LoRA, else the full params)."""
  base: Any
  lora: Optional[lora_lib.LoraConfig]
  trained: Any
  source: str
  base_spec: str


def load_run(workdir: str, iteration: Optional[int], load_base, mesh, dtype=None):
  """LoadedModel-like tuple (params, config, tokenizer, source) from a run checkpoint
  (`restore_run`), LoRA adapters merged into the base."""
  run = restore_run(workdir, iteration, load_base, mesh, dtype)
  params = lora_lib.model_params_fn(run.base.params, run.lora)(run.trained)
  return params, run.base.config, run.base.tokenizer, run.source


def restore_run(workdir: str, iteration: Optional[int], load_base, mesh,
                dtype=None) -> RunWeights:
  """The weights of a run checkpoint, unmerged. Without an iteration: the newest
  accepted checkpoint that verifies; when that is not the newest accepted one, a note
  on stderr says which is used instead."""
  from selfimprove_jax.runtime.checkpoint import Checkpointer
  ckpt = Checkpointer(workdir, log=_note, read_only=True)
  try:
    if iteration is None:
      iteration = ckpt.latest_good(only_accepted=True)
      if iteration is None:
        raise UserError(f"run {workdir} has no verified accepted checkpoint")
      newest = max(int(k) for k, e in ckpt.manifest()["checkpoints"].items() if e["accepted"])
      if iteration != newest:
        _note(f"using {workdir}@{iteration}, the newest accepted checkpoint that verifies")
    elif iteration not in ckpt.steps():
      raise UserError(f"run {workdir} has no checkpoint for iteration {iteration} "
                      f"(have {ckpt.steps()})")
    elif (problem := ckpt.verify(iteration)) is not None:
      raise UserError(f"checkpoint {ckpt.step_dir(iteration)}: {problem}")
    meta = ckpt.restore_meta(iteration)
    saved = meta["config"]
    # a run started from another run's weights: exactly the parent weights it started
    # from (its loop state's), not what that run keeps now
    parent = Parent.from_row(meta.get("loop", {}).get("parent"))
    base_spec = parent.spec if parent else saved["model"]
    base = load_base(base_spec, mesh=mesh, dtype=dtype or saved["dtype"],
                     check_finite=False)
    # A LoRA run's checkpoints hold adapters; the saved model spec is their base.
    lora = lora_lib.from_config(ml_collections.ConfigDict(saved["lora"])) \
        if saved.get("lora") else None
    abstract = (abstract_weights(base.params) if lora is None else
                lora_lib.abstract_sharded_lora(base.config, lora, mesh))
    trained, _ = ckpt.restore_params(iteration, abstract)
  finally:
    ckpt.close()
  return RunWeights(base=base, lora=lora, trained=trained, source=f"{workdir}@{iteration}",
                    base_spec=base_spec)
