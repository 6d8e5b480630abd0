"""A cache of what reading a GGUF file produces (its ModelConfig and its tensors
dequantised to fp32), so a second load of the same file reads neither its metadata nor
its quantised blocks again.

Both are repeated work: the same file gives the same config and fp32 tensors every
time. On the CPU, gguf's reader spends about 5 s parsing SmolLM2's metadata (the
tokenizer's 49k-entry arrays, one Python object per element) and dequantising its
Q4_1 tensors takes about 3 s more (benchmarks/RESULTS.md, "Start-up"). An entry holds
one `.npy` per tensor (as `GGUFTensors.get` returns it: HF names, q/k rows
un-permuted) and a manifest with the config, read back memory-mapped.

Keyed by what an entry depends on: the file's content (SHA-256, see
runtime/files.hash_tree), the `gguf` package version, the source of the reader
(weights/gguf_file.py: a change to how configs or tensors are read is a new key) and
FORMAT (this module's layout). The content hash is computed once per file and
remembered under the file's identity (real path, size, mtime_ns, inode), so hashing
the file is not itself repeated work; any change the file system sees (a write, a
copy, a new inode) hashes it again.

Only files with block-quantised tensors (Q4_1, Q8_0, K-quants, ...) are cached: an
F32/F16/BF16 file reads about as fast as its copy would.

Where it lives, in order: SELFIMPROVE_JAX_WEIGHTS_CACHE=<dir>, or =off to turn it off;
$XDG_CACHE_HOME/selfimprove_jax/weights, else ~/.cache/selfimprove_jax/weights (beside
the compilation cache, runtime/compile_cache.py). At most MAX_BYTES, least recently
used entries evicted; an entry is not written when the disk would keep less than
MIN_FREE_BYTES free.

A cache is never a reason to fail. Entries are written to a temporary directory and
renamed into place, so a reader never sees half of one; an entry that is still
unreadable (truncated, corrupt, from another format, a checksum wrong) is a miss with
one warning line: the file is read and dequantised again and the entry rewritten. A
cache that cannot be written (read-only, disk full) leaves the load uncached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import zlib
from typing import Optional

import numpy as np

from selfimprove_jax.errors import UserError
from selfimprove_jax.model.config import ModelConfig, RopeScaling
from selfimprove_jax.runtime import compile_cache, files
from selfimprove_jax.weights import gguf_file

ENV = "SELFIMPROVE_JAX_WEIGHTS_CACHE"
FORMAT = 1
MAX_BYTES = 8 << 30
MIN_FREE_BYTES = 2 << 30
MANIFEST = "manifest.json"
_HASHES = "hashes"           # <root>/hashes/<identity>.json: a file's remembered hash
_MAX_HASH_RECORDS = 512
# a file modified this recently may still be being written (or modified again within
# the file system's timestamp granularity): its hash is used but not remembered
_SETTLED_NS = 2_000_000_000
# zlib.crc32 over each tensor, checked on every read: it catches bytes changed in place
# (half-written disk blocks, edits), which sizes and .npy headers do not
_CHUNK = 16 << 20


def chosen_dir() -> Optional[str]:
  """The cache's directory, None when turned off; UserError for a
  SELFIMPROVE_JAX_WEIGHTS_CACHE that names something other than a directory."""
  return compile_cache.dir_from_env(ENV, "the cache of dequantised GGUF weights",
                                    os.path.join(compile_cache.cache_root(), "weights"))


# ----------------------------------------------------------------------------- the key


def _identity(path: str, st: os.stat_result) -> str:
  real = os.path.realpath(path)
  return hashlib.sha256(f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode()) \
      .hexdigest()[:32]


def content_hash(path: str, root: str) -> str:
  """SHA-256 of the file (files.hash_tree's piecewise digest), remembered under the
  file's identity in `root`/hashes so the next load of an unchanged file reads none
  of it."""
  st = os.stat(path)
  identity = _identity(path, st)
  if identity in _hashed:   # this process hashed it already (read_gguf, then dequantised)
    return _hashed[identity]
  record = os.path.join(root, _HASHES, identity + ".json")
  try:
    with open(record) as f:
      known = json.load(f)
    if (known.get("size"), known.get("mtime_ns"), known.get("ino")) == \
        (st.st_size, st.st_mtime_ns, st.st_ino) and isinstance(known.get("sha256"), str):
      return known["sha256"]
  except (OSError, ValueError, AttributeError):
    pass   # not remembered (or an unreadable record): hash it
  now = time.time_ns()
  entry = files.hash_tree(path)[os.path.basename(path)]
  # stat fields are present only when the file did not change while it was read
  if entry.get("mtime_ns") == st.st_mtime_ns and st.st_mtime_ns < now - _SETTLED_NS:
    _hashed[identity] = entry["sha256"]
    try:
      os.makedirs(os.path.dirname(record), exist_ok=True)
      files.write_json_atomic(record, dict(entry, path=os.path.realpath(path)))
      _prune_hash_records(os.path.dirname(record))
    except OSError:
      pass   # not remembered: hashed again next time
  return entry["sha256"]


_hashed: dict = {}   # identity -> hash, for this process


def _prune_hash_records(directory: str) -> None:
  """Keeps the newest _MAX_HASH_RECORDS records (each file ever loaded leaves one)."""
  names = os.listdir(directory)
  if len(names) <= _MAX_HASH_RECORDS:
    return
  paths = [os.path.join(directory, n) for n in names]
  paths.sort(key=lambda p: os.path.getmtime(p) if os.path.exists(p) else 0)
  for p in paths[:len(paths) - _MAX_HASH_RECORDS // 2]:
    try:
      os.remove(p)
    except OSError:
      pass


def entry_key(sha256: str) -> str:
  """The entry's name: the file's content hash and everything that turns it into
  the entry (module docstring)."""
  import gguf
  with open(gguf_file.__file__, "rb") as f:
    reader = hashlib.sha256(f.read()).hexdigest()
  version = getattr(gguf, "__version__", None) or _dist_version("gguf")
  return hashlib.sha256(f"{FORMAT}|gguf {version}|{reader}|{sha256}".encode()) \
      .hexdigest()[:32]


def _dist_version(name: str) -> str:
  from importlib import metadata
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return "unknown"


# ----------------------------------------------------------------------------- entries


class CachedTensors:
  """The tensors of a cache entry, memory-mapped; the interface of GGUFTensors
  (names / shape / get / origin / has_tokenizer), errors still name the GGUF file.
  `get` returns the mapped array itself, as GGUFTensors does for an F32 tensor:
  load.params_from_tensors copies what it places (see `_in_memory` there)."""

  def __init__(self, path: str, arrays: dict, has_tokenizer: bool):
    self.path, self.has_tokenizer = path, has_tokenizer
    self._arrays = arrays

  @property
  def names(self):
    return self._arrays.keys()

  def origin(self, name: str) -> str:
    return self.path

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._arrays[name].shape)

  def get(self, name: str) -> np.ndarray:
    return self._arrays[name]


def _crc(a: np.ndarray) -> int:
  flat = a.reshape(-1).view(np.uint8)
  crc = 0
  for i in range(0, flat.size, _CHUNK):
    crc = zlib.crc32(flat[i:i + _CHUNK], crc)
  return crc


def _config_json(config: ModelConfig) -> dict:
  """The config as the file gives it: the compute dtype is the caller's choice (load's
  `dtype`), so it is left out and reads back as the default, as from the file."""
  d = dataclasses.asdict(config)
  del d["dtype"]
  return d


def _config_from_json(d: dict) -> ModelConfig:
  d = dict(d)
  if d.get("rope_scaling") is not None:
    d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
  if isinstance(d.get("eos_token_id"), list):
    d["eos_token_id"] = tuple(d["eos_token_id"])
  return ModelConfig(**d)


def _read_entry(entry: str, path: str, sha256: str, check: bool = True):
  """(config, CachedTensors) of a complete entry for the file `path` whose content
  hash is `sha256`; ValueError, OSError, KeyError or TypeError saying what is wrong
  with it otherwise. `check=False` skips the checksums (an entry this process has
  just written and summed)."""
  with open(os.path.join(entry, MANIFEST)) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT or manifest.get("sha256") != sha256:
    raise ValueError("written for another file or format")
  config = _config_from_json(manifest["config"])
  arrays = {}
  for name, meta in manifest["tensors"].items():
    a = np.load(os.path.join(entry, meta["file"]), mmap_mode="r", allow_pickle=False)
    if a.dtype != np.float32 or list(a.shape) != meta["shape"]:
      raise ValueError(f"{meta['file']} holds {a.dtype}{list(a.shape)}, not {name}'s "
                       f"float32{meta['shape']}")
    if check and _crc(a) != meta["crc32"]:
      raise ValueError(f"{meta['file']} fails its checksum")
    arrays[name] = a
  return config, CachedTensors(path, arrays, bool(manifest["has_tokenizer"]))


def _write_entry(entry: str, config: ModelConfig, source, sha256: str) -> None:
  """Dequantises every tensor of `source` into a new entry, one tensor in memory at a
  time; written to a temporary directory, then renamed into place."""
  tmp = f"{entry}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    listed = {}
    for i, name in enumerate(sorted(source.names)):
      w = np.ascontiguousarray(source.get(name), np.float32)
      fname = f"{i:05d}.npy"
      np.save(os.path.join(tmp, fname), w, allow_pickle=False)
      listed[name] = {"file": fname, "shape": list(w.shape), "crc32": _crc(w)}
    files.write_json_atomic(os.path.join(tmp, MANIFEST), {
        "format": FORMAT, "sha256": sha256, "source": source.path,
        "config": _config_json(config), "has_tokenizer": bool(source.has_tokenizer),
        "tensors": listed})
    try:
      os.rename(tmp, entry)
    except OSError:
      if not os.path.exists(os.path.join(entry, MANIFEST)):
        raise
      # another process wrote the same entry first: use its (the same) tensors
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _entry_bytes(entry: str) -> int:
  return sum(os.path.getsize(os.path.join(entry, n)) for n in os.listdir(entry))


def _evict(root: str, keep: str) -> None:
  """Removes least recently used entries (their manifest's mtime, touched on every
  read) until the cache holds at most MAX_BYTES; never `keep`."""
  entries = []
  for n in os.listdir(root):
    p = os.path.join(root, n)
    m = os.path.join(p, MANIFEST)
    if n != _HASHES and os.path.isfile(m):
      entries.append((os.path.getmtime(m), p, _entry_bytes(p)))
  total = sum(size for _, _, size in entries)
  for _, p, size in sorted(entries):
    if total <= MAX_BYTES:
      break
    if p != keep:
      _remove(p)
      total -= size


def _remove(entry: str) -> None:
  """Renames the entry out of the way first, so no reader finds it half-deleted."""
  gone = f"{entry}.gone{os.getpid()}"
  try:
    os.rename(entry, gone)
  except OSError:
    return
  shutil.rmtree(gone, ignore_errors=True)


def _warn_once(entry: str, text: str) -> None:
  """One line per entry per process: a bad entry that then cannot be rewritten (a
  read-only cache) is still one line."""
  if entry not in _warned:
    _warned.add(entry)
    print(f"selfimprove-jax: warning: {text}", file=sys.stderr)


_warned: set = set()
_BAD_ENTRY = (OSError, ValueError, KeyError, TypeError, AttributeError)


def _entry_for(path: str) -> Optional[tuple[str, str]]:
  """(entry directory, content hash) for the file, None when the cache is off or
  cannot be used (a default directory that cannot be created: uncached, as before)."""
  root = chosen_dir()
  if root is None:
    return None
  try:
    os.makedirs(root, exist_ok=True)
    sha256 = content_hash(path, root)
  except OSError as e:
    if os.environ.get(ENV, "").strip():
      raise UserError(f"{ENV}: cannot use {root} ({e.strerror}); name a writable "
                      f"directory, or set {ENV}=off") from None
    return None
  return os.path.join(root, entry_key(sha256)), sha256


def read_gguf(path: str):
  """gguf_file.read_gguf(path), from the cache when it has a good entry for the file:
  (ModelConfig, tensors), the tensors memory-mapped fp32 arrays. Otherwise the file
  is read as before; `dequantised` then writes its entry."""
  where = _entry_for(path)
  if where is not None and os.path.exists(where[0]):
    entry, sha256 = where
    try:
      config, tensors = _read_entry(entry, path, sha256)
      os.utime(os.path.join(entry, MANIFEST))   # recently used: evicted last
      return config, tensors
    except _BAD_ENTRY as e:
      _warn_once(entry, f"the weights cache entry {entry} is unreadable "
                 f"({type(e).__name__}: {' '.join(str(e).split())[:120]}); reading "
                 f"{path} again")
      _remove(entry)
  return gguf_file.read_gguf(path)


def dequantised(tensors, config: ModelConfig):
  """The tensors of a GGUF file (as read_gguf returned them) served from the cache:
  a block-quantised file without an entry is dequantised once into a new entry and
  read from it. Returns `tensors` itself when they came from the cache already, the
  cache is off, the file is not block-quantised or the entry cannot be written."""
  if isinstance(tensors, CachedTensors) or not tensors.block_quantised:
    return tensors
  where = _entry_for(tensors.path)
  if where is None:
    return tensors
  entry, sha256 = where
  need = sum(int(np.prod(tensors.shape(n))) * 4 for n in tensors.names)
  try:
    if need > MAX_BYTES or shutil.disk_usage(os.path.dirname(entry)).free < \
        need + MIN_FREE_BYTES:
      return tensors   # too big to keep, or the disk too full: uncached
    _write_entry(entry, config, tensors, sha256)
    _evict(os.path.dirname(entry), keep=entry)
    return _read_entry(entry, tensors.path, sha256, check=False)[1]
  except _BAD_ENTRY as e:
    _warn_once(entry, f"cannot write the weights cache entry {entry} ({type(e).__name__}: "
               f"{' '.join(str(e).split())[:120]}); loading uncached")
    return tensors
