"""JAX's persistent compilation cache, on by default for the CLI's commands.

A resume, an `eval` or a `generate` compiles the same programs as the run before it;
with the cache a second start loads them from disk instead (benchmarks/RESULTS.md).
Where it lives, in order: the user's own JAX_COMPILATION_CACHE_DIR (JAX reads it
itself); SELFIMPROVE_JAX_COMPILATION_CACHE=<dir>, or =off to turn it off;
$XDG_CACHE_HOME/selfimprove_jax/jax, else ~/.cache/selfimprove_jax/jax.

A cache is never a reason to fail: an entry that is corrupt, truncated (a process
killed while writing it) or from another jax version is a miss and is compiled again.
JAX reports each unreadable entry as a warning; `enable` folds them into one line.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional

from selfimprove_jax.errors import UserError

ENV = "SELFIMPROVE_JAX_COMPILATION_CACHE"
_OFF = ("off", "0", "false", "no", "none")
# A size limit turns on JAX's LRU eviction, and with it the file lock JAX takes around
# every read and write of an entry: without it an entry is written in place, so a run
# could read another run's half-written entry (jax/_src/lru_cache.py, jax 0.10).
DEFAULT_MAX_BYTES = 4 << 30
_UNREADABLE = ("Error reading persistent compilation cache entry",)
_folding = False


def cache_root() -> str:
  """The per-user directory of this package's caches: $XDG_CACHE_HOME/selfimprove_jax,
  else ~/.cache/selfimprove_jax (compiled programs in jax/, GGUF weights in weights/)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "selfimprove_jax")


def default_dir() -> str:
  return os.path.join(cache_root(), "jax")


def chosen_dir() -> Optional[str]:
  """The directory the cache should use, None when turned off; UserError for a
  SELFIMPROVE_JAX_COMPILATION_CACHE that names something other than a directory."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  return dir_from_env(ENV, "JAX's compilation cache", default_dir())


def dir_from_env(env: str, what: str, default: str) -> Optional[str]:
  """The directory a per-user cache's variable `env` names (`default` when unset, None
  when off); UserError naming `what` the cache holds when it names something other
  than a directory. The compilation and weights caches read their variables so."""
  want = os.environ.get(env, "").strip()
  if want.lower() in _OFF:
    return None
  if want and os.path.exists(want) and not os.path.isdir(want):
    raise UserError(f"{env}={want} is not a directory; name a directory for {what}, "
                    f"or set it to off")
  return os.path.expanduser(want) if want else default


def enable() -> Optional[str]:
  """Turns the persistent compilation cache on (before anything compiles) and returns
  its directory, or None when it is off. A default directory that cannot be created
  (a read-only home) leaves the cache off with one line; a directory the user named
  that cannot be created is a UserError."""
  path = chosen_dir()
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    if os.environ.get(ENV, "").strip() or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
      raise UserError(f"{ENV}: cannot create the compilation cache {path} ({e.strerror}); "
                      f"name a writable directory, or set {ENV}=off") from None
    print(f"selfimprove-jax: compilation cache off: cannot create {path} ({e.strerror}); "
          f"set {ENV} to a writable directory", file=sys.stderr)
    return None
  import jax
  jax.config.update("jax_compilation_cache_dir", path)
  # every program: a tiny model's compile takes well under JAX's 1 s default, and the
  # many small ones are what a CPU start-up spends its time on
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
    jax.config.update("jax_compilation_cache_max_size", DEFAULT_MAX_BYTES)
  _fold_unreadable_warnings(path)
  return path


def _fold_unreadable_warnings(path: str) -> None:
  """JAX warns once per unreadable entry (and the warning's text differs per program,
  so Python's once-per-message filter shows every one): show the first as one line
  naming the cache, drop the rest. Other warnings pass through untouched."""
  global _folding
  if _folding:   # main() called again in one process (tests): already in place
    return
  _folding = True
  shown = []
  previous = warnings.showwarning

  def show(message, category, filename, lineno, file=None, line=None):
    text = str(message)
    if not text.startswith(_UNREADABLE):
      return previous(message, category, filename, lineno, file, line)
    if not shown:
      shown.append(text)
      print(f"selfimprove-jax: warning: the compilation cache {path} has an unreadable "
            f"entry (corrupt or from another jax); compiling instead "
            f"({text.split(': ', 1)[-1][:120]})", file=sys.stderr)
  warnings.showwarning = show
