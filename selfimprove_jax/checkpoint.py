"""Per-iteration checkpoints: the one module that talks to Orbax.

A run's workdir holds `checkpoints/<iteration>/` (Orbax: a `state` pytree of arrays
and a `meta` JSON item with the loop state and the resolved config) and
`manifest.json`, which records for each saved iteration a SHA-256 over the files of
its checkpoint, whether the iteration was accepted, and the hashes of the stage
records that produced it. Orbax makes a save atomic (it writes to a temporary
directory and renames it) but does not notice bytes flipped later on disk; the
manifest hash does, and `restore_latest` then falls back to the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

MANIFEST = "manifest.json"
FAULT_ENV = "SELFIMPROVE_JAX_FAULT"


def fault_point(name: str) -> None:
  """Crash-test hook: when the environment variable SELFIMPROVE_JAX_FAULT equals
  `name`, the process kills itself with SIGKILL right here (the resumption tests use
  it to interrupt a run at a chosen moment). A no-op otherwise."""
  if os.environ.get(FAULT_ENV) == name:
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def hash_path(path: str) -> str:
  """SHA-256 over a file, or over every file under a directory (names and bytes)."""
  h = hashlib.sha256()
  if os.path.isfile(path):
    files = [path]
    root = os.path.dirname(path)
  else:
    root = path
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
  for f in files:
    h.update(os.path.relpath(f, root).encode())
    with open(f, "rb") as fh:
      for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()


def write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


class Checkpointer:
  """Saves and restores iteration checkpoints under `workdir/checkpoints`."""

  def __init__(self, workdir: str, is_primary: bool = True):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.is_primary = is_primary
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))

  # ------------------------------------------------------------------ manifest

  @property
  def manifest_path(self) -> str:
    return os.path.join(self.workdir, MANIFEST)

  def manifest(self) -> dict:
    return read_json(self.manifest_path, {"checkpoints": {}})

  def _update_manifest(self, iteration: int, entry: dict) -> None:
    if not self.is_primary:
      return
    m = self.manifest()
    m["checkpoints"][str(iteration)] = entry
    write_json_atomic(self.manifest_path, m)

  # ------------------------------------------------------------------ save / restore

  def save(self, iteration: int, state: Any, meta: dict, accepted: bool,
           records: Optional[dict] = None) -> str:
    """Saves `state` (pytree of arrays) and `meta` (JSON) as iteration `iteration`;
    returns the checkpoint's content hash ("" on processes other than 0). Every
    process calls it: Orbax writes each process's shards."""
    if iteration in self._manager.all_steps():
      # A checkpoint left by an interrupted run of this very iteration: replace it.
      self._manager.delete(iteration)
    self._manager.save(iteration, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()
    fault_point("checkpoint")
    if not self.is_primary:   # the manifest is process 0's; no need to read it all back
      return ""
    digest = hash_path(self.step_dir(iteration))
    self._update_manifest(iteration, {"sha256": digest, "accepted": bool(accepted),
                                      "records": records or {}})
    return digest

  def step_dir(self, iteration: int) -> str:
    return os.path.join(self.directory, str(iteration))

  def steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def verify(self, iteration: int) -> Optional[str]:
    """None when the checkpoint matches its manifest hash, else what is wrong."""
    entry = self.manifest()["checkpoints"].get(str(iteration))
    if entry is None:
      return "not in the manifest (the run stopped between save and manifest update)"
    actual = hash_path(self.step_dir(iteration))
    if actual != entry["sha256"]:
      return f"content hash mismatch (manifest {entry['sha256'][:12]}, on disk {actual[:12]})"
    return None

  def restore(self, iteration: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores iteration `iteration` into the shapes/shardings of `abstract_state`."""
    out = self._manager.restore(iteration, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_arrays(self, iteration: int) -> Any:
    """The saved state as host numpy arrays, without a target (tools and tests). Reads
    a checkpoint of any topology: one written by several processes names devices this
    process does not have, so every array is restored onto one local device."""
    tree = ocp.PyTreeCheckpointer().metadata(
        os.path.join(self.step_dir(iteration), "state")).item_metadata.tree
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=one, global_shape=x.shape,
                                                       dtype=x.dtype), tree)
    out = self._manager.restore(iteration, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(restore_args=args), meta=ocp.args.JsonRestore()))
    return jax.tree.map(np.asarray, out["state"])

  def restore_meta(self, iteration: int) -> dict:
    with open(os.path.join(self.step_dir(iteration), "meta", "metadata")) as f:
      return json.load(f)

  def latest_good(self, log=print) -> Optional[int]:
    """Newest iteration whose checkpoint verifies; reports and skips bad ones."""
    for it in reversed(self.steps()):
      problem = self.verify(it)
      if problem is None:
        return it
      log(f"checkpoint {self.step_dir(it)}: {problem}; falling back to an earlier one")
    return None

  def accepted(self) -> list[int]:
    return sorted(int(k) for k, v in self.manifest()["checkpoints"].items() if v["accepted"])

  def prune(self, keep: set[int]) -> None:
    """Deletes checkpoints not in `keep` (the loop keeps accepted ones and the latest).
    Every process calls it with the same `keep`: Orbax deletes on process 0 and then
    waits for all processes."""
    for it in self.steps():
      if it not in keep:
        self._manager.delete(it)

  def close(self) -> None:
    self._manager.close()


def remove_tree(path: str) -> None:
  shutil.rmtree(path, ignore_errors=True)
