"""Judging model code without letting it judge itself: the solution runs in a process of
its own, the tests run in another, and only plain values cross between them.

The threat. A test harness that runs in the same Python process as the model's code is
the model's: the code can read the harness's frames, globals and `gc.get_objects()`,
monkeypatch `json.dumps`, `os.write` or `sys.exit`, write to any file descriptor it finds
in /proc/self/fd (the result channel among them), raise SystemExit or call `os._exit(0)`
after printing something shaped like a result, or return an object whose `__eq__` says
True to everything. No secret kept in that process survives this (the code can read it),
and closing the channel before the code runs does not stop a test from running next to
objects the code controls. So a verdict must never be computed where model code has run.

The design. For the jobs that report a verdict on model code (`call_tests`, `asserts`),
the item's process (the *judge*, forked by the worker, already limited and under the
item's uid) never runs model code. It forks a *solution* process which closes every file
descriptor but its stdio and two pipes to the judge (the result channel, fd 3, is gone
before any model code runs), executes the model's source, and then answers requests
"call NAME with these arguments" with the return value as data. The judge runs the test
inputs or the assert lines itself, against stand-ins of the solution's functions that
make those requests, and writes the verdict to fd 3. What the judge receives is decoded
into built-in types only (int, float, str, bytes, list, tuple, dict, set, ...; anything
else becomes an `Opaque` that equals only an opaque value of the same repr), so the
comparison in an assert runs on trusted types with trusted `__eq__`; a reply that is not
such a value, too large or nested too deep, or a solution that exits, crashes or stops
answering, fails the item (no verdict is taken from it). The judge is not dumpable
(prctl), so the solution, though it runs under the same uid, can neither ptrace it nor
open its /proc/PID/fd or /proc/PID/mem; it can kill or stop it, which fails the item.

What a solution can still do is choose its return values: a forged reply is exactly what
a function returning that value would give. Expected outputs of `call_tests` never enter
the sandbox, so it cannot know them; assert lines do enter it (the judge's memory, which
the solution inherits at fork), so a program can read an assert's expected value as if
the prompt had shown it, but it cannot make a failing assert pass. Tests that mutate an
argument in place or call methods of a returned object are not supported (values, not
objects, cross the boundary). The cost is one more process per item and a pipe round
trip per assert call (call_tests inputs go in one batch): on the shared 2-core dev
machine at load 9-14, a call_tests item of 8 inputs took at least 3.5 ms with the tests
in the solution's process and 6.7-8 ms here, and two workers ran 141-177 items/s before
against 67-78 here (asserts, 3 lines: 96-186 against 39-82), best of 3 x 100 items.

This file is bound into the sandbox next to worker.py and imports only the standard
library.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import math
import operator
import os
import signal
import struct
import sys
import traceback

# Exit codes the item's process uses to tell the worker what happened (a hostile program
# can also exit with them; it gains nothing, as every one of them is a failure).
EXIT_MEMORY = 83
EXIT_NO_RESULT = 84
MAX_VALUE_BYTES = 1 << 20     # the largest value (and result) that crosses a boundary
MAX_DEPTH = 64                # deeper values are not values (a nesting bomb is an error)
PR_SET_DUMPABLE = 4


# ----------------------------------------------------------------------------- messages


def read_msg(fd: int, max_bytes: int = 1 << 62):
  """One length-prefixed JSON message from `fd`, or None at end of file; ValueError for
  one longer than `max_bytes`."""
  head = _read_exact(fd, 4)
  if head is None:
    return None
  n = struct.unpack(">I", head)[0]
  if n > max_bytes:
    raise ValueError(f"message of {n} bytes, over the {max_bytes} cap")
  body = _read_exact(fd, n)
  return None if body is None else json.loads(body)


def write_msg(fd: int, msg) -> None:
  data = json.dumps(msg).encode()
  data = struct.pack(">I", len(data)) + data
  while data:
    data = data[os.write(fd, data):]


def _read_exact(fd: int, n: int):
  buf = b""
  while len(buf) < n:
    chunk = os.read(fd, n - len(buf))
    if not chunk:
      return None
    buf += chunk
  return buf


# ----------------------------------------------------------------------------- values


def normalize(value):
  """A JSON-ready form of a returned value, identical on both sides of the sandbox:
  tuples become lists, dict keys strings; anything else is compared by its repr."""
  if value is None or isinstance(value, (bool, int, str)):
    return value
  if isinstance(value, float):
    return value if math.isfinite(value) else {"float": repr(value)}
  if isinstance(value, (list, tuple)):
    return [normalize(v) for v in value]
  if isinstance(value, dict):
    return {str(k): normalize(v) for k, v in value.items()}
  return {"repr": repr(value)[:1000]}


class Opaque:
  """A value the solution returned that is no built-in value: known by its repr only."""
  __slots__ = ("text",)

  def __init__(self, text: str):
    self.text = text

  def __repr__(self) -> str:
    return self.text

  def __eq__(self, other) -> bool:
    return isinstance(other, Opaque) and other.text == self.text

  def __hash__(self) -> int:
    return hash(self.text)


def encode(value, strict: bool, depth: int = 0):
  """`value` as tagged JSON (lists stay lists; a one-key dict tags the other types).
  strict (the judge's arguments): only built-in values, else TypeError; lenient (the
  solution's return values): subclasses as their base type, anything else Opaque."""
  if depth >= MAX_DEPTH:     # the judge's decode takes MAX_DEPTH levels
    if strict:
      raise TypeError("argument nested too deep")
    return {"o": "<nested too deep>"}
  d = depth + 1
  if value is None or type(value) in (bool, int, str):
    return value
  if isinstance(value, bool):
    return bool(value)
  if isinstance(value, int):
    return int(value)
  if isinstance(value, float):
    value = float(value)
    return value if math.isfinite(value) else {"f": repr(value)}
  if isinstance(value, str):
    return str.__str__(value)
  if isinstance(value, (bytes, bytearray)):
    return {"b": bytes(value).decode("latin-1")}
  if isinstance(value, complex):
    return {"c": [value.real, value.imag]}
  if isinstance(value, list):
    return [encode(v, strict, d) for v in value]
  if isinstance(value, tuple):
    return {"t": [encode(v, strict, d) for v in value]}
  if isinstance(value, dict):
    return {"d": [[encode(k, strict, d), encode(v, strict, d)] for k, v in value.items()]}
  if isinstance(value, (set, frozenset)):
    tag = "fs" if isinstance(value, frozenset) else "s"
    return {tag: [encode(v, strict, d) for v in value]}
  if isinstance(value, Opaque):
    return {"o": value.text}
  if strict:
    raise TypeError(f"a {type(value).__name__} cannot be passed to the solution")
  if hasattr(type(value), "__index__"):   # an integer of another library (numpy.int64)
    return int(operator.index(value))
  return {"o": repr(value)[:1000]}


def decode(data, depth: int = 0):
  """The built-in value of tagged JSON; ValueError for anything else."""
  if depth > MAX_DEPTH:
    raise ValueError("value nested too deep")
  if data is None or type(data) in (bool, int, float, str):
    return data
  d = depth + 1
  if type(data) is list:
    return [decode(v, d) for v in data]
  if type(data) is dict and len(data) == 1:
    (tag, body), = data.items()
    if tag == "o" and type(body) is str:
      return Opaque(body[:1000])
    if tag == "f" and body in ("inf", "-inf", "nan"):
      return float(body)
    if tag == "b" and type(body) is str:
      return body.encode("latin-1")
    if type(body) is list:
      if tag == "t":
        return tuple(decode(v, d) for v in body)
      if tag == "s":
        return {decode(v, d) for v in body}
      if tag == "fs":
        return frozenset(decode(v, d) for v in body)
      if tag == "c" and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(*body)
      if tag == "d" and all(type(kv) is list and len(kv) == 2 for kv in body):
        return {decode(k, d): decode(v, d) for k, v in body}
  raise ValueError("not a value")


# ----------------------------------------------------------------------------- the solution


class SolutionError(Exception):
  """An exception the solution raised that is no built-in one (subclassed by its name)."""


class SolutionGone(BaseException):
  """The solution exited, died or broke the protocol: the item has no verdict.
  (A BaseException, so that a test's `except Exception` cannot swallow it.)"""


def _error(name: str, text: str) -> Exception:
  """The judge-side exception for one the solution raised: the built-in type of that
  name when there is one (a test may expect ValueError), else a SolutionError."""
  exc = getattr(builtins, name, None)
  if isinstance(exc, type) and issubclass(exc, Exception):
    try:
      return exc(text)
    except Exception:  # pylint: disable=broad-except  (needs other arguments)
      pass
  return type(name[:100] or "SolutionError", (SolutionError,), {})(text)


class Solution:
  """The model's source running in a forked process; `call` runs one of its functions."""

  def __init__(self, source: str):
    # the judge: unreachable through ptrace and /proc/PID/{fd,mem} by the solution
    not_dumpable()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)   # a dead solution: EPIPE, not death
    signal.signal(signal.SIGINT, signal.SIG_DFL)    # no KeyboardInterrupt into a test
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      _serve(source, req_r, rep_w)     # never returns
    os.close(req_r)
    os.close(rep_w)
    self.pid, self._to, self._from = pid, req_w, rep_r
    self.names, self.modules = set(), {}

  def start(self) -> None:
    """Waits for the solution's start message: its callables and imported modules."""
    hello = self._receive()
    if type(hello) is not dict or type(hello.get("names")) is not list \
        or type(hello.get("modules")) is not dict:
      self.gone("a malformed start message")
    self.names = {n for n in hello["names"] if type(n) is str}
    self.modules = {k: v for k, v in hello["modules"].items() if type(v) is str}

  def call(self, name: str, args: tuple, kwargs: dict):
    """The solution's `name(*args, **kwargs)` as a built-in value; raises what it
    raised; SolutionGone when it exits or answers with something that is no value."""
    self._send({"name": name, "args": encode(list(args), True),
                "kwargs": encode(dict(kwargs), True)})
    return self._outcome(self._receive())

  def send_batch(self, name: str, inputs: list) -> None:
    """Asks for `name(*args)` for each args in `inputs` in one message (a round trip
    per item instead of per call; it may be sent before `start`)."""
    self._send({"name": name, "batch": [encode(list(a), True) for a in inputs]})

  def receive_batch(self, n: int) -> list:
    """The replies to `send_batch`: per call its value, or the exception it raised."""
    reply = self._receive()
    if type(reply) is not dict or set(reply) != {"batch"} or type(reply["batch"]) is not list \
        or len(reply["batch"]) != n:
      self.gone("a malformed reply")
    out = []
    for r in reply["batch"]:
      try:
        out.append(self._outcome(r))
      except Exception as e:  # pylint: disable=broad-except
        out.append(e)
    return out

  def _send(self, request: dict) -> None:
    try:
      write_msg(self._to, request)
    except OSError:
      self.gone("")     # it closed its end: how it ended is the item's end

  def _outcome(self, reply):
    """The value in one call's reply, or raises the exception it names."""
    if type(reply) is dict and set(reply) == {"value"}:
      try:
        return decode(reply["value"])
      except (ValueError, TypeError, RecursionError, MemoryError):   # TypeError: {[1]}
        self.gone("a reply that is no value")
    if type(reply) is dict and set(reply) == {"error"} and type(reply["error"]) is list \
        and len(reply["error"]) == 2 and all(type(x) is str for x in reply["error"]):
      raise _error(*reply["error"])
    self.gone("a malformed reply")

  def _receive(self):
    try:
      msg = read_msg(self._from, MAX_VALUE_BYTES)
    except (OSError, ValueError, RecursionError, MemoryError) as e:
      self.gone(f"an unreadable reply ({type(e).__name__})")
    if msg is None:
      self.gone("")
    return msg

  def gone(self, why: str):
    """Ends the item the way the solution ended: its signal or exit code (0 becomes
    EXIT_NO_RESULT: a solution must answer every call, not exit)."""
    raise SolutionGone(why)

  def end_item(self, why: str) -> None:
    """Called with SolutionGone: never returns."""
    try:
      if why:      # it broke the protocol: it ends now, and so does the item
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        print(f"sandbox: the solution sent {why}", file=sys.stderr)
        status = EXIT_NO_RESULT << 8
      else:        # it closed its pipe: how it ends is how the item ends
        _, status = os.waitpid(self.pid, 0)
    except OSError:
      status = EXIT_NO_RESULT << 8
    sys.stderr.flush()
    if os.WIFSIGNALED(status):
      sig = os.WTERMSIG(status)
      try:
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
      except (OSError, ValueError):
        pass
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
    os._exit(code or EXIT_NO_RESULT)

  def close(self) -> None:
    os.close(self._to)      # the solution reads end of file and exits
    os.close(self._from)


try:   # loaded once, in the worker: 0.3 ms an item otherwise
  _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
  _LIBC = None


def not_dumpable() -> None:
  """This process can no longer be ptraced, nor its /proc/PID/{fd,mem} opened, by
  processes of its uid that lack CAP_SYS_PTRACE (the kernel's dumpable check)."""
  try:
    _LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
  except AttributeError:
    pass


def _serve(source: str, req_r: int, rep_w: int) -> None:
  """The solution process: closes every descriptor but stdio and its two pipes, runs the
  source, reports its callables, answers calls until end of file. Never returns."""
  code = 1
  try:
    keep = sorted({0, 1, 2, req_r, rep_w})
    for lo, hi in zip(keep, keep[1:] + [1 << 16]):
      os.closerange(lo + 1, hi)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    namespace = {"__name__": "__solution__", "__builtins__": builtins}
    exec(compile(source, "<solution>", "exec", dont_inherit=True),  # noqa: S102
         namespace)
    items = list(namespace.items())
    write_msg(rep_w, {
        "names": [k for k, v in items if not k.startswith("__") and callable(v)][:1000],
        "modules": {k: v.__name__ for k, v in items
                    if type(v) is type(sys) and type(getattr(v, "__name__", 0)) is str}})
    while True:
      request = read_msg(req_r)
      if request is None:
        code = 0
        break
      data = _answer(namespace, request)
      os.write(rep_w, struct.pack(">I", len(data)))
      while data:
        data = data[os.write(rep_w, data):]
  except SystemExit:
    code = EXIT_NO_RESULT       # a solution must return, not exit
  except MemoryError:
    code = EXIT_MEMORY
  except BaseException:  # pylint: disable=broad-except
    try:
      traceback.print_exc(limit=5)
    except BaseException:  # pylint: disable=broad-except
      pass
  finally:
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except BaseException:  # pylint: disable=broad-except
        pass
    os._exit(code)


def _answer(namespace: dict, request: dict) -> bytes:
  """The JSON reply to a request: one call's reply, or a batch's replies in order."""
  try:
    if "batch" in request:
      return json.dumps({"batch": [_call(namespace, request["name"], a, {"d": []})
                                   for a in request["batch"]]}).encode()
    return json.dumps(_call(namespace, request["name"], request["args"],
                            request["kwargs"])).encode()
  except Exception as e:  # pylint: disable=broad-except  (a value JSON cannot hold)
    return json.dumps({"error": [type(e).__name__, "unsendable value"]}).encode()


def _call(namespace: dict, name: str, args, kwargs) -> dict:
  """One call: {"value": its encoded value} or {"error": [type name, message]}."""
  try:
    value = namespace[name](*decode(args), **decode(kwargs))
    value = encode(value, False)
    json.dumps(value)      # an int too long for JSON fails this call, not the batch
    return {"value": value}
  except Exception as e:  # pylint: disable=broad-except
    try:
      text = str(e)[:200]
    except Exception:  # pylint: disable=broad-except
      text = "?"
    return {"error": [type(e).__name__, text]}


# ----------------------------------------------------------------------------- the jobs


def _judged(run, early=None):
  """Runs `run(solution, args)` in the judge (after `early(solution, args)`, which may
  send requests before the solution has started); a solution that went away ends the
  item."""
  def job(args: dict):
    solution = Solution(args["source"])
    try:
      if early is not None:
        early(solution, args)
      solution.start()
      value = run(solution, args)
    except SolutionGone as e:
      solution.end_item(str(e))
    solution.close()
    return value
  job.__doc__ = run.__doc__
  return job


def _call_tests(solution: Solution, args: dict):
  """Calls `entry_point` on each test input, in the solution.

  Returns one entry per input: {"value": normalized result} or {"error": "Type: msg"};
  the caller compares them with the expected outputs, which never enter the sandbox."""
  name = args["entry_point"]
  outcomes = solution.receive_batch(len(args["inputs"]))   # asked for by _send_inputs
  if name not in solution.names:
    return {"missing": f"no function named {name!r} is defined"}
  results = []
  for got in outcomes:
    if isinstance(got, Exception):
      results.append({"error": f"{type(got).__name__}: {str(got)[:200]}"})
    else:
      results.append({"value": normalize(got)})
  return {"results": results}


def _send_inputs(solution: Solution, args: dict) -> None:
  solution.send_batch(args["entry_point"], args["inputs"])


class _Remote:
  """A solution's function as the tests see it: calls go to the solution process."""

  def __init__(self, solution: Solution, name: str):
    self._solution, self.__name__ = solution, name

  def __call__(self, *args, **kwargs):
    return self._solution.call(self.__name__, args, kwargs)

  def __repr__(self) -> str:
    return f"<solution function {self.__name__}>"


def _asserts(solution: Solution, args: dict):
  """MBPP-style: runs each assert line in the judge, against the solution's functions
  (and the already-loaded modules it imported); True where it holds."""
  namespace = {"__name__": "__tests__", "__builtins__": builtins}
  for alias, module in solution.modules.items():
    if module in sys.modules:      # never an import the solution picked
      namespace[alias] = sys.modules[module]
  for name in solution.names:
    namespace[name] = _Remote(solution, name)
  results = []
  for test in args["asserts"]:
    try:
      exec(compile(test, "<test>", "exec", dont_inherit=True), namespace)  # noqa: S102
      results.append({"passed": True})
    except Exception as e:  # pylint: disable=broad-except
      results.append({"passed": False, "error": f"{type(e).__name__}: {str(e)[:200]}"})
  return {"results": results}


job_call_tests = _judged(_call_tests, early=_send_inputs)
job_asserts = _judged(_asserts)
