"""The reliability matrix: what a run survives, tried from outside on the tiny config.

Each case does to a run what a machine, a scheduler or a user does to it, then checks
the promise that case rests on, and prints one line: `held` or `NOT HELD` (with why).

  kills        SIGKILL at random moments of a run (seeded), then the same command again:
               metrics.jsonl and the final train state equal an uninterrupted run's,
               bit for bit
  saves        SIGKILL while a checkpoint is written, just after Orbax's save (manifest
               not updated) and just after the manifest (metrics.jsonl row not written)
  corruption   damaged workdir files (manifest, stage records, checkpoint bytes, a
               symlink or a foreign folder where a checkpoint goes, metrics.jsonl, a
               newest checkpoint's metadata that `eval` reads): the run falls back or
               rebuilds, and ends as an uninterrupted run
  bad_input    the bad-input table (tests/test_bad_input.py): one line each
  user_files   a user's directory is refused, adopted only without clashes, and left as
               it was; names with '@', spaces and non-ASCII letters work
  lost_process two processes joined by jax.distributed, one SIGKILLed mid-run: the other
               exits on its own within the stated bound, with one line, and relaunching
               both resumes to an uninterrupted run's result
  devices      a run stopped on 8 devices resumes on 1, and one stopped on 1 on 8: the
               same sampled tokens, weights equal to float rounding
  sandbox      hostile programs as model code: none succeeds or harms the worker, and a
               correct program that writes a 1 MB file passes after them

  python benchmarks/reliability.py                     # everything (~20 min, 2-core CPU)
  python benchmarks/reliability.py --only kills,saves --kills 3

Exit status: 0 when every case held, 1 otherwise. The summary of the last full run is in
benchmarks/RESULTS.md ("Reliability matrix").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # this checkout's package, as the CLI runs below use it
TINY = os.path.join(ROOT, "configs", "tiny.py")
SECTIONS = ("kills", "saves", "corruption", "bad_input", "user_files", "lost_process",
            "devices", "sandbox")
FAULT_ENV = "SELFIMPROVE_JAX_FAULT"
LOST_PROCESS_BOUND_S = 120   # what the matrix allows a survivor to take to exit


# ----------------------------------------------------------------------------- running


class Matrix:
  """Runs the CLI in subprocesses sharing one compilation cache, and tallies cases."""

  def __init__(self, out: str):
    self.out, self.cache = out, os.path.join(out, "jax_cache")
    self.rows: list[tuple[str, str, bool, str]] = []
    self._n = 0

  def env(self, devices: int = 8, fault: str = None) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=self.cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", HF_HUB_OFFLINE="1")
    env.pop(FAULT_ENV, None)
    if fault:
      env[FAULT_ENV] = fault
    return env

  def workdir(self, name: str) -> str:
    self._n += 1
    return os.path.join(self.out, f"{self._n:02d}_{name}")

  def cmd(self, workdir: str, *args) -> list[str]:
    return [sys.executable, "-m", "selfimprove_jax.cli", "run", "--config", TINY,
            "--workdir", workdir, *args]

  def run(self, workdir: str, *args, devices: int = 8, fault: str = None,
          timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(self.cmd(workdir, *args), env=self.env(devices, fault),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)

  def cli(self, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfimprove_jax.cli", *args],
                          env=self.env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)

  def case(self, section: str, name: str, check) -> None:
    """Runs `check()` (returns None when the promise held, else why not) and prints it."""
    start = time.monotonic()
    try:
      why = check()
    except Exception as e:   # a case that crashes the matrix did not hold
      why = f"{type(e).__name__}: {e}"
    held = why is None
    self.rows.append((section, name, held, why or ""))
    print(f"{'held    ' if held else 'NOT HELD'}  {section:12s} {name:44s} "
          f"{time.monotonic() - start:6.1f} s{'' if held else '  ' + why}", flush=True)


def results(workdir: str) -> list[dict]:
  """metrics.jsonl without the machine's measurements (wall time, peak memory)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return [{k: v for k, v in r.items() if k != "seconds" and not k.startswith("peak_rss")}
          for r in rows]


def final_arrays(workdir: str) -> tuple[int, list]:
  import jax
  from absl import logging
  logging.set_verbosity(logging.ERROR)   # Orbax's notes on reading a checkpoint
  from selfimprove_jax.runtime.checkpoint import Checkpointer
  ckpt = Checkpointer(workdir, read_only=True, log=lambda _: None)
  try:
    last = ckpt.steps()[-1]
    return last, [np.asarray(x) for x in jax.tree.leaves(ckpt.restore_arrays(last))]
  finally:
    ckpt.close()


def same_run(workdir: str, reference: str, atol: float = 0.0) -> str:
  """None when `workdir` ended as `reference` did (rows equal; arrays equal, or within
  `atol`), else what differs."""
  a, b = results(workdir), results(reference)
  if atol == 0.0 and a != b:
    bad = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) if len(a) == len(b) else None
    return f"metrics.jsonl differs (rows {len(a)} vs {len(b)}, first differing row {bad})"
  if [r["iteration"] for r in a] != [r["iteration"] for r in b]:
    return "different iterations in metrics.jsonl"
  (la, xa), (lb, xb) = final_arrays(workdir), final_arrays(reference)
  if la != lb:
    return f"last checkpoint {la} vs {lb}"
  diff = max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
             for x, y in zip(xa, xb))
  if diff > atol:
    return f"final weights differ by up to {diff:.3g}"
  return None


def _ok(p: subprocess.CompletedProcess, what: str = "resumed run") -> str:
  return None if p.returncode == 0 else (f"{what} exited {p.returncode}: "
                                         f"{(p.stderr.strip().splitlines() or [''])[-1][:200]}")


def _garbage(path: str) -> None:
  with open(path, "wb") as f:
    f.write(b"\x00{not json")


# ----------------------------------------------------------------------------- sections


def kills(m: Matrix, ref: str, ref_seconds: float, n: int, rng: random.Random) -> None:
  for i in range(n):
    delay = rng.uniform(2.0, max(3.0, 0.95 * ref_seconds))

    def check(delay=delay):
      w = m.workdir(f"kill_{delay:.1f}s")
      p = subprocess.Popen(m.cmd(w), env=m.env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd=ROOT)
      try:
        p.wait(timeout=delay)
      except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
      return _ok(m.run(w)) or same_run(w, ref)
    m.case("kills", f"SIGKILL at {delay:.1f} s", check)


def saves(m: Matrix, ref: str) -> None:
  for fault in ("checkpoint_write@0", "checkpoint_write@2", "checkpoint@1", "saved@1",
                "saved@2"):
    def check(fault=fault):
      w = m.workdir(fault.replace("@", "_"))
      killed = m.run(w, fault=fault)
      if killed.returncode != -9:
        return f"the fault did not kill the run (exit {killed.returncode})"
      return _ok(m.run(w)) or same_run(w, ref)
    m.case("saves", f"SIGKILL at {fault}", check)


def corruption(m: Matrix, ref: str) -> None:
  def on_killed(name, fault, damage, expect=None):
    """A run killed at `fault`, damaged by `damage(workdir)`, then resumed."""
    def check():
      w = m.workdir(name)
      killed = m.run(w, fault=fault)
      if killed.returncode != -9:
        return f"the fault did not kill the run (exit {killed.returncode})"
      damage(w)
      resumed = m.run(w)
      if resumed.returncode == 0 and expect and expect not in resumed.stdout + resumed.stderr:
        return f"no line saying {expect!r}"
      return _ok(resumed) or same_run(w, ref)
    m.case("corruption", name, check)

  def on_finished(name, damage, then=None):
    """A copy of the finished reference, damaged, then the same command (or `then`)."""
    def check():
      w = m.workdir(name)
      shutil.copytree(ref, w, symlinks=True)
      damage(w)
      return then(w) if then else (_ok(m.run(w)) or same_run(w, ref))
    m.case("corruption", name, check)

  def flip(w, step="2"):
    d = os.path.join(w, "checkpoints", step, "state")
    target = max((os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs),
                 key=os.path.getsize)
    with open(target, "r+b") as f:
      f.seek(os.path.getsize(target) // 2)
      b = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([b[0] ^ 0xFF]))

  def drop_last_line(path):
    with open(path) as f:
      lines = f.readlines()
    with open(path, "w") as f:
      f.writelines(lines[:-1])

  def cut_in_half(path):
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[:len(data) // 2])

  def foreign(w, link: bool):
    path = os.path.join(w, "checkpoints", "2")
    if link:
      os.symlink(os.path.join(w, "checkpoints", "1"), path)
    else:
      os.makedirs(path)
      with open(os.path.join(path, "mine.txt"), "w") as f:
        f.write("a user's file")

  def eval_newest_metadata_zeroed(w):
    with open(os.path.join(w, "checkpoints", "2", "meta", "metadata"), "wb") as f:
      f.write(b"\0" * 4096)
    p = m.cli("eval", "--model", w)
    return _ok(p, "eval")

  on_killed("manifest.json garbage", "checkpoint_write@2",
            lambda w: _garbage(os.path.join(w, "manifest.json")), expect="rebuilt it from")
  on_killed("manifest.json deleted", "optimize@2",
            lambda w: os.remove(os.path.join(w, "manifest.json")))
  on_killed("stage index garbage", "optimize@2",
            lambda w: _garbage(os.path.join(w, "records", "iter_0002", "stages.json")))
  on_killed("acquire records truncated", "optimize@2",
            lambda w: cut_in_half(os.path.join(w, "records", "iter_0002",
                                               "acquire.parquet")))
  on_killed("symlink where checkpoint 2 goes", "optimize@2", lambda w: foreign(w, True),
            expect="moved it to")
  on_killed("user folder where checkpoint 2 goes", "optimize@2",
            lambda w: foreign(w, False), expect="moved it to")
  on_finished("newest checkpoint's bytes flipped", flip)
  on_finished("metrics.jsonl deleted", lambda w: os.remove(os.path.join(w, "metrics.jsonl")))
  on_finished("metrics.jsonl last row lost",
              lambda w: drop_last_line(os.path.join(w, "metrics.jsonl")))
  on_finished("eval: newest metadata zeroed", lambda w: None, then=eval_newest_metadata_zeroed)


def bad_input(m: Matrix) -> None:
  def check():
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.join(ROOT, "tests", "test_bad_input.py")],
                       env=m.env(), capture_output=True, text=True, cwd=ROOT, timeout=1800)
    tail = (p.stdout.strip().splitlines() or [""])[-1]
    return None if p.returncode == 0 else f"pytest: {tail}"
  m.case("bad_input", "the bad-input table (one line each)", check)


def user_files(m: Matrix, ref: str) -> None:
  def snapshot(d):
    return {os.path.relpath(os.path.join(r, n), d): open(os.path.join(r, n), "rb").read()
            for r, _, ns in os.walk(d) for n in ns}

  def refused_untouched():
    w = m.workdir("users_dir")
    os.makedirs(w)
    for name, text in (("notes.txt", "mine"), ("manifest.json", '{"mine": 1}'),
                       ("metrics.jsonl", '{"loss": 1}\n'), ("heldout.png", "png")):
      with open(os.path.join(w, name), "w") as f:
        f.write(text)
    before = snapshot(w)
    plain, adopt = m.run(w), m.run(w, "--adopt_workdir")
    if plain.returncode != 2 or adopt.returncode != 2:
      return f"not refused (exit {plain.returncode}, adopt {adopt.returncode})"
    if len([l for l in plain.stderr.splitlines() if l.strip()]) != 1:
      return "the refusal is not one line"
    return None if snapshot(w) == before else "the user's files changed"

  def adopted():
    w = m.workdir("adopted")
    os.makedirs(w)
    with open(os.path.join(w, "notes.txt"), "w") as f:
      f.write("mine")
    p = m.run(w, "--adopt_workdir")
    if open(os.path.join(w, "notes.txt")).read() != "mine":
      return "the user's file changed"
    return _ok(p, "run") or same_run(w, ref)

  def odd_names():
    w = os.path.join(m.workdir("names"), "exp@1 ü")
    os.makedirs(os.path.dirname(w))
    p = m.run(w)
    if p.returncode:
      return _ok(p, "run")
    for spec in (w, f"{w}@1"):
      e = m.cli("eval", "--model", spec)
      if e.returncode:
        return _ok(e, f"eval --model {spec!r}")
    return same_run(w, ref)

  m.case("user_files", "non-empty user dir refused, untouched", refused_untouched)
  m.case("user_files", "--adopt_workdir keeps the user's file", adopted)
  m.case("user_files", "workdir 'exp@1 ü' (run, eval DIR, DIR@1)", odd_names)


def lost_process(m: Matrix, ref: str) -> None:
  """Two processes (4 devices each, the reference's 8 in all), started as a pod starts
  them: no launcher that stops the rest."""
  def launch(w, fault=None):
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    procs = []
    for i in range(2):
      env = m.env(devices=4, fault=fault if i == 1 else None)
      procs.append(subprocess.Popen(
          m.cmd(w, "--coordinator_address", f"localhost:{port}", "--num_processes", "2",
                "--process_id", str(i)),
          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    return procs

  def check(victim: int, fault: str):
    w = m.workdir(f"lost_{victim}_{fault.replace('@', '_')}")
    procs = launch(w, fault if victim == 1 else None)
    if victim == 0:   # the coordinator's host: killed from outside mid-run
      time.sleep(25)
      procs[0].kill()
    killed_at = None
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
      if killed_at is None and procs[victim].poll() is not None:
        killed_at = time.monotonic()
      if killed_at is not None and time.monotonic() - killed_at > LOST_PROCESS_BOUND_S:
        break
      time.sleep(0.5)
    survivor = procs[1 - victim]
    if survivor.poll() is None:
      for p in procs:
        p.kill()
      return f"the surviving process did not exit within {LOST_PROCESS_BOUND_S} s"
    if killed_at is None:
      killed_at = time.monotonic()
    took = time.monotonic() - killed_at
    _, err = survivor.communicate()
    if survivor.returncode == 0:
      return "the survivor exited 0 (it cannot have finished without its peer)"
    lines = [l for l in err.splitlines() if "lost" in l]
    if not lines:
      return f"no line naming the lost process (exit {survivor.returncode}, took {took:.0f} s)"
    for p in launch(w):
      p.wait(timeout=900)
      if p.returncode:
        return f"relaunch: a process exited {p.returncode}"
    return same_run(w, ref, atol=1e-5)   # gloo sums in another order: float round-off

  m.case("lost_process", "process 1 SIGKILLed mid-iteration", lambda: check(1, "optimize@2"))
  m.case("lost_process", "process 1 SIGKILLed during a save",
         lambda: check(1, "checkpoint_write@1"))
  m.case("lost_process", "process 0 (coordinator) SIGKILLed", lambda: check(0, ""))


def devices(m: Matrix, ref: str) -> None:
  def check(first: int, then: int):
    w = m.workdir(f"devices_{first}_to_{then}")
    killed = m.run(w, devices=first, fault="optimize@2")
    if killed.returncode != -9:
      return f"the fault did not kill the run (exit {killed.returncode})"
    p = m.run(w, devices=then)
    if p.returncode:
      return _ok(p)
    from selfimprove_jax.records import read_records
    tokens = lambda d: [s.completion_tokens for s in read_records(
        os.path.join(d, "records", "iter_0002", "acquire.parquet"))]
    if tokens(w) != tokens(ref):
      return "different sampled tokens after the resume"
    return same_run(w, ref, atol=1e-4)
  m.case("devices", "stopped on 8 devices, resumed on 1", lambda: check(8, 1))
  m.case("devices", "stopped on 1 device, resumed on 8", lambda: check(1, 8))


# Each is the model's reply to "write f(x) returning 2 * x", checked by the real verifier
# of a code_jsonl task twice: with assert lines (run beside the model's code) and with
# input/output tests (values compared outside the sandbox). A wrong program that forges
# a pass, or any attack on the worker, must score 0 and leave the next item unharmed.
_F = "def f(x):\n  return -1\n"
HOSTILE = {
    "forged pass on fd 3, then exit": "import os\nos.write(3, b'{\"value\": {\"results\": "
                                      "[{\"passed\": true}, {\"passed\": true}]}}')\n"
                                      "os._exit(0)\n" + _F,
    "forged values on fd 3, then exit": "import os\nos.write(3, b'{\"value\": {\"results\": "
                                        "[{\"value\": 4}, {\"value\": 10}]}}')\n"
                                        "os._exit(0)\n" + _F,
    "forged pass on every fd, then exit": "import os\nfor fd in range(3, 256):\n  try:\n"
                                          "    os.write(fd, b'{\"value\": {\"results\": "
                                          "[{\"passed\": true}, {\"passed\": true}]}}')\n"
                                          "  except OSError:\n    pass\nos._exit(0)\n" + _F,
    "equal-to-everything return": "class A:\n  __eq__ = lambda s, o: True\n"
                                  "  __ne__ = lambda s, o: False\n"
                                  "def f(x):\n  return A()\n",
    "os._exit(0) in the function": "import os\ndef f(x):\n  os._exit(0)\n",
    "SystemExit in the function": "def f(x):\n  raise SystemExit(0)\n",
    "patched json.dumps": "import json\njson.dumps = lambda *a, **k: "
                          "'{\"results\": [{\"passed\": true}]}'\n" + _F,
    "AssertionError swallowed": "import builtins\nbuiltins.AssertionError = type("
                                "'E', (Exception,), {})\n" + _F,
    "infinite loop": "while True:\n  pass\n" + _F,
    "fork bomb": "import os\nwhile True:\n  os.fork()\n" + _F,
    "memory bomb": "x = bytearray(1 << 34)\n" + _F,
    "write outside the scratch": "open('/tmp/pwned_by_matrix', 'w').write('x')\n" + _F,
    "network": "import socket\nsocket.create_connection(('127.0.0.1', 9), 1)\n" + _F,
    "signal the worker": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + _F,
    "nested JSON bomb on the result pipe": "import os\nos.write(3, b'[' * 200000)\n" + _F,
    "fill the scratch": "f0 = open('big', 'wb')\nwhile True:\n  f0.write(b'0' * (1 << 20))\n"
                        + _F,
    "print gigabytes": "while True:\n  print('x' * 65536)\n" + _F,
    "leave a child behind": "import os, time\nif os.fork() == 0:\n  time.sleep(60)\n" + _F,
}
CORRECT_WRITES_1MB = ("def f(x):\n  with open('out.bin', 'wb') as fh:\n"
                      "    fh.write(b'0' * (1 << 20))\n  return 2 * x\n")


def sandbox_cases(m: Matrix) -> None:
  from selfimprove_jax.tasks import get_task
  path = os.path.join(m.out, "doubling.jsonl")
  with open(path, "w") as f:
    for kind, tests in (("asserts", {"test_list": ["assert f(2) == 4", "assert f(5) == 10"]}),
                        ("values", {"tests": [{"input": [2], "output": 4},
                                              {"input": [5], "output": 10}]})):
      f.write(json.dumps({"prompt": f"Write f(x) returning 2 * x ({kind}).",
                          "entry_point": "f", **tests}) + "\n")
  task = get_task(f"code_jsonl:{path}", timeout_s=3.0, memory_mb=256)
  # both problems: the held-out one and the training one (ids de-duplicated)
  problems = list({p.id: p for p in task.heldout() + [task.problem(0, i) for i in range(4)]}
                  .values())
  reply = lambda src: f"```python\n{src}```"
  for name, src in HOSTILE.items():
    def check(src=src):
      verdicts = task.verify_batch(problems, [reply(src)] * len(problems))
      if any(v.reward > 0 for v in verdicts):
        return f"a wrong program scored {max(v.reward for v in verdicts)}"
      if os.path.exists("/tmp/pwned_by_matrix"):
        return "it wrote outside its scratch"
      after = task.verify_batch(problems, [reply(CORRECT_WRITES_1MB)] * len(problems))
      if not all(v.reward == 1.0 for v in after):
        return f"a correct program after it failed ({[v.detail for v in after]})"
      return None
    m.case("sandbox", name, check)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--only", default=",".join(SECTIONS),
                  help=f"comma-separated sections of {', '.join(SECTIONS)}")
  ap.add_argument("--kills", type=int, default=6, help="random-time kills")
  ap.add_argument("--seed", type=int, default=0, help="the kill times' seed")
  ap.add_argument("--out", default=None, help="scratch directory (default: a temporary "
                  "one, deleted at the end)")
  args = ap.parse_args(argv)
  only = [s for s in args.only.split(",") if s]
  bad = [s for s in only if s not in SECTIONS]
  if bad:
    ap.error(f"--only: unknown section {bad[0]!r} (sections: {', '.join(SECTIONS)})")
  if args.out and os.path.exists(args.out) and os.listdir(args.out):
    ap.error(f"--out {args.out} is not empty")
  out = args.out or tempfile.mkdtemp(prefix="reliability_")
  os.makedirs(out, exist_ok=True)
  m = Matrix(out)
  started = time.monotonic()
  ref = None
  if set(only) - {"bad_input", "sandbox"}:
    ref = m.workdir("reference")
    m.run(ref)   # warms the compilation cache; the timed one below is the reference
    shutil.rmtree(ref)
    t = time.monotonic()
    p = m.run(ref)
    ref_seconds = time.monotonic() - t
    if p.returncode:
      print(f"the reference run failed: {p.stderr[-2000:]}", file=sys.stderr)
      return 1
    print(f"reference: configs/tiny.py, {len(results(ref)) - 1} iterations, "
          f"{ref_seconds:.1f} s warm", flush=True)
  rng = random.Random(args.seed)
  run_section = {
      "kills": lambda: kills(m, ref, ref_seconds, args.kills, rng),
      "saves": lambda: saves(m, ref),
      "corruption": lambda: corruption(m, ref),
      "bad_input": lambda: bad_input(m),
      "user_files": lambda: user_files(m, ref),
      "lost_process": lambda: lost_process(m, ref),
      "devices": lambda: devices(m, ref),
      "sandbox": lambda: sandbox_cases(m),
  }
  for section in only:
    run_section[section]()
  held = sum(r[2] for r in m.rows)
  print(f"\n{held} of {len(m.rows)} held ({time.monotonic() - started:.0f} s)")
  for section in only:
    rows = [r for r in m.rows if r[0] == section]
    print(f"  {section:12s} {sum(r[2] for r in rows)}/{len(rows)}")
  if not args.out:
    shutil.rmtree(out, ignore_errors=True)
  return 0 if held == len(m.rows) else 1


if __name__ == "__main__":
  sys.exit(main())
