"""The sandbox worker: a long-lived process that runs one untrusted item at a time.

This file runs *inside* the isolation (see `isolation.py`), bound there as a single
file, so it imports only the standard library (plus, lazily, reasoning-gym for its
scorers and math-verify for math answers). It is a zygote: each item is run in a fresh
child forked from this warm process, so an item costs a fork (about a millisecond)
instead of an interpreter start (20-30 ms), and a scorer's slow imports (reasoning-gym:
seconds) happen once per worker.

Per item the child, before it runs anything untrusted: starts a new session (its own
process group), moves its stdio onto pipes this worker reads, chdirs into a fresh
scratch directory, sets rlimits (address space, CPU seconds, processes, file size, open
files, no core dumps) and, where the worker is root, drops to a uid of its own (so the
rlimit on processes applies, it cannot signal this worker, and it can write nowhere but
its scratch). This worker enforces the wall clock, caps the output it keeps (killing the
child at the cap), and after every item kills every process left under the item's uid
and deletes its files, so nothing outlives the item.

For the jobs that judge model code (call_tests, asserts) the child is a judge that never
runs that code itself: it forks the solution into a process of its own and trusts only
the plain values it returns (judge.py says why and how).

Protocol (on this process's stdin/stdout): 4-byte big-endian length, then JSON.
Request {"job", "args", "limits", "uid"}; reply {"status", "exit_code", "stdout",
"stderr", "wall_s", "value", "detail"}. Jobs are functions in `JOBS`, chosen by name.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from typing import Optional

if __package__:
  from selfimprove_jax.sandbox import judge
else:   # run as the sandbox's worker: judge.py is bound next to this file
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import judge  # pylint: disable=import-error
  del sys.path[0]

# Exit codes the child uses to tell the worker what happened (a hostile program can
# also exit with them; it gains nothing, as every one of them is a failure).
EXIT_MEMORY = judge.EXIT_MEMORY
EXIT_NO_RESULT = judge.EXIT_NO_RESULT
RESULT_FD = 3          # the item's process writes a job's structured result here
MAX_VALUE_BYTES = judge.MAX_VALUE_BYTES
# the framing and the value form are the judge's (one implementation each)
read_msg, write_msg, normalize = judge.read_msg, judge.write_msg, judge.normalize


# ----------------------------------------------------------------------------- jobs (in the child)
# Untrusted code is compiled with dont_inherit=True: this file's `from __future__ import
# annotations` would otherwise apply to it, which plain Python does not do (annotations
# would become strings, as a HumanEval program's could notice).


def job_exec(args: dict):
  """Runs `source` as `__main__`; the program's own exit status is the result."""
  code = compile(args["source"], "<sandbox>", "exec", dont_inherit=True)
  exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102
  return None


# call_tests and asserts report a verdict on model code: judge.py runs that code in a
# process of its own, so that it cannot reach the channel below (see its docstring).
job_call_tests, job_asserts = judge.job_call_tests, judge.job_asserts


_SCORERS: dict = {}


def prepare_rg_score(args: dict) -> None:
  """In the worker (trusted, cached): the reasoning-gym dataset whose scorer is used."""
  key = (args["generator"], json.dumps(args["config"], sort_keys=True))
  if key not in _SCORERS:
    import reasoning_gym  # pylint: disable=import-outside-toplevel
    dataset = reasoning_gym.create_dataset(args["generator"], seed=0, size=1,
                                           **args["config"])
    # Score the generator's own first item once, here: scorers import and build caches
    # lazily (sympy's parser), and every item's child would otherwise redo that work
    # (30 ms per countdown answer instead of 1). Its text is the generator's, not a model's.
    try:
      entry = dataset[0]
      dataset.score_answer(entry.get("answer") or "", entry)
    except Exception:  # pylint: disable=broad-except
      pass
    _SCORERS[key] = dataset


def job_rg_score(args: dict):
  """reasoning-gym's `score_answer(answer, entry)` on the model's answer."""
  key = (args["generator"], json.dumps(args["config"], sort_keys=True))
  reward = float(_SCORERS[key].score_answer(args["answer"], args["entry"]))
  return {"reward": reward if math.isfinite(reward) else 0.0}


def job_rg_score_many(args: dict):
  """`job_rg_score` of each of `items` ({answer, entry}) in turn, in one child: the
  answers of one batch, screened by the host (reasoning_gym_task.code_in_answer) so
  that none can run code in a scorer that evaluates it. An answer whose scoring raised,
  or gave a reward `job_rg_score` could not report, gets None: the host scores it again
  alone, for its own status and detail."""
  scorer = _SCORERS[(args["generator"], json.dumps(args["config"], sort_keys=True))]
  rewards = []
  for item in args["items"]:
    try:
      reward = float(scorer.score_answer(item["answer"], item["entry"]))
    except Exception:  # pylint: disable=broad-except
      rewards.append(None)
      continue
    reward = reward if math.isfinite(reward) else 0.0
    rewards.append(reward if 0.0 <= reward <= 1.0 else None)
  return {"rewards": rewards}


_MATH_VERIFY: dict = {}


def prepare_math_verify(args: dict) -> None:
  """In the worker (trusted, once): imports math-verify and checks one fixed pair, so
  its parser (ANTLR, sympy) is loaded before items fork instead of in every child."""
  if "module" not in _MATH_VERIFY:
    import logging  # pylint: disable=import-outside-toplevel
    import math_verify  # pylint: disable=import-outside-toplevel
    # it warns on every call that its own signal-based timeouts are off: our item
    # limits replace them (a child's alarm could not stop a C-level sympy loop anyway)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    math_verify.verify(math_verify.parse("$1$", parsing_timeout=None),
                       math_verify.parse("$1$", parsing_timeout=None), timeout_seconds=None)
    _MATH_VERIFY["module"] = math_verify


def job_math_verify(args: dict):
  """math-verify's judgement of the model's `answer` against the `gold` reference, both
  LaTeX (the host wraps them in \\boxed{}): {"equal": bool}. It parses and simplifies
  model text with sympy, which can take without bound (9^{9^{9^{9}}}): the item's wall
  clock and memory limits stop it."""
  mv = _MATH_VERIFY["module"]
  gold = mv.parse(args["gold"], parsing_timeout=None)
  answer = mv.parse(args["answer"], parsing_timeout=None)
  return {"equal": bool(gold) and bool(answer)
                   and mv.verify(gold, answer, timeout_seconds=None) is True}


JOBS = {"exec": job_exec, "call_tests": job_call_tests, "asserts": job_asserts,
        "rg_score": job_rg_score, "rg_score_many": job_rg_score_many,
        "math_verify": job_math_verify}
PREPARE = {"rg_score": prepare_rg_score, "rg_score_many": prepare_rg_score,
           "math_verify": prepare_math_verify}
# The shape of an ok value of the jobs whose child runs a scorer on model text in its
# own process (a scorer that evals the text hands the child to it): anything else is an
# error for that item, never a value the host has to survive. A well-formed forged value
# still passes: see judge.py for the jobs whose verdicts cannot be forged.
RESULT_SHAPES = {
    "rg_score": lambda v: type(v) is dict and set(v) == {"reward"}
    and type(v["reward"]) in (int, float) and 0.0 <= v["reward"] <= 1.0,
    "rg_score_many": lambda v: type(v) is dict and set(v) == {"rewards"}
    and type(v["rewards"]) is list and all(
        r is None or (type(r) in (int, float) and 0.0 <= r <= 1.0) for r in v["rewards"]),
    "math_verify": lambda v: type(v) is dict and set(v) == {"equal"}
    and type(v["equal"]) is bool,
}


# ----------------------------------------------------------------------------- the child


def _vm_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _processes_of(uid: int) -> int:
  """Processes and threads of `uid` now (what RLIMIT_NPROC counts)."""
  n = 0
  for name in os.listdir("/proc"):
    try:
      if name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid:
        n += len(os.listdir(f"/proc/{name}/task"))
    except OSError:
      pass
  return n


def _limit(kind: int, value: int) -> None:
  soft, hard = resource.getrlimit(kind)
  value = value if hard == resource.RLIM_INFINITY else min(value, hard)
  resource.setrlimit(kind, (value, value))


def _enter_child(limits: dict, uid, scratch: str, fds: dict) -> None:
  """Everything the child does before running untrusted code."""
  os.setsid()
  for target, fd in ((0, fds["stdin"]), (1, fds["stdout"]), (2, fds["stderr"]),
                     (RESULT_FD, fds["result"])):
    os.dup2(fd, target)
  os.closerange(RESULT_FD + 1, 1 << 16)
  os.chdir(scratch)
  os.environ.clear()
  os.environ.update({"HOME": scratch, "TMPDIR": scratch, "PATH": "/usr/bin:/bin",
                     "LANG": "C.UTF-8"})
  for sig in (signal.SIGPIPE, signal.SIGXFSZ):
    signal.signal(sig, signal.SIG_DFL)
  cpu = max(1, math.ceil(limits["cpu_s"]))
  resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
  _limit(resource.RLIMIT_AS, _vm_bytes() + limits["memory_mb"] * (1 << 20))
  _limit(resource.RLIMIT_FSIZE, limits["file_bytes"])
  _limit(resource.RLIMIT_NOFILE, 64)
  _limit(resource.RLIMIT_CORE, 0)
  if uid is not None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    # per-uid count: the item's own uid holds only the item's processes and threads
    _limit(resource.RLIMIT_NPROC, limits["max_procs"])
  elif os.getuid() != 0:
    # no uid of its own: the per-uid count includes the user's other processes
    _limit(resource.RLIMIT_NPROC, _processes_of(os.getuid()) + limits["max_procs"])
  sys.stdin = open(0, closefd=False)   # noqa: SIM115
  sys.stdout = open(1, "w", closefd=False)   # noqa: SIM115
  sys.stderr = open(2, "w", closefd=False)   # noqa: SIM115


def _run_child(req: dict, scratch: str, fds: dict) -> None:
  """The forked child: never returns."""
  code = 1
  try:
    _enter_child(req["limits"], req.get("uid"), scratch, fds)
    value = JOBS[req["job"]](req["args"])
    data = json.dumps({"value": value}).encode()
    os.write(RESULT_FD, data[:MAX_VALUE_BYTES])
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if req["job"] != "exec":
      code = EXIT_NO_RESULT     # a scorer or test harness must return, not exit
    if e.code is not None and not isinstance(e.code, int):
      print(e.code, file=sys.stderr)
  except MemoryError:
    code = EXIT_MEMORY
  except BaseException:  # pylint: disable=broad-except
    try:
      traceback.print_exc(limit=5)
    except BaseException:  # pylint: disable=broad-except
      pass
    code = 1
  finally:
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except BaseException:  # pylint: disable=broad-except
        pass
    os._exit(code & 0xFF)


# ----------------------------------------------------------------------------- the worker


def sweep(uid: int) -> int:
  """Kills every process running as `uid` (an item's own uid: nothing else runs under
  it) until none is left, forks racing the kills included; returns how many."""
  me, killed = os.getpid(), 0
  for _ in range(200):
    found = []
    for name in os.listdir("/proc"):
      if not name.isdigit() or int(name) in (me, 1):
        continue
      try:
        with open(f"/proc/{name}/status") as f:
          owner = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
      except (OSError, StopIteration, ValueError):
        continue
      if owner == uid:
        found.append(int(name))
    if not found:
      return killed
    for pid in found:
      try:
        os.kill(pid, signal.SIGKILL)
        killed += 1
      except OSError:
        pass
    time.sleep(0.001)
  return killed


def _status(wait_status, timed_out: bool, over_output: bool, value) -> tuple[str, int, str]:
  """(status, exit code, detail) of a finished child."""
  if over_output:
    return "output_limit", -1, "output over the limit; killed"
  if timed_out:
    return "timeout", -1, "wall-clock limit reached; killed"
  if os.WIFSIGNALED(wait_status):
    sig = os.WTERMSIG(wait_status)
    try:
      name = signal.Signals(sig).name
    except ValueError:
      name = str(sig)
    if sig == signal.SIGXCPU:
      return "timeout", -sig, "CPU-time limit reached"
    if sig == signal.SIGXFSZ:
      return "error", -sig, "file-size limit reached"
    return "killed", -sig, f"killed by {name}"
  code = os.WEXITSTATUS(wait_status)
  if code == EXIT_MEMORY:
    return "memory", code, "memory limit reached (MemoryError)"
  if code == EXIT_NO_RESULT:
    return "error", code, "exited before returning a result"
  if code != 0:
    return "error", code, f"exit code {code}"
  if value is None:
    return "error", code, "no result"
  return "ok", 0, ""


def _error_reply(detail: str) -> dict:
  """The reply for an item that never ran (its preparation or the worker failed)."""
  return {"status": "error", "exit_code": -1, "stdout": "", "stderr": "", "wall_s": 0.0,
          "value": None, "detail": detail[:500]}


@dataclasses.dataclass
class _Child:
  """A forked item as the worker watches it: the worker's ends of its pipes, what it
  wrote so far, and how it ended."""
  pid: int
  start: float                   # monotonic time of the fork
  stdin: Optional[int]           # write end of its stdin (None once closed)
  stdin_data: bytes              # still to send
  readers: dict                  # open read end -> "stdout" | "stderr" | "result"
  read_fds: list                 # every read end, closed at the end
  pidfd: Optional[int]           # readable when the child exits (None: poll)
  out: dict = dataclasses.field(default_factory=lambda: {
      k: bytearray() for k in ("stdout", "stderr", "result")})
  wait_status: Optional[int] = None
  timed_out: bool = False
  over_output: bool = False


def run_item(req: dict, scratch_root: str) -> dict:
  """Forks a child for one request, watches it, cleans up after it."""
  if req["job"] in PREPARE:
    try:
      PREPARE[req["job"]](req["args"])
    except Exception as e:  # pylint: disable=broad-except
      return _error_reply(f"prepare failed: {e!r}")
  # Everything alive now is the worker's: move it out of the collector's reach, so the
  # child's collections do not touch (and copy-on-write) the whole inherited heap.
  gc.freeze()
  uid = req.get("uid")
  scratch = tempfile.mkdtemp(prefix="item_", dir=scratch_root)
  # The item's files go whatever happens below: a result nested too deep to parse
  # raises RecursionError out of `_reply`.
  try:
    if uid is not None:
      os.chown(scratch, uid, uid)
    child = _fork_child(req, scratch)
    try:
      _watch(child, req["limits"])
    finally:
      _reap(child, uid)
    return _reply(req, child)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
    _clean_shared_dirs(uid)


def _fork_child(req: dict, scratch: str) -> _Child:
  """Forks the child (which runs the item in `scratch`, see `_run_child`) on fresh
  pipes; the worker keeps their other ends, non-blocking."""
  stdin_data = req["args"].get("stdin", "").encode()
  pipes = {k: os.pipe() for k in ("stdin", "stdout", "stderr", "result")}
  child_fds = {"stdin": pipes["stdin"][0], "stdout": pipes["stdout"][1],
               "stderr": pipes["stderr"][1], "result": pipes["result"][1]}
  start = time.monotonic()
  pid = os.fork()
  if pid == 0:
    _run_child(req, scratch, child_fds)
  for fd in child_fds.values():
    os.close(fd)
  readers = {pipes[k][0]: k for k in ("stdout", "stderr", "result")}
  for fd in readers:
    os.set_blocking(fd, False)
  os.set_blocking(pipes["stdin"][1], False)
  # readable when the child exits: the watch loop wakes at once instead of polling
  pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
  return _Child(pid=pid, start=start, stdin=pipes["stdin"][1], stdin_data=stdin_data,
                readers=readers, read_fds=list(readers), pidfd=pidfd)


def _watch(child: _Child, limits: dict) -> None:
  """Feeds the child its stdin and reads its pipes until it has exited and they are
  quiet, the wall clock runs out, or its stdout or stderr goes over the cap."""
  deadline = child.start + limits["timeout_s"]
  while True:
    if child.wait_status is None:
      done, st = os.waitpid(child.pid, os.WNOHANG)
      if done:
        child.wait_status = st
    exited = child.wait_status is not None
    if exited and not child.readers:
      return
    now = time.monotonic()
    if now >= deadline:
      child.timed_out = not exited
      return
    if exited:
      # the child is gone: whatever still holds its pipes is a leftover; stop reading
      # once the pipes are quiet
      deadline = min(deadline, now + 0.05)
    wfds = [child.stdin] if child.stdin is not None else []
    rfds = list(child.readers) + ([child.pidfd] if child.pidfd is not None and not exited
                                  else [])
    r, w, _ = select.select(rfds, wfds, [], min(0.01 if child.pidfd is None else 0.25,
                                                max(0.0, deadline - now)))
    if w:
      _feed_stdin(child)
    _drain(child, r, limits["output_bytes"])
    if child.over_output:
      return


def _feed_stdin(child: _Child) -> None:
  """Writes the next piece of the child's stdin; closes it once all is sent (or the
  child stopped reading)."""
  try:
    n = os.write(child.stdin, child.stdin_data[:65536])
    child.stdin_data = child.stdin_data[n:]
  except OSError:
    child.stdin_data = b""
  if not child.stdin_data:
    os.close(child.stdin)
    child.stdin = None


def _drain(child: _Child, ready: list, output_bytes: int) -> None:
  """Reads the ready pipes, keeping up to each stream's cap; stdout or stderr past
  `output_bytes` marks the child over_output (a result past its cap is cut)."""
  for fd in ready:
    if fd not in child.readers:
      continue
    key = child.readers[fd]
    try:
      chunk = os.read(fd, 65536)
    except OSError:
      chunk = b""
    if not chunk:
      del child.readers[fd]
      continue
    cap = MAX_VALUE_BYTES if key == "result" else output_bytes
    room = cap - len(child.out[key])
    child.out[key] += chunk[:max(0, room)]
    if len(chunk) > room:
      child.over_output = key != "result"
      return


def _reap(child: _Child, uid) -> None:
  """Kills the child if it still runs, then every process left under the item's uid
  (or in its process group), and closes the worker's ends of its pipes."""
  if child.wait_status is None:
    try:
      os.killpg(child.pid, signal.SIGKILL)
    except OSError:
      pass
    _, child.wait_status = os.waitpid(child.pid, 0)
  if uid is not None:
    sweep(uid)
  else:
    _kill_group(child.pid)
  extra = [fd for fd in (child.stdin, child.pidfd) if fd is not None]
  for fd in child.read_fds + extra:
    os.close(fd)


def _reply(req: dict, child: _Child) -> dict:
  """The reply for a reaped child: its status, output and (when ok) the job's value."""
  wall = time.monotonic() - child.start
  value = None
  if child.out["result"]:
    try:
      value = json.loads(bytes(child.out["result"]))["value"]
    except (ValueError, KeyError, TypeError, RecursionError):   # an exec program's bomb
      value = None
  if value is not None and not RESULT_SHAPES.get(req["job"], lambda v: True)(value):
    value = None      # reported as "no result"
  status, code, detail = _status(child.wait_status, child.timed_out, child.over_output,
                                 value if req["job"] != "exec" else 0)
  if req["job"] == "exec" and status == "ok":
    value = None
  return {"status": status, "exit_code": code, "wall_s": round(wall, 4),
          "stdout": child.out["stdout"].decode("utf-8", "replace"),
          "stderr": child.out["stderr"].decode("utf-8", "replace"),
          "value": value if status == "ok" else None, "detail": detail}


def _kill_group(pid: int) -> None:
  try:
    os.killpg(pid, signal.SIGKILL)
  except OSError:
    pass


def _clean_shared_dirs(uid) -> None:
  """Files the item left in world-writable places (/dev/shm, /tmp) go with it."""
  if uid is None:
    return
  for root in ("/dev/shm", tempfile.gettempdir()):
    try:
      names = os.listdir(root)
    except OSError:
      continue
    for name in names:
      path = os.path.join(root, name)
      try:
        if os.lstat(path).st_uid == uid:
          shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) \
              else os.unlink(path)
      except OSError:
        pass


# Imported once here, inherited by every item: saves each item their import, and at the
# weaker isolation levels an item's uid may not be able to read a Python installation
# under a private home directory (pyenv in /root), so it could import nothing new.
PRELOAD = ("bisect", "collections", "copy", "dataclasses", "decimal", "fractions",
           "functools", "heapq", "itertools", "math", "operator", "random", "re",
           "statistics", "string", "typing", "unicodedata")


def main() -> None:
  for name in PRELOAD:
    try:
      __import__(name)
    except ImportError:
      pass
  # no item can ptrace this process or open its /proc/PID/{fd,mem} (at the weaker levels
  # without root, items run under this process's uid)
  judge.not_dumpable()
  scratch_root = tempfile.mkdtemp(prefix="sij_sandbox_")
  os.chmod(scratch_root, 0o711)     # items may enter their own dir, not list others
  # the protocol channel is private to this process: children get fresh stdio
  proto_in, proto_out = os.dup(0), os.dup(1)
  devnull = os.open(os.devnull, os.O_RDWR)
  os.dup2(devnull, 0)
  os.dup2(devnull, 1)
  write_msg(proto_out, {"ready": True, "pid": os.getpid()})
  while True:
    req = read_msg(proto_in)
    if req is None:
      break
    try:
      reply = run_item(req, scratch_root)
    except Exception as e:  # pylint: disable=broad-except
      reply = _error_reply(f"worker error: {e!r}")
    write_msg(proto_out, reply)
  shutil.rmtree(scratch_root, ignore_errors=True)


if __name__ == "__main__":
  main()
