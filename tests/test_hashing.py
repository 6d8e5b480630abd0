"""Checkpoint hashing: the parallel tree hash, the stat-trust quick check on verify and
when a full read is made instead (runtime/files.py, runtime/checkpoint.py)."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from selfimprove_jax.errors import UserError
from selfimprove_jax.runtime import files as files_lib
from selfimprove_jax.runtime.checkpoint import VERIFY_ENV, Checkpointer
from selfimprove_jax.runtime.files import hash_path, hash_tree, tree_digest


def _write_tree(root, sizes):
  rng = np.random.default_rng(0)
  for i, n in enumerate(sizes):
    sub = root / ("d" if i % 2 else "") / f"f{i}"
    sub.parent.mkdir(parents=True, exist_ok=True)
    sub.write_bytes(rng.bytes(n))


def test_parallel_hash_equals_serial_and_its_definition(tmp_path, monkeypatch):
  monkeypatch.setattr(files_lib, "HASH_PIECE", 1000)   # many pieces per file
  _write_tree(tmp_path, [0, 1, 999, 1000, 12345, 1001, 7000])
  serial = hash_tree(str(tmp_path), threads=1)
  parallel = hash_tree(str(tmp_path), threads=4)
  assert serial == parallel and tree_digest(serial) == tree_digest(parallel)
  data = (tmp_path / "f4").read_bytes()   # 12345 bytes: 13 pieces
  pieces = b"".join(hashlib.sha256(data[o:o + 1000]).digest() for o in range(0, len(data), 1000))
  assert serial["f4"]["sha256"] == hashlib.sha256(pieces).hexdigest()
  assert serial["f0"]["sha256"] == hashlib.sha256(hashlib.sha256(b"").digest()).hexdigest()
  assert serial["d/f1"]["size"] == 1
  (tmp_path / "f4").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
  assert hash_tree(str(tmp_path), threads=4)["f4"]["sha256"] != serial["f4"]["sha256"]


def _saved(tmp_path, old_mtimes=True):
  """A checkpoint of iteration 0, verified once after its files were aged (so their
  stats are recorded outside the RACY_NS window, as a large save's are)."""
  ckpt = Checkpointer(str(tmp_path), log=lambda _: None)
  state = {"w": np.arange(4096, dtype=np.float32), "b": np.ones(7, np.float32)}
  ckpt.save(0, state, {"config": {}}, accepted=True)
  step = ckpt.step_dir(0)
  if old_mtimes:
    for d, _, fs in os.walk(step):
      for f in fs:
        os.utime(os.path.join(d, f), ns=(10**18, 10**18))   # 2001: long before the stamp
    assert ckpt.verify(0) is None   # re-read (stats changed), recorded anew
  return ckpt, step


def _largest(step):
  return max((os.path.join(d, f) for d, _, fs in os.walk(step) for f in fs),
             key=os.path.getsize)


def _flip_keep_stat(path):
  st = os.stat(path)
  with open(path, "r+b") as f:
    f.seek(st.st_size // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))   # size and mtime as recorded


def test_quick_check_trusts_stats_and_full_verify_reads(tmp_path, monkeypatch):
  ckpt, step = _saved(tmp_path)
  entry = ckpt.manifest()["checkpoints"]["0"]
  assert all(f["mtime_ns"] == 10**18 for f in entry["files"].values())
  reads = []
  real = files_lib._piece_digest
  monkeypatch.setattr(files_lib, "_piece_digest", lambda *a: reads.append(a) or real(*a))
  assert ckpt.verify(0) is None and reads == []   # every file trusted, none read
  _flip_keep_stat(_largest(step))
  assert ckpt.verify(0) is None   # the documented limit of the quick check
  monkeypatch.setenv(VERIFY_ENV, "full")
  assert "content hash mismatch" in ckpt.verify(0)
  assert ckpt.latest_good() is None
  monkeypatch.setenv(VERIFY_ENV, "sometimes")
  with pytest.raises(UserError, match=VERIFY_ENV):
    ckpt.verify(0)


def test_changed_mtime_or_inode_is_read_again(tmp_path):
  ckpt, step = _saved(tmp_path)
  target = _largest(step)
  _flip_keep_stat(target)
  os.utime(target)   # now: the mtime differs from the record
  assert "content hash mismatch" in ckpt.verify(0)
  # a copy (new inodes) of a good checkpoint is read once, then its stats are recorded
  ckpt2, step2 = _saved(tmp_path / "b")
  ckpt2.close()
  shutil.copytree(tmp_path / "b", tmp_path / "c", copy_function=shutil.copy2)
  ckpt3 = Checkpointer(str(tmp_path / "c"), log=lambda _: None)
  old = ckpt3.manifest()["checkpoints"]["0"]["files"]
  assert ckpt3.verify(0) is None
  new = ckpt3.manifest()["checkpoints"]["0"]["files"]
  assert {k: v["sha256"] for k, v in new.items()} == {k: v["sha256"] for k, v in old.items()}
  assert all(new[k]["ino"] != old[k]["ino"] for k in new)


def test_file_changed_right_after_save_is_never_trusted(tmp_path):
  """A write within one timestamp tick of the hash can leave the mtime as it was: files
  this close to the entry's stamp are always read (RACY_NS)."""
  ckpt, step = _saved(tmp_path, old_mtimes=False)
  _flip_keep_stat(_largest(step))
  assert "content hash mismatch" in ckpt.verify(0)


def test_old_manifest_entry_verifies_by_content(tmp_path):
  ckpt, step = _saved(tmp_path)
  entry = ckpt.manifest()["checkpoints"]["0"]
  old = {k: v for k, v in entry.items() if k not in ("files", "hash")}
  old["sha256"] = hash_path(step, root=str(tmp_path))   # the serial stream hash of before
  with open(os.path.join(tmp_path, "manifest.json"), "w") as f:
    json.dump({"checkpoints": {"0": old}}, f)
  assert ckpt.verify(0) is None
  _flip_keep_stat(_largest(step))
  assert "content hash mismatch" in ckpt.verify(0)
