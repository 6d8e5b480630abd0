"""Host side of the sandbox: a pool of isolated worker processes and the calls to them.

Each worker (worker.py, started under the isolation of isolation.py) runs items one at
a time; the pool sends each a request and waits for the reply with its own deadline,
the item's wall-clock limit plus a margin, so a worker that stops answering (killed by
its item, or wedged) is killed with its whole process group and restarted, and the item
is reported `killed`. Replies are bounded: the worker caps what it keeps of an item's
output, and the pool refuses a reply longer than that cap allows.
"""

from __future__ import annotations

import atexit
import os
import queue
import select
import signal
import struct
import subprocess
import threading
import time
from typing import Optional, Sequence

from selfimprove_jax.sandbox import isolation as isolation_lib
from selfimprove_jax.sandbox import worker as worker_lib

START_TIMEOUT_S = 60.0
# Preparing a job in the worker (importing reasoning-gym, building a dataset) happens
# before the item's clock starts; the pool's deadline allows for it.
PREPARE_MARGIN_S = 60.0
UID_BASE = 61000         # items run as UID_BASE + k, a uid of their own per worker
UID_BLOCK = 64           # at most this many workers per pool


class _Worker:
  """One worker process and the uid its items run as."""

  def __init__(self, iso: isolation_lib.Isolation, uid: Optional[int]):
    self.iso, self.uid, self.proc = iso, uid, None

  def _start(self) -> None:
    self.proc = subprocess.Popen(
        [*self.iso.command, self.iso.worker_path], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    hello = self._read(time.monotonic() + START_TIMEOUT_S, 1 << 12)
    if not (isinstance(hello, dict) and hello.get("ready")):
      self.kill()
      raise RuntimeError(f"sandbox worker did not start ({self.iso.level}: "
                         f"{' '.join(self.iso.command[:3])} ...)")

  def kill(self) -> None:
    if self.proc is None:
      return
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except OSError:
      pass
    self.proc.wait()
    if self.uid is not None:   # an item still running under this worker's uid goes too
      worker_lib.sweep(self.uid)
    for f in (self.proc.stdin, self.proc.stdout):
      try:
        f.close()
      except OSError:
        pass
    self.proc = None

  def _read(self, deadline: float, max_bytes: int):
    """One reply, or None on EOF, timeout or an oversized reply."""
    fd = self.proc.stdout.fileno()
    buf = b""
    need = 4
    while len(buf) < need:
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([fd], [], [], left)[0]:
        return None
      chunk = os.read(fd, need - len(buf))
      if not chunk:
        return None
      buf += chunk
      if need == 4 and len(buf) == 4:
        need = 4 + struct.unpack(">I", buf)[0]
        if need > max_bytes:
          return None
    try:
      return worker_lib.json.loads(buf[4:])
    except (ValueError, RecursionError):   # a broken worker: killed and restarted
      return None

  def call(self, request: dict, deadline_s: float, max_bytes: int) -> Optional[dict]:
    """The worker's reply, or None when it died or missed the deadline (then killed)."""
    if self.proc is None:
      self._start()
    request = dict(request, uid=self.uid)
    try:
      worker_lib.write_msg(self.proc.stdin.fileno(), request)
      reply = self._read(time.monotonic() + deadline_s, max_bytes)
    except OSError:
      reply = None
    if reply is None:
      self.kill()
    return reply


def default_workers() -> int:
  """SIJ_SANDBOX_WORKERS, else one worker per CPU up to 16 (a worker that imported
  reasoning-gym holds about 150 MB; more workers than that rarely pay on one host)."""
  env = os.environ.get("SIJ_SANDBOX_WORKERS", "")
  if env:
    if not env.isdigit() or not 1 <= int(env) <= UID_BLOCK:
      from selfimprove_jax.errors import UserError  # pylint: disable=import-outside-toplevel
      raise UserError(f"SIJ_SANDBOX_WORKERS={env!r} is not an integer in [1, {UID_BLOCK}]")
    return int(env)
  return max(1, min(16, os.cpu_count() or 1))


class Pool:
  """`workers` sandbox workers; `map` runs requests on them in parallel, in order.

  Each worker is owned by one long-lived thread of the pool: bubblewrap's
  --die-with-parent kills the sandbox when the *thread* that started it ends, so a
  worker must be started, and restarted, by a thread that lives as long as it."""

  def __init__(self, workers: Optional[int] = None, level: str = ""):
    self.iso = isolation_lib.detect(level)
    n = min(workers or default_workers(), UID_BLOCK)
    drop = os.geteuid() == 0
    # UID_BLOCK uids per host process, by pid: two processes share them only when their
    # pids agree modulo 1000 (and under bwrap still cannot see each other's namespaces)
    base = UID_BASE + (os.getpid() % 1000) * UID_BLOCK
    self._workers = [_Worker(self.iso, base + k if drop else None) for k in range(n)]
    self._todo: queue.Queue = queue.Queue()
    self._threads = [threading.Thread(target=self._serve, args=(w,), daemon=True)
                     for w in self._workers]
    for t in self._threads:
      t.start()

  @property
  def size(self) -> int:
    return len(self._workers)

  def _serve(self, w: _Worker) -> None:
    while True:
      job = self._todo.get()
      if job is None:
        w.kill()
        return
      fn, done = job
      try:
        fn(w)
      finally:
        done()

  def _on_each_worker(self, fn) -> None:
    """Runs fn(worker) once on every worker, each on its own thread; waits."""
    latch = threading.Barrier(len(self._workers) + 1)
    errors = []

    def each(w):
      try:
        fn(w)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)
      finally:
        latch.wait()   # holds this thread until every worker has had its turn

    for _ in self._workers:
      self._todo.put((each, lambda: None))
    latch.wait()
    if errors:
      raise errors[0]

  def start(self) -> "Pool":
    """Starts every worker now (otherwise each starts on its first item)."""
    def start_one(w):
      if w.proc is None:
        w._start()   # pylint: disable=protected-access
    self._on_each_worker(start_one)
    return self

  def map(self, requests: Sequence[dict]) -> list[dict]:
    """Runs each request {"job", "args", "limits"}; one reply dict per request."""
    results: list = [None] * len(requests)
    left = [len(requests)]
    cond = threading.Condition()

    def done():
      with cond:
        left[0] -= 1
        cond.notify_all()

    for i, r in enumerate(requests):
      self._todo.put((lambda w, i=i, r=r: results.__setitem__(i, self._one(w, r)), done))
    with cond:
      cond.wait_for(lambda: left[0] == 0)
    return results

  @staticmethod
  def _one(w: _Worker, request: dict) -> dict:
    limits = request["limits"]
    start = time.monotonic()
    try:
      reply = w.call(request, limits["timeout_s"] + PREPARE_MARGIN_S,
                     4 * limits["output_bytes"] + 2 * worker_lib.MAX_VALUE_BYTES + (1 << 16))
    except RuntimeError:   # the worker would not start; the next item tries again
      reply = None
    if reply is None:
      return {"status": "killed", "exit_code": -1, "stdout": "", "stderr": "",
              "wall_s": round(time.monotonic() - start, 4), "value": None,
              "detail": "the sandbox worker died or stopped answering; restarted"}
    return reply

  def close(self) -> None:
    """Stops the workers (each by its own thread) and their threads."""
    for _ in self._threads:
      self._todo.put(None)
    for t in self._threads:
      t.join(timeout=10)


_SHARED: dict = {}


def shared_pool() -> Pool:
  """The process's pool (`default_workers()`), started lazily, closed at exit."""
  if "pool" not in _SHARED:
    _SHARED["pool"] = Pool()
    atexit.register(_SHARED["pool"].close)
  return _SHARED["pool"]
