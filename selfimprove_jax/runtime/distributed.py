"""Several processes, one program: `jax.distributed` set-up and the few host-side
collectives the loop needs.

JAX's multi-controller runtime is the engine: every process runs the same Python
program, the mesh spans the devices of all processes, and each jitted call is one
SPMD program over all of them. What stays ours is host-side agreement: a decision
one process makes from files (is a stage's record file on disk and intact? which
checkpoint is the newest good one?) must be the same on every process, or the
processes call different collectives and hang. `broadcast_json` sends process 0's
answer to everyone; `barrier` waits for all.

A lost process (a pod host preempted, a SIGKILL) must not leave the others waiting
in a collective forever, and a pod has no parent process to stop them: each process
notices by itself. `initialize` starts a watchdog (`_Watchdog`) that heartbeats
through JAX's coordination service and, when a peer's heartbeat stops for
`lost_process_timeout` seconds, prints one line naming it and exits with
EXIT_PROCESS_LOST. Its deadline is on liveness, not on how long a stage takes: the
heartbeat comes from its own thread, so a long compile or sampling stage is never
cut short.

Call `initialize` before anything touches devices (`jax.devices()`, a jit, an array).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Optional

import numpy as np

from selfimprove_jax.errors import UserError

# Environment variables read when the flags are not given (JAX itself reads
# JAX_COORDINATOR_ADDRESS but not the other two).
ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

# Exit code of a process that stopped because another process of the run was lost
# (sysexits' EX_UNAVAILABLE): every process must be relaunched to resume.
EXIT_PROCESS_LOST = 69
# Seconds without a peer's heartbeat before it counts as lost (`--lost_process_timeout`).
DEFAULT_LOST_PROCESS_TIMEOUT = 30.0
# JAX's own heartbeat timeout is ours plus this: its verdict ends a process with a C++
# fatal error and a stack dump, so ours (one line, our exit code) must come first.
_JAX_HEARTBEAT_MARGIN = 30


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def _cluster_detected() -> Optional[str]:
  """Name of a multi-process launcher JAX detects by itself, or None.

  Slurm (srun with several tasks), Open MPI (mpirun -np N) and Cloud TPU VMs: on
  these `jax.distributed.initialize()` finds the coordinator, process count and id
  with no arguments."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ:
    return "slurm"
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "openmpi"
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_PROCESS_ADDRESSES")
  if hosts and len(hosts.split(",")) > 1:
    return "cloud_tpu"
  try:   # a TPU VM of a pod slice: JAX asks the GCE metadata server for the workers
    from jax._src import cloud_tpu_init
    if cloud_tpu_init.running_in_cloud_tpu_vm:
      return "cloud_tpu"
  except ImportError:
    pass
  return None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               lost_process_timeout: float = DEFAULT_LOST_PROCESS_TIMEOUT) -> bool:
  """Starts `jax.distributed` when this is one of several processes; returns whether it did.

  Explicit arguments win, then the environment (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID), then automatic detection (Cloud TPU, Slurm,
  Open MPI). One process (num_processes 1, or nothing set and nothing detected) is a
  no-op, so single-machine runs never open a port. Safe to call twice. With several
  processes, a peer silent for `lost_process_timeout` seconds stops this one (module
  docstring)."""
  import jax
  if jax.distributed.is_initialized():
    return True
  if not lost_process_timeout > 0:
    raise UserError(f"--lost_process_timeout must be > 0 seconds, got {lost_process_timeout}")
  heartbeat = int(lost_process_timeout) + _JAX_HEARTBEAT_MARGIN
  address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
  count = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  index = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if count is not None and count < 1:
    raise UserError(f"--num_processes must be >= 1, got {count}")
  if count == 1:
    return False
  if count is not None and index is not None and not 0 <= index < count:
    raise UserError(f"--process_id {index} is outside [0, {count})")
  explicit = [v is not None for v in (address, count, index)]
  if all(explicit):
    # CPU processes talk through gloo (the default in recent JAX; set it for older).
    if "jax_cpu_collectives_implementation" in jax.config.values:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=index, heartbeat_timeout_seconds=heartbeat)
    _Watchdog.start(lost_process_timeout)
    return True
  detected = _cluster_detected()
  if any(explicit) and detected is None:
    raise UserError("several processes need all of --coordinator_address, --num_processes "
                    "and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                    "JAX_PROCESS_ID); got only "
                    + ", ".join(n for n, e in zip(("address", "num_processes", "process_id"),
                                                 explicit) if e))
  if detected is None:
    return False
  jax.distributed.initialize(coordinator_address=address, num_processes=count,
                             process_id=index, heartbeat_timeout_seconds=heartbeat)
  if jax.process_count() == 1:
    return False
  _Watchdog.start(lost_process_timeout)
  return True


def process_index() -> int:
  import jax
  return jax.process_index()


def is_primary() -> bool:
  """Process 0: the one that writes logs, records, metrics and manifests."""
  return process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reached `barrier(name)`; a no-op for one process."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (e.g. one of them got SIGTERM)."""
  import jax
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def broadcast_json(obj: Any) -> Any:
  """Process 0's `obj` (anything JSON can hold) on every process; others' is ignored.

  Two collectives: the byte length, then the bytes. One process returns `obj` as is."""
  import jax
  if jax.process_count() == 1:
    return obj
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if is_primary() else None
  n = int(multihost_utils.broadcast_one_to_all(np.int32(0 if data is None else data.size)))
  buf = data if data is not None else np.zeros((n,), np.uint8)
  out = multihost_utils.broadcast_one_to_all(buf)
  return json.loads(np.asarray(out, np.uint8).tobytes().decode())


# ------------------------------------------------------------------ lost-process watchdog

_PREFIX = "selfimprove_jax/liveness/"   # keys in the coordination service's key-value store


def _now() -> float:
  return time.monotonic()


class _Watchdog:
  """Heartbeats through the coordination service; stops this process when a peer stops.

  Two daemon threads: `_beat` writes this process's counter and reads everyone's
  keys (round trips that may block while the coordinator is unreachable); `_judge`
  makes no calls, so a blocked round trip cannot stall the verdict. A peer whose
  counter has not moved for `timeout` seconds while the coordinator answers is lost;
  no answer from the coordinator (process 0) for `timeout` seconds means process 0
  is. A peer that raised (`after_failure`) while this process did not raise within
  `timeout` seconds is treated as lost too: this process would wait for it forever.
  The first process to judge publishes its verdict, so the others name the same
  peer; process 0 then waits a moment before leaving, since its exit takes the
  coordination service (and the verdict) with it. JAX's own heartbeat verdict comes
  `_JAX_HEARTBEAT_MARGIN` later, as a backstop. A process that is done (`finished`,
  or `after_failure`) stops judging and is not judged: it leaves through JAX's
  shutdown barrier, where its round trips no longer answer."""

  current: Optional["_Watchdog"] = None

  @classmethod
  def start(cls, timeout: float) -> None:
    import jax
    # the client JAX connected: jax keeps it in a private module (checked on jax 0.10.2);
    # without it, JAX's own heartbeat timeout (a C++ fatal error) is all that stops us
    from jax._src import distributed as jax_distributed
    client = getattr(jax_distributed.global_state, "client", None)
    if cls.current is None and client is not None:
      cls.current = cls(client, jax.process_index(), jax.process_count(), timeout)

  def __init__(self, client, index: int, count: int, timeout: float):
    self.client, self.index, self.count, self.timeout = client, index, count, timeout
    self.interval = min(1.0, timeout / 10)
    self.lock = threading.Lock()
    self.failed = False   # this process raised (`after_failure`)
    self.judged = threading.Event()   # a verdict was reached: this process is exiting
    self.done = threading.Event()     # this process is leaving through JAX's shutdown
    self.peer_done: set = set()
    start = _now()
    self.last_ok = start   # last answer from the coordinator
    self.seen = {p: (None, start) for p in range(count) if p != index}   # counter, when moved
    self.peer_failed: dict = {}   # peer -> when this process first saw its failure
    self.verdict: Optional[dict] = None   # published by whichever process judged first
    for fn in (self._beat, self._judge):
      threading.Thread(target=fn, name=f"selfimprove-watchdog{fn.__name__}", daemon=True).start()

  def _beat(self) -> None:
    n = 0
    while not self.done.is_set():
      n += 1
      try:
        self.client.key_value_set(f"{_PREFIX}alive/{self.index}", str(n), allow_overwrite=True)
        entries = self.client.key_value_dir_get(_PREFIX)
      except Exception:   # no answer: `_judge` counts the silence
        entries = None
      if entries is not None:
        now = _now()
        with self.lock:
          self.last_ok = now
          for key, value in entries:
            kind, _, who = (key[len(_PREFIX):] if key.startswith(_PREFIX) else key).partition("/")
            if kind == "lost":
              self.verdict = json.loads(value)
            elif kind in ("alive", "failed", "done") and who.isdigit() and int(who) in self.seen:
              peer = int(who)
              if kind == "done":
                self.peer_done.add(peer)
              elif kind == "failed":
                self.peer_failed.setdefault(peer, now)
              elif self.seen[peer][0] != value:
                self.seen[peer] = (value, now)
      time.sleep(self.interval)

  def publish(self, name: str, value: str) -> None:
    try:
      self.client.key_value_set(f"{_PREFIX}{name}", value, allow_overwrite=True)
    except Exception:   # the coordinator is gone: the others judge by themselves
      pass

  def _find_lost(self) -> Optional[dict]:
    now = _now()
    with self.lock:
      if self.verdict is not None:
        return self.verdict
      if self.index != 0 and now - self.last_ok > self.timeout:
        return dict(process=0, why=f"no answer from it, the coordinator, for "
                                   f"{now - self.last_ok:.0f} s")
      silent = {p: now - t for p, (_, t) in self.seen.items()
                if now - t > self.timeout and p not in self.peer_done}
      if silent:
        peer = min(silent)
        return dict(process=peer, why=f"no heartbeat for {silent[peer]:.0f} s")
      failed = [p for p, t in self.peer_failed.items() if now - t > self.timeout]
      if failed and not self.failed:
        peer = min(failed)
        return dict(process=peer, why=f"it stopped on an error {now - self.peer_failed[peer]:.0f}"
                                      f" s ago; its own output says which", failed=True)
    return None

  def _judge(self) -> None:
    while not self.done.wait(self.interval):
      verdict = self._find_lost()
      if verdict is None:
        continue
      if self.done.is_set():
        return
      self.judged.set()
      if verdict["process"] != 0 or self.index == 0:   # so the others name the same process
        self.publish("lost", json.dumps(verdict))
      # one write call: no buffer that a forked child or another thread could repeat
      os.write(2, (f"selfimprove-jax: process {verdict['process']} of {self.count} was lost "
                   f"({verdict['why']}); stopping (exit {EXIT_PROCESS_LOST}) - relaunch every "
                   f"process to resume\n").encode())
      if verdict.get("failed"):   # it waits in JAX's shutdown barrier: let it leave cleanly
        try:
          self.client.shutdown()
        except Exception:
          pass
      if self.index == 0:   # the others read the verdict from this process's service
        time.sleep(3 * self.interval + 1)
      os._exit(EXIT_PROCESS_LOST)


def finished() -> None:
  """Call when the run returned on this process: it now leaves through JAX's shutdown
  barrier, waiting there for the others, so its silence is no longer a loss."""
  w = _Watchdog.current
  if w is not None and not w.done.is_set():
    w.publish(f"done/{w.index}", "1")
    w.done.set()


def after_failure() -> None:
  """Call when the run raised on this process, before reporting the error.

  With several processes a peer's death surfaces here first, as a failed collective
  (gloo: "Connection reset by peer"): if a peer is lost, the watchdog says so and
  exits this process (EXIT_PROCESS_LOST) within its timeout. If every peer is still
  heartbeating, the error is this process's own: it is published, so that peers that
  do not raise the same error (and would wait for this process in a collective) stop
  after the timeout instead of waiting, and the caller reports it."""
  w = _Watchdog.current
  if w is None:
    return
  start = _now()
  while _now() - start < w.timeout + 5 * w.interval or w.judged.is_set():
    if w.judged.is_set():   # the watchdog is exiting this process: report nothing more
      time.sleep(w.interval)
      continue
    with w.lock:
      alive = all(t > start + 2 * w.interval or p in w.peer_done
                  for p, (_, t) in w.seen.items())
    if alive:
      break
    time.sleep(w.interval)
  with w.lock:
    w.failed = True
  w.publish(f"failed/{w.index}", "1")
  finished()
