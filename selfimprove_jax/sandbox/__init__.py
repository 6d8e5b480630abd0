"""Running untrusted model output: Python programs and scorers, isolated and limited.

Model output is hostile input. Anything that executes or evaluates it (code-task tests,
third-party scorers that `eval` or `sympy.parse_expr` an answer) goes through here:

  run_python(source, stdin=..., timeout_s=..., memory_mb=...)  -> Result
  run_python_batch(sources, ...)                               -> [Result]
  run_jobs(job, [args...], limits)                             -> [Result]

Each item runs in a fresh process forked from a long-lived worker (worker.py) inside the
strongest isolation the machine allows (isolation.py: bubblewrap namespaces, else
`unshare`, else a plain process, announced with a warning). Per item: wall-clock and CPU
limits, an address-space limit, a process/thread limit (under a uid of its own when we
are root), a file-size limit, bounded stdout/stderr, a private scratch directory as its
working directory, and every process it left behind killed when it ends. Items are
spread over a pool of workers (one per CPU, up to 16, by default), so a batch costs a
fork per program instead of an interpreter start-up (benchmarks/RESULTS.md).

Status of a Result: ok | error (exception, non-zero exit, no result) | timeout (wall or
CPU limit) | memory | output_limit | killed (a signal, or the worker died). An ok
job's `Result.value` is the worker's JSON; `CallTestsValue`, `AssertsValue` and
`ScoreValue` read it as typed values.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from selfimprove_jax.sandbox.isolation import Isolation, detect
from selfimprove_jax.sandbox.pool import Pool, shared_pool

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed")


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one item may use."""
  timeout_s: float = 5.0          # wall clock
  cpu_s: Optional[float] = None   # CPU seconds (default: timeout_s)
  memory_mb: int = 256            # address space on top of the worker's own
  output_bytes: int = 1 << 16     # kept of stdout and of stderr each; more kills it
  max_procs: int = 16             # processes + threads of the item's uid
  file_bytes: int = 8 << 20       # largest file it may write (in its scratch)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["cpu_s"] = self.timeout_s if self.cpu_s is None else self.cpu_s
    return d


@dataclasses.dataclass(frozen=True)
class Result:
  """How an item ended. `value` is the job's structured result (None unless ok)."""
  status: str
  exit_code: int
  stdout: str
  stderr: str
  wall_s: float
  value: object = None
  detail: str = ""

  @property
  def ok(self) -> bool:
    return self.status == "ok"

  @classmethod
  def from_reply(cls, reply: dict) -> "Result":
    return cls(reply["status"], int(reply["exit_code"]), reply["stdout"], reply["stderr"],
               float(reply["wall_s"]), reply.get("value"), reply.get("detail", ""))


# ----------------------------------------------------------------------------- job values
# The worker's JSON for an ok job (worker.job_call_tests, job_asserts, job_rg_score), read
# into frozen dataclasses on the host. Expected outputs never enter the sandbox: callers
# compare these values with them.


@dataclasses.dataclass(frozen=True)
class CallOutcome:
  """One input of a `call_tests` job: the function's return value (normalized as by
  `worker.normalize`), or the error it raised ("Type: message")."""
  value: object = None
  error: Optional[str] = None

  @property
  def returned(self) -> bool:
    return self.error is None


@dataclasses.dataclass(frozen=True)
class CallTestsValue:
  """An ok `call_tests` job: one outcome per input, in order, or (no outcomes) why
  the source defines no callable of that name."""
  calls: tuple = ()                 # CallOutcome per input
  missing: Optional[str] = None

  @classmethod
  def from_value(cls, value: dict) -> "CallTestsValue":
    if "missing" in value:
      return cls(missing=value["missing"])
    return cls(tuple(CallOutcome(g["value"]) if "value" in g else CallOutcome(error=g["error"])
                     for g in value["results"]))


@dataclasses.dataclass(frozen=True)
class AssertOutcome:
  """One assert line of an `asserts` job: whether it held, else the error it raised."""
  passed: bool
  error: str = ""


@dataclasses.dataclass(frozen=True)
class AssertsValue:
  """An ok `asserts` job: one outcome per assert line, in order."""
  checks: tuple = ()                # AssertOutcome per line

  @classmethod
  def from_value(cls, value: dict) -> "AssertsValue":
    return cls(tuple(AssertOutcome(g.get("passed") is True, g.get("error", ""))
                     for g in value["results"]))


@dataclasses.dataclass(frozen=True)
class ScoreValue:
  """An ok `rg_score` job: the scorer's reward (a non-finite one is sent as 0)."""
  reward: float

  @classmethod
  def from_value(cls, value: dict) -> "ScoreValue":
    return cls(float(value["reward"]))


def run_jobs(job: str, args_list: Sequence[dict], limits: Limits = Limits(),
             pool: Optional[Pool] = None) -> list[Result]:
  """Runs worker job `job` (worker.JOBS: exec, call_tests, asserts, rg_score) once per
  args dict, in parallel on `pool` (default: the shared pool)."""
  pool = pool or shared_pool()
  lim = limits.to_json()
  replies = pool.map([{"job": job, "args": dict(a), "limits": lim} for a in args_list])
  return [Result.from_reply(r) for r in replies]


def run_python_batch(sources: Sequence[str], *, stdin: str = "", limits: Limits = Limits(),
                     pool: Optional[Pool] = None) -> list[Result]:
  """Runs each source as a `__main__` program; the programs run in parallel."""
  return run_jobs("exec", [{"source": s, "stdin": stdin} for s in sources], limits, pool)


def run_python(source: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 256,
               cpu_s: Optional[float] = None, output_bytes: int = 1 << 16,
               max_procs: int = 16, pool: Optional[Pool] = None) -> Result:
  """Runs one Python program in the sandbox and returns how it ended."""
  limits = Limits(timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb,
                  output_bytes=output_bytes, max_procs=max_procs)
  return run_python_batch([source], stdin=stdin, limits=limits, pool=pool)[0]


__all__ = ["AssertOutcome", "AssertsValue", "CallOutcome", "CallTestsValue", "Isolation",
           "Limits", "Pool", "Result", "STATUSES", "ScoreValue", "detect", "run_jobs",
           "run_python", "run_python_batch", "shared_pool"]
