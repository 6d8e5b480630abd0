"""The machine name the benchmarks print beside every figure."""

import os
import platform


def cpu_name() -> str:
  """'CPU <model name> x<cores>' from /proc/cpuinfo (platform's guess elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return f"CPU {line.split(':', 1)[1].strip()} x{os.cpu_count()}"
  except OSError:
    pass
  return f"CPU {platform.processor()} x{os.cpu_count()}"
