"""Memory accounting for a loop iteration: host resident memory (current and peak),
bytes held by live jax arrays, the device allocator's peak where the backend reports
one, and XLA's own account of a compiled function (arguments, outputs, temporaries).

  with memory.stage("sample", log):      # log: a list of StageMemory
    completions = sampler.generate(...)

The peak RSS is per stage: Linux lets a process reset its high-water mark
(/proc/self/clear_refs), so each stage's figure is its own. Elsewhere the peak is
the process's since start and `StageMemory.peak_is_per_stage` says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Optional

import jax


def _status_bytes(field: str) -> Optional[int]:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024          # reported in kB
  except OSError:
    pass
  return None


def host_rss() -> Optional[int]:
  """Resident set size of this process in bytes (None where /proc is missing)."""
  return _status_bytes("VmRSS")


def host_peak_rss() -> Optional[int]:
  """Peak resident set size since start or since the last `reset_host_peak`."""
  peak = _status_bytes("VmHWM")
  if peak is None:
    import resource
    import sys
    scale = 1 if sys.platform == "darwin" else 1024   # bytes on macOS, kB on Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
  return peak


def reset_host_peak() -> bool:
  """Resets the peak RSS to the current RSS (Linux); False where that is not possible.
  The peak before the reset is folded into `process_peak_rss` first: the kernel keeps
  one high-water mark, which is also what `time -v` and a parent's getrusage read at
  exit, so after a reset only this process still knows its whole-run peak."""
  global _process_peak
  _process_peak = max(_process_peak, host_peak_rss() or 0)
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


_process_peak = 0


def process_peak_rss() -> Optional[int]:
  """Peak resident set size since the process started, across `reset_host_peak`s."""
  now = host_peak_rss()
  return None if now is None else max(now, _process_peak)


def trim_host_heap() -> bool:
  """Hands the C heap's free pages back to the OS (glibc's malloc_trim), so memory a
  finished stage freed (the sampler's KV cache, a train step's temporaries) stops
  counting as resident and the next stage's peak is its own use plus what is alive.
  False where the C library has no malloc_trim (macOS, musl)."""
  global _malloc_trim
  if _malloc_trim is None:
    try:
      import ctypes
      _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
      _malloc_trim = False
  if not _malloc_trim:
    return False
  _malloc_trim(0)
  return True


_malloc_trim = None


def live_array_bytes() -> int:
  """Bytes held by every live jax array on this process's devices (all shards)."""
  total = 0
  for x in jax.live_arrays():
    total += sum(s.data.nbytes for s in x.addressable_shards)
  return total


def device_peak_bytes() -> Optional[int]:
  """The allocator's peak bytes in use on the busiest local device, where the backend
  reports it (GPU, TPU); None on CPU."""
  peaks = []
  for d in jax.local_devices():
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return max(peaks) if peaks else None


def compiled_bytes(compiled) -> dict:
  """XLA's memory account of a compiled function (`jitted.lower(*args).compile()`,
  abstract arguments suffice): argument, output, temporary and aliased (donated)
  bytes, and `peak` = arguments + outputs + temporaries - aliased."""
  m = compiled.memory_analysis()
  out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
         "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes}
  out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
  return out


@dataclasses.dataclass
class StageMemory:
  """One stage's figures in bytes (None: not available on this machine)."""
  name: str
  seconds: float
  host_peak: Optional[int]
  host_end: Optional[int]
  live_end: int
  device_peak: Optional[int]
  peak_is_per_stage: bool


@contextlib.contextmanager
def stage(name: str, log: list):
  """Times the block and appends its StageMemory to `log` (free C-heap pages are handed
  back first, so the peak is this stage's use plus what is alive)."""
  trim_host_heap()
  per_stage = reset_host_peak()
  t0 = time.perf_counter()
  yield
  log.append(StageMemory(name=name, seconds=time.perf_counter() - t0,
                         host_peak=host_peak_rss(), host_end=host_rss(),
                         live_end=live_array_bytes(), device_peak=device_peak_bytes(),
                         peak_is_per_stage=per_stage))
