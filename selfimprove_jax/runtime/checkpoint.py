"""Per-iteration checkpoints: the one module that talks to Orbax.

A run's workdir holds `checkpoints/<iteration>/` (Orbax: a `state` pytree of arrays
and a `meta` JSON item with the loop state and the resolved config; beside them
`loop_state.npz`, the parts of the loop state that grow with the run, such as the
difficulty ledger, as plain arrays) and `manifest.json`, which records for each saved
iteration a SHA-256 over the files of its checkpoint, whether the iteration was
accepted, and the hashes of the stage records that produced it. Orbax makes a save
atomic (it writes to a temporary directory and renames it) but does not notice bytes
flipped later on disk; the manifest hash does, and `latest_good` then falls back to
the previous good one. Each manifest entry is also written alone to
`manifest.d/<iteration>.json`, so a lost or corrupt manifest is rebuilt from the
checkpoints that verify against them. Hashing reads only regular files inside the
workdir (files.py): a checkpoint file swapped for a symlink to a device fails
verification instead of hanging.

Hashing is parallel (files.hash_tree), and an entry keeps each file's hash with the
size, mtime_ns and inode it had when this machine hashed it. Verify trusts a file whose
three fields still match, and whose recorded mtime is older than the entry file by
RACY_NS, without reading it (see `verify`); SELFIMPROVE_JAX_VERIFY=full reads every
file. Entries written before this (no "files") are verified by content, as before.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import threading
import zipfile
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from selfimprove_jax.errors import UserError
from selfimprove_jax.runtime.files import (HASH_FORMAT, LOCK_FILE, UnreadableFile, hash_path,
                                           hash_tree, open_regular, read_json, tree_bytes,
                                           tree_digest, write_atomic, write_json_atomic)

MANIFEST = "manifest.json"
# The loop state's arrays (the ledger, the paradigms' running summaries), written by
# process 0 into the step directory after Orbax's save and before the hash: the
# manifest entry that commits the checkpoint covers it like Orbax's own files
LOOP_ARRAYS = "loop_state.npz"
# One file per saved checkpoint with the same entry as the manifest: if manifest.json
# is lost or corrupt, it is rebuilt from the entries whose checkpoints still verify.
ENTRIES = "manifest.d"
FAULT_ENV = "SELFIMPROVE_JAX_FAULT"
# "full": verify reads every checkpoint file, trusting no recorded stat
VERIFY_ENV = "SELFIMPROVE_JAX_VERIFY"
# A file modified within one timestamp tick of being hashed can keep its mtime (ext4
# stamps with a jiffy-coarse clock; ext3 and HFS+ with whole seconds, FAT with two), so
# a file whose recorded mtime is this close to the entry file's mtime (written right
# after hashing) is never trusted: files written in the last 2 s before their hash
# finished are read on every verify (a small checkpoint; a large one is hashed for
# longer than that on this 2-core machine).
RACY_NS = 2_000_000_000
_NOT_IN_MANIFEST = "not in the manifest (the run stopped between save and manifest update)"


# What a run writes at the top of its workdir: in a directory a user adopts as a
# workdir, none of these may exist already (they would be replaced)
RUN_FILES = (MANIFEST, ENTRIES, "checkpoints", "records", "config.json", "metrics.jsonl",
             "steps.jsonl", "summary.json", "heldout.png", "tensorboard")
# Orbax's marker of a finished save inside checkpoints/<step>/
_ORBAX_MARKER = "_CHECKPOINT_METADATA"


def is_run_dir(workdir: str) -> bool:
  """True when `workdir` was written by a run: it has manifest.d/ or a manifest.json
  that reads as a checkpoint manifest (a user's own manifest.json does not count)."""
  if os.path.isdir(os.path.join(workdir, ENTRIES)) and not os.path.islink(
      os.path.join(workdir, ENTRIES)):
    return True
  try:
    m = read_json(os.path.join(workdir, MANIFEST), root=workdir)
  except (UnreadableFile, OSError):
    return False
  return isinstance(m, dict) and isinstance(m.get("checkpoints"), dict)


def foreign_workdir(workdir: str, adopt: bool = False) -> Optional[str]:
  """Why a run may not write into `workdir` (None when it may): it is not empty and
  not a run directory; or, with `adopt`, it holds files with the names of a run's own
  (`RUN_FILES`), which the run would replace. A missing or empty directory, or one
  holding only a lock, is a new run's."""
  if not os.path.isdir(workdir) or is_run_dir(workdir):
    return None
  names = sorted(n for n in os.listdir(workdir) if n != LOCK_FILE)
  if not names:
    return None
  if not adopt:
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return (f"--workdir {workdir} is not empty and not a run directory (it holds {shown}); "
            f"use a new or empty directory, or pass --adopt_workdir to run in it")
  clash = [n for n in names if n in RUN_FILES]
  if clash:
    return (f"--adopt_workdir: {os.path.join(workdir, clash[0])} is not this run's and the "
            f"run would replace it; move it aside (a run writes {', '.join(RUN_FILES)})")
  return None


def fault_requested(name: str, iteration: Optional[int] = None) -> bool:
  """Crash-test hook: whether SELFIMPROVE_JAX_FAULT asks for fault `name` here. The
  variable holds `name` (any iteration) or `name@K` (only in iteration K)."""
  want = os.environ.get(FAULT_ENV)
  if not want:
    return False
  wname, _, wit = want.partition("@")
  return wname == name and (not wit or (iteration is not None and int(wit) == iteration))


def fault_point(name: str, iteration: Optional[int] = None) -> None:
  """Crash-test hook: when SELFIMPROVE_JAX_FAULT asks for `name` (see
  `fault_requested`), the process kills itself with SIGKILL right here (the
  resumption tests interrupt a run at a chosen moment this way). A no-op otherwise."""
  if fault_requested(name, iteration):
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_soon(seconds: float) -> None:
  """Crash-test hook: SIGKILL from a timer thread, landing while the main thread is
  inside a save (the 'during a checkpoint write' crash tests)."""
  timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGKILL))
  timer.daemon = True
  timer.start()


@contextlib.contextmanager
def _quiet_orbax_errors():
  """Orbax logs a failed write from its writer thread (a traceback through absl) and
  then raises it; the raise is what the user sees, as one line (cli.py)."""
  logger = logging.getLogger("absl")
  drop = lambda record: record.levelno < logging.ERROR
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def _entry_ok(entry) -> bool:
  return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
          and isinstance(entry.get("accepted"), bool)
          and (isinstance(entry.get("files"), dict) or "files" not in entry))


def full_verify_requested() -> bool:
  """Whether SELFIMPROVE_JAX_VERIFY asks verify to read every file ("full"); "quick"
  or unset trusts matching stats. Anything else is refused in one line."""
  want = os.environ.get(VERIFY_ENV, "").strip().lower()
  if want not in ("", "quick", "full"):
    raise UserError(f"{VERIFY_ENV}={os.environ[VERIFY_ENV]!r} is not one of: quick, full "
                    f"(full re-reads every checkpoint file on resume)")
  return want == "full"


class Checkpointer:
  """Saves and restores iteration checkpoints under `workdir/checkpoints`.

  `log` receives one-line notes (a rebuilt manifest); `read_only` readers (eval,
  export) never write the manifest back."""

  def __init__(self, workdir: str, is_primary: bool = True,
               log: Callable[[str], None] = print, read_only: bool = False):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.is_primary = is_primary
    self.read_only = read_only
    self._log = log
    self._rebuilt: Optional[dict] = None   # a read-only reader's rebuilt manifest
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    if is_primary and not read_only and not os.path.lexists(self.manifest_path) \
        and not self.steps():
      # a new run: from here on, a missing manifest means a lost one (rebuilt)
      write_json_atomic(self.manifest_path, {"checkpoints": {}})

  # ------------------------------------------------------------------ manifest

  @property
  def manifest_path(self) -> str:
    return os.path.join(self.workdir, MANIFEST)

  def _entry_path(self, iteration: int) -> str:
    return os.path.join(self.workdir, ENTRIES, f"{iteration}.json")

  def manifest(self) -> dict:
    """{"checkpoints": {iteration: entry}}; an unreadable manifest is rebuilt from the
    per-checkpoint entries that verify (see `_rebuild_manifest`)."""
    if self._rebuilt is not None:
      return self._rebuilt
    if not os.path.lexists(self.manifest_path) and self.steps():
      return self._rebuild_manifest(f"{self.manifest_path} is missing")
    try:
      m = read_json(self.manifest_path, {"checkpoints": {}}, root=self.workdir)
      if not (isinstance(m, dict) and isinstance(m.get("checkpoints"), dict)
              and all(_entry_ok(e) for e in m["checkpoints"].values())):
        raise UnreadableFile(f"{self.manifest_path} does not hold a checkpoint manifest")
      return m
    except UnreadableFile as e:
      return self._rebuild_manifest(str(e))

  def _rebuild_manifest(self, why: str) -> dict:
    entries_dir = os.path.join(self.workdir, ENTRIES)
    steps = self.steps()
    if steps and not os.path.isdir(entries_dir):
      raise UserError(f"{why}, and this run has no {ENTRIES}/ to rebuild it from; "
                      f"restore manifest.json from a backup, or move the workdir aside "
                      f"and start again")
    good = {}
    for it in steps:
      try:
        entry = read_json(self._entry_path(it), None, root=self.workdir)
      except UnreadableFile:
        continue
      if _entry_ok(entry) and self._problem(it, entry) is None:
        good[str(it)] = entry
    m = {"checkpoints": good}
    self._log(f"{why}; rebuilt it from the {len(good)} checkpoint(s) that verify "
              f"against their own hashes ({', '.join(good) or 'none'})")
    if self.is_primary and not self.read_only:
      write_json_atomic(self.manifest_path, m)
    else:
      self._rebuilt = m
    return m

  def _update_manifest(self, iteration: int, entry: dict) -> None:
    if not self.is_primary:
      return
    os.makedirs(os.path.join(self.workdir, ENTRIES), exist_ok=True)
    write_json_atomic(self._entry_path(iteration), entry)
    m = self.manifest()
    m["checkpoints"][str(iteration)] = entry
    write_json_atomic(self.manifest_path, m)

  # ------------------------------------------------------------------ save / restore

  def save(self, iteration: int, state: Any, meta: dict, accepted: bool,
           records: Optional[dict] = None,
           arrays: Optional[dict[str, np.ndarray]] = None) -> str:
    """Saves `state` (pytree of arrays), `meta` (JSON) and `arrays` (host numpy
    arrays by name, `LOOP_ARRAYS`) as iteration `iteration`; returns the checkpoint's
    content hash ("" on processes other than 0). Every process calls it: Orbax writes
    each process's shards; process 0 writes `arrays`, which every process holds alike.
    An OSError (disk full, read-only, permissions) propagates with its path; Orbax
    writes to a temporary directory and renames it, so the previous checkpoints stay
    intact, and the checkpoint counts only once its manifest entry is written."""
    self._clear_slot(iteration)
    if fault_requested("checkpoint_write", iteration):
      _kill_soon(0.05)
    if fault_requested("enospc", iteration):
      raise OSError(errno.ENOSPC, "No space left on device", self.step_dir(iteration))
    self._check_space(iteration, state)
    try:
      with _quiet_orbax_errors():
        self._manager.save(iteration, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()
    except Exception as e:
      raise self._as_os_error(e, iteration) from e
    fault_point("checkpoint", iteration)
    if not self.is_primary:   # the manifest is process 0's; no need to read it all back
      return ""
    step_dir = self.step_dir(iteration)
    if arrays is not None:
      _write_npz_atomic(os.path.join(step_dir, LOOP_ARRAYS), arrays)
    files = hash_tree(step_dir, root=self.workdir)
    digest = tree_digest(files)
    self._update_manifest(iteration, {"sha256": digest, "accepted": bool(accepted),
                                      "bytes": tree_bytes(step_dir, root=self.workdir),
                                      "hash": HASH_FORMAT, "files": files,
                                      "records": records or {}})
    return digest

  def _clear_slot(self, iteration: int) -> None:
    """Makes room for iteration `iteration`'s checkpoint. An Orbax checkpoint there was
    left by an interrupted run of this very iteration: it is replaced. Anything else
    (a symlink, a folder Orbax did not write) is not the run's: it is moved aside to
    `checkpoints/moved-aside-<iteration>[-n]`, with one line, never deleted."""
    path = self.step_dir(iteration)
    if not os.path.lexists(path):
      return
    if not os.path.islink(path) and os.path.isfile(os.path.join(path, _ORBAX_MARKER)):
      self._manager.delete(iteration)   # every process: Orbax syncs them
      return
    if not self.is_primary:
      return
    aside, n = os.path.join(self.directory, f"moved-aside-{iteration}"), 1
    while os.path.lexists(aside):
      aside, n = os.path.join(self.directory, f"moved-aside-{iteration}-{n}"), n + 1
    os.rename(path, aside)
    self._log(f"{path} is not a checkpoint this run wrote (a symlink or a foreign folder); "
              f"moved it to {aside}")
    self._manager.reload()

  def _check_space(self, iteration: int, state: Any) -> None:
    """ENOSPC before writing when the file system cannot hold the checkpoint: a clean
    one-line error instead of a failure deep inside Orbax's writer threads."""
    need = sum(int(x.nbytes) for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
    free = shutil.disk_usage(self.directory).free
    if need > free:
      raise OSError(errno.ENOSPC, f"No space left on device (the checkpoint needs about "
                    f"{need / 1e6:.0f} MB, {free / 1e6:.0f} MB are free)",
                    self.step_dir(iteration))

  def _as_os_error(self, e: Exception, iteration: int) -> Exception:
    """An OSError naming the checkpoint for a failed save whose cause was the OS (Orbax
    and TensorStore report it as text with the errno); removes the partial temporary
    directory, which only holds space. Other errors are returned as they are."""
    code = getattr(e, "errno", None)
    m = re.search(r"os_error_code='?(\d+)", str(e))
    code = code or (int(m.group(1)) if m else None)
    if self.is_primary:
      for name in os.listdir(self.directory):
        if name.startswith(f"{iteration}.orbax-checkpoint-tmp"):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    if code is None:
      return e
    return OSError(code, os.strerror(code), self.step_dir(iteration))

  def step_dir(self, iteration: int) -> str:
    return os.path.join(self.directory, str(iteration))

  def steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def verify(self, iteration: int) -> Optional[str]:
    """None when the checkpoint matches its manifest hash, else what is wrong.

    The trust rule: a file whose size, mtime_ns and inode equal those recorded when
    this machine last hashed it (at save, or at a verify that read it) is taken to
    hold the recorded bytes, unread. A copy to another disk or machine, a restore from
    backup or any write changes the inode or mtime and the file is read again; bytes
    changed under a restored mtime (os.utime) or flipped by the disk itself are only
    found by a full verify: SELFIMPROVE_JAX_VERIFY=full."""
    entry = self.manifest()["checkpoints"].get(str(iteration))
    if entry is None:
      return _NOT_IN_MANIFEST
    return self._problem(iteration, entry, refresh=True)

  def _problem(self, iteration: int, entry: dict, refresh: bool = False) -> Optional[str]:
    """What is wrong with checkpoint `iteration` against `entry`: its size first (a
    cheap stat), then its hash; only regular files inside the workdir are read. With
    `refresh`, a checkpoint that verified after re-reading files has their new stat
    fields written back to the manifest (so a copied run pays the full read once)."""
    step_dir = self.step_dir(iteration)
    try:
      if "bytes" in entry and tree_bytes(step_dir, root=self.workdir) != entry["bytes"]:
        return f"size differs from the manifest ({entry['bytes']} bytes recorded)"
      if "files" not in entry:   # a manifest from before per-file hashes: by content
        files, actual = None, hash_path(step_dir, root=self.workdir)
      else:
        before = self._entry_mtime_ns(iteration) - RACY_NS
        files = hash_tree(step_dir, root=self.workdir, trusted=None
                          if full_verify_requested() else entry["files"],
                          trust_before_ns=before)
        actual = tree_digest(files)
    except UnreadableFile as e:
      return str(e)
    except OSError as e:
      return f"unreadable ({e.strerror}: {e.filename})"
    if actual != entry["sha256"]:
      return f"content hash mismatch (manifest {entry['sha256'][:12]}, on disk {actual[:12]})"
    # written back only when a stat changed (a copy, a restore): a file that is read
    # only for being too close to its stamp (RACY_NS) keeps being read, so verifying
    # an untouched run never rewrites its manifest
    if (refresh and files is not None and files != entry["files"] and self.is_primary
        and not self.read_only):
      self._update_manifest(iteration, {**entry, "files": files})
    return None

  def _entry_mtime_ns(self, iteration: int) -> int:
    """When the entry was last written, by the workdir file system's clock (the
    clock that stamped the files); 0 (trust nothing) when it is missing."""
    try:
      return os.lstat(self._entry_path(iteration)).st_mtime_ns
    except OSError:
      return 0

  def restore(self, iteration: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores iteration `iteration` into the shapes/shardings of `abstract_state`."""
    out = self._manager.restore(iteration, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_params(self, iteration: int, abstract_params: Any) -> tuple[Any, dict]:
    """Only the weights of iteration `iteration` (a checkpoint with or without optimizer
    state), into the shapes/shardings of `abstract_params`. Read with a checkpointer of
    its own: the manager's item handler must stay the one that saves."""
    args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding,
                                                       global_shape=x.shape, dtype=x.dtype),
                        abstract_params)
    with ocp.PyTreeCheckpointer() as reader:
      out = reader.restore(os.path.join(self.step_dir(iteration), "state"),
                           args=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                                       restore_args={"params": args},
                                                       partial_restore=True))
    return out["params"], self.restore_meta(iteration)

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

  def restore_loop_arrays(self, iteration: int) -> dict[str, np.ndarray]:
    """The arrays saved beside checkpoint `iteration` (`LOOP_ARRAYS`); {} for a
    checkpoint written before there were any (its ledger is in the metadata). Every
    process reads the file itself: nothing is broadcast."""
    path = os.path.join(self.step_dir(iteration), LOOP_ARRAYS)
    if not os.path.lexists(path):
      return {}
    with open_regular(path, root=self.workdir) as f:
      try:
        with np.load(f, allow_pickle=False) as z:
          return {name: z[name] for name in z.files}
      except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UnreadableFile(f"{path} is not a loop-state file ({e}); move checkpoint "
                             f"{self.step_dir(iteration)} aside to resume from the one "
                             f"before") from None

  def restore_meta(self, iteration: int) -> dict:
    meta = read_json(os.path.join(self.step_dir(iteration), "meta", "metadata"),
                     root=self.workdir)
    if not isinstance(meta, dict) or "config" not in meta:
      raise UnreadableFile(f"{self.step_dir(iteration)}: its metadata holds no config")
    return meta

  def latest_good(self, log=None, only_accepted: bool = False) -> Optional[int]:
    """Newest iteration (of the accepted ones, with `only_accepted`) whose checkpoint
    verifies; reports each bad one in a line and skips it."""
    log = log or self._log
    manifest = self.manifest()["checkpoints"]
    for it in reversed(self.steps()):
      entry = manifest.get(str(it))
      if only_accepted and entry is not None and not entry["accepted"]:
        continue
      problem = (self._problem(it, entry, refresh=True) if entry is not None
                 else _NOT_IN_MANIFEST)
      if problem is None:
        return it
      log(f"checkpoint {self.step_dir(it)}: {problem}; falling back to an earlier one")
    return None

  def prune(self, keep: set[int]) -> None:
    """Deletes checkpoints not in `keep` (the loop keeps accepted ones and the latest),
    and only those the manifest says this run wrote that are still Orbax's own
    directories: a user's folder or a symlink under checkpoints/ is never deleted.
    Every process calls it with the same `keep`: Orbax deletes on process 0 and then
    waits for all processes."""
    listed = self.manifest()["checkpoints"]
    for it in self.steps():
      path = self.step_dir(it)
      if it in keep or str(it) not in listed or os.path.islink(path) \
          or not os.path.isfile(os.path.join(path, _ORBAX_MARKER)):
        continue
      self._manager.delete(it)

  def close(self) -> None:
    self._manager.close()


def _write_npz_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
  """An uncompressed .npz of `arrays` (no pickles), written atomically
  (`files.write_atomic`)."""
  write_atomic(path, lambda f: np.savez(f, **arrays), "wb")
