"""The plain files of a run's workdir: guarded reads, atomic writes, content hashes,
and the lock that keeps one run per workdir; and the one JSON Lines reader (task files,
prompts files).

A workdir is input a user (or a crash, or a hostile neighbour) can change. Every read
of a workdir file here first checks what the path is: a symlink that leaves the
workdir, a device, a FIFO or a socket is refused with one line instead of hanging
(hashing `/dev/zero` never ends; opening a FIFO blocks until a writer appears), and
JSON files larger than `MAX_JSON_BYTES` are refused before they are read. A JSON Lines
file is one a user named on purpose and is read as named (a prompts file may be a pipe).
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import json
import os
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Callable, Optional

from selfimprove_jax.errors import UserError

MAX_JSON_BYTES = 64 << 20    # manifests, stage indexes, checkpoint metadata
LOCK_FILE = ".lock"
# `hash_tree` hashes files in pieces of this size, each on its own thread: one big
# Orbax data file is split across cores too. Part of the digest's definition (changing
# it changes every digest); HASH_FORMAT names it in the manifest.
HASH_PIECE = 64 << 20
HASH_FORMAT = "sha256-64MiB-pieces"
# read into one reused buffer of this size: it stays in the CPU cache between the read
# and the hash, and no 64 MiB of fresh pages are allocated per piece (hashlib releases
# the GIL on updates this large, so threads hash at once)
_READ = 1 << 20


class UnreadableFile(UserError):
  """A workdir file that exists but cannot be used (not regular, corrupt, too big)."""


def check_regular(path: str, root: Optional[str] = None) -> os.stat_result:
  """stat of `path` when it is a regular file (a symlink is followed only when it
  stays under `root`); UnreadableFile otherwise. Never opens the file."""
  st = os.lstat(path)
  if stat.S_ISLNK(st.st_mode):
    target = os.path.realpath(path)
    base = os.path.realpath(root) if root else None
    if base is None or not (target == base or target.startswith(base + os.sep)):
      raise UnreadableFile(f"{path} is a symlink to {target}, outside the workdir; "
                           f"refusing to read it")
    st = os.stat(path)
  if not stat.S_ISREG(st.st_mode):
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    raise UnreadableFile(f"{path} is {kind}, not a regular file; refusing to read it")
  return st


def open_regular(path: str, root: Optional[str] = None, max_bytes: Optional[int] = None):
  """Opens a regular file for binary reading (see `check_regular`); refuses files
  over `max_bytes`. O_NONBLOCK: a FIFO swapped in after the check cannot block."""
  st = check_regular(path, root)
  if max_bytes is not None and st.st_size > max_bytes:
    raise UnreadableFile(f"{path} is {st.st_size} bytes, more than the {max_bytes} "
                         f"expected; refusing to read it")
  fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
  if not stat.S_ISREG(os.fstat(fd).st_mode):
    os.close(fd)
    raise UnreadableFile(f"{path} changed into a non-regular file; refusing to read it")
  return os.fdopen(fd, "rb")


def read_json(path: str, default: Any = None, root: Optional[str] = None) -> Any:
  """The JSON value in `path`, `default` when it does not exist; UnreadableFile when
  it is not a regular file, too large, not UTF-8 or not JSON."""
  if not os.path.lexists(path):
    return default
  with open_regular(path, root, MAX_JSON_BYTES) as f:
    raw = f.read()
  try:
    return json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as e:
    raise UnreadableFile(f"{path} is not valid JSON ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120]})") from None


# what a line that is no object holds, in the words of the JSON spec
_JSON_KINDS = ((bool, "true or false"), (list, "an array"), (str, "a string"),
               ((int, float), "a number"), (type(None), "null"))


def read_jsonl(path: str, what: str, record: str = "a JSON object") -> list[tuple[int, dict]]:
  """(line number, object) for each non-blank line of a JSON Lines file (gzipped when
  the name ends in `.gz`): the one reader of the task files and the prompts files. A
  UserError names the file, and the line, when the file cannot be read or is not
  UTF-8, a line is not JSON, or a line is not `record` (the caller checks the fields
  it names). `what` says what the file is for ('task jsonl:data.jsonl',
  '--prompts_file'). Lines are split at '\n' only, as JSON Lines defines them: a JSON
  string may hold U+2028 and other characters at which `str.splitlines` would split."""
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      lines = f.read().decode("utf-8").split("\n")
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: not UTF-8 text (byte {e.start}); {what} must be UTF-8 "
                    f"JSON Lines") from None
  except (OSError, EOFError) as e:   # gzip.BadGzipFile is an OSError
    raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e}); "
                    f"{what}") from None
  rows = []
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
      kind = next(name for types, name in _JSON_KINDS if isinstance(row, types))
      raise UserError(f"{path}:{lineno}: expected {record}, got {kind}")
    rows.append((lineno, row))
  return rows


def write_atomic(path: str, write: Callable[[IO], None], mode: str = "w") -> None:
  """Calls `write(f)` on a temporary file opened with `mode`, fsyncs it and renames it
  over `path`: a reader sees the old or the new file, never half of one. The temporary
  file is removed if writing fails."""
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON atomically (`write_atomic`)."""
  write_atomic(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True))


def tree_files(path: str) -> list[str]:
  """Files under a directory (sorted), or [path] for a file. Directory symlinks are
  not followed (os.walk's default), so a link to elsewhere is never read."""
  if not os.path.isdir(path) or os.path.islink(path):
    return [path]
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)


def tree_bytes(path: str, root: Optional[str] = None) -> int:
  """Total size of the regular files under `path` (refuses anything else)."""
  return sum(check_regular(f, root).st_size for f in tree_files(path))


def hash_path(path: str, root: Optional[str] = None) -> str:
  """SHA-256 over a file, or over every file under a directory (names and bytes), in
  one serial stream. Stage records and checkpoints saved before HASH_FORMAT use it;
  checkpoints now use `hash_tree`, which spreads over threads. Only regular files are
  read (see `check_regular`)."""
  h = hashlib.sha256()
  base = os.path.dirname(path) if not os.path.isdir(path) else path
  for f in tree_files(path):
    h.update(os.path.relpath(f, base).encode())
    with open_regular(f, root) as fh:
      for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()



def stat_fields(st: os.stat_result) -> dict:
  """The stat fields a manifest keeps beside a file's hash (see `hash_tree`)."""
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _piece_digest(path: str, root: Optional[str], offset: int, length: int) -> bytes:
  h = hashlib.sha256()
  buf = memoryview(bytearray(_READ))
  with open_regular(path, root) as f:
    f.seek(offset)
    while length > 0:
      n = f.readinto(buf[:min(_READ, length)])
      if not n:
        break
      h.update(buf[:n])
      length -= n
  return h.digest()


def hash_tree(path: str, root: Optional[str] = None, threads: Optional[int] = None,
              trusted: Optional[dict] = None, trust_before_ns: int = 0) -> dict:
  """{relative path: {"sha256", "size", "mtime_ns", "ino"}} for every file under
  `path`. A file's sha256 is the SHA-256 of the SHA-256s of its HASH_PIECE-byte pieces,
  so the pieces of all files are hashed in parallel on `threads` threads (default: the
  CPUs this process may use) and the result does not depend on how many.

  A file whose current stat equals its entry in `trusted` (a previous result) and whose
  recorded mtime is before `trust_before_ns` keeps its recorded hash unread (the quick
  check; see Checkpointer.verify for the rule). A file whose stat changed while it was
  read gets no stat fields, so it is never trusted later."""
  base = path if os.path.isdir(path) else os.path.dirname(path)
  names = [(os.path.relpath(f, base), f) for f in tree_files(path)]
  out, todo = {}, []
  for rel, f in names:
    now = stat_fields(check_regular(f, root))
    old = (trusted or {}).get(rel)
    if (isinstance(old, dict) and all(old.get(k) == v for k, v in now.items())
        and now["mtime_ns"] < trust_before_ns and isinstance(old.get("sha256"), str)):
      out[rel] = dict(old)
    else:
      todo.append((rel, f, now))
  jobs = [(i, off) for i, (_, _, now) in enumerate(todo)
          for off in range(0, max(now["size"], 1), HASH_PIECE)]
  workers = threads or len(os.sched_getaffinity(0))
  with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs) or 1))) as pool:
    digests = list(pool.map(
        lambda job: _piece_digest(todo[job[0]][1], root, job[1], HASH_PIECE), jobs))
  pieces: dict[int, list[bytes]] = {}
  for (i, _), d in zip(jobs, digests):
    pieces.setdefault(i, []).append(d)
  for i, (rel, f, before) in enumerate(todo):
    entry = {"sha256": hashlib.sha256(b"".join(pieces[i])).hexdigest()}
    after = stat_fields(check_regular(f, root))
    out[rel] = {**entry, **after} if after == before else entry
  return out


def tree_digest(files: dict) -> str:
  """One SHA-256 over a `hash_tree` result: each file's relative path and hash."""
  h = hashlib.sha256()
  for rel in sorted(files):
    h.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
  return h.hexdigest()

class WorkdirLock:
  """An advisory lock (flock) on `workdir/.lock`, held for a run's life: a second run
  on the same workdir is refused with the holder's pid and host. The kernel releases
  it when the holder exits or dies, so a stale lock file never blocks."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: Optional[int] = None

  def __enter__(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        raise
      holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "unknown"
      os.close(fd)
      raise UserError(f"workdir {os.path.dirname(self.path)} is in use by another run "
                      f"({holder}); wait for it to finish or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)   # closing releases the flock
      self._fd = None
