"""`python_tool`: arithmetic with a Python tool run in the sandbox (self-taught tool use).

The model sees an `arithmetic` problem and a short description of a tool with one
worked example: it may write a ```python code block, an expression or a short program.
The turn ends at the stop sequence "```\n" (the closing fence); the code runs in the
sandbox (`sandbox.run_python_batch` with `sandbox.Limits`: short wall and CPU clock,
small address space, capped output, no network, a private scratch directory) and its
result comes back as "Output: RESULT": an expression's value (a program whose last
statement is an expression prints it, as a notebook cell does), else the program's
stdout, cut to `max_output_chars`. A turn that ends with end-of-turn is the final
answer, graded by the task's own verifier (reward 1 or 0, done); a turn cut off by its
token budget is graded the same way (by what it finished stating).

Toolformer (Schick et al. 2023) teaches a model to call an API by keeping the calls
that helped; here the loop keeps the episodes whose tool call led to a right answer,
and trains on the model's own tokens only (the tool's output carries no loss).

Why this syntax, measured on SmolLM2-135M-Instruct (32 problems of difficulty 6, one
episode each at temperature 0.7): with `<tool>...</tool>` tags, in any of four
wordings, it never called the tool (it copied the example's answer or restated the
question); asked for a ```python block with one worked example, 0.44 of its episodes
called the tool. The output comes back 'inline' (straight after the closing fence,
inside the model's own turn, so it goes on to the answer with the number in view); the
`observation` option puts it in a new user turn instead.

Step statuses: 'ok' (an answer, or a tool call that ran), 'invalid' (a call with no
code, or code that does not parse), or the sandbox's 'error', 'timeout', 'memory',
'output_limit', 'killed' for a tool call that hit a limit; the detail says what
happened and the observation shows the model the error's last line.
"""

from __future__ import annotations

import ast

from selfimprove_jax import sandbox
from selfimprove_jax.environments.base import Environment, Option, Spec, Step, read_options
from selfimprove_jax.errors import UserError

OPEN, CLOSE = "```python", "```\n"
OUTPUT = "Output: {}\n"

OPTIONS = {
    "timeout_s": Option(float, 2.0, "a tool call's wall-clock (and CPU) limit, seconds",
                        low=0.1, high=30.0),
    "memory_mb": Option(int, 64, "a tool call's address space, MiB", low=16, high=4096),
    "max_output_chars": Option(int, 200, "what the model sees of a call's output, "
                               "characters", low=1, high=10_000),
    "output_bytes": Option(int, 4096, "a tool call printing more bytes is stopped",
                           low=64, high=1 << 20),
    "observation": Option(str, "inline", "where the output goes: after the closing fence "
                          "in the model's turn, or in a new user turn",
                          choices=("inline", "user")),
    "few_shot": Option(bool, True, "a worked example in the tool's description"),
}

_DESCRIPTION = (
    "You can run Python: write a ```python code block that prints the result, and you "
    "will see its output. Then reply with just the number.")
_EXAMPLE = "\n\nExample:\n```python\nprint(12 * 34 + 5)\n```\n" + OUTPUT.format(413) + \
    "The answer is 413."

# Runs the model's code inside the sandbox: the last statement, when an expression, is
# evaluated and printed (None is not), the rest executed as a program.
_RUNNER = """\
import ast
tree = ast.parse({source!r})
last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
scope = {{"__name__": "__main__"}}
exec(compile(tree, "<tool>", "exec"), scope)
if last is not None:
  value = eval(compile(ast.Expression(last.value), "<tool>", "eval"), scope)
  if value is not None:
    print(value)
"""


def spec(task, options: dict, max_turns: int, max_tokens: int) -> Spec:
  """The environment for `task` (arithmetic only); a bad option is a UserError."""
  if getattr(task, "name", None) != "arithmetic":
    raise UserError(f"python_tool plays the arithmetic task, not "
                    f"{getattr(task, 'name', task)!r}")
  opts = read_options(OPTIONS, options)
  limits = sandbox.Limits(timeout_s=opts["timeout_s"], memory_mb=opts["memory_mb"],
                          output_bytes=opts["output_bytes"], max_procs=4)
  return Spec(name="python_tool",
              make=lambda: PythonTool(task, limits, opts),
              max_turns=max_turns, max_tokens=max_tokens, stop_sequences=(CLOSE,),
              observation=opts["observation"], optimal_turns=lambda problem: 1)


def describe(prompt: str, few_shot: bool = True) -> str:
  """The first observation: the problem's prompt, then the tool's description."""
  return f"{prompt}\n\n{_DESCRIPTION}" + (_EXAMPLE if few_shot else "")


class PythonTool(Environment):
  """One episode: tool calls until the model answers (module docstring)."""

  def __init__(self, task, limits: sandbox.Limits, opts: dict):
    self.task, self.limits, self.opts = task, limits, opts
    self.problem = None

  def reset(self, problem) -> str:
    self.problem = problem
    return describe(problem.prompt, self.opts["few_shot"])

  def step(self, action: str, finish: str) -> Step:
    if finish != "stop":
      return self._answer(action, truncated=finish == "length")
    code = action.rpartition(OPEN)[2] if OPEN in action else ""
    code = code.strip()
    if not code:
      return self._observe("invalid", "no code in the tool call",
                           f"Error: no code; write {OPEN}, the code, then ```", tool=False)
    try:
      ast.parse(code)   # parsing runs nothing; only the sandbox executes
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
      line = f"{type(e).__name__}: {getattr(e, 'msg', e)}"
      return self._observe("invalid", f"code does not parse: {line}"[:300],
                           f"Error: {line}", tool=True)
    r = sandbox.run_python_batch([_RUNNER.format(source=code)], limits=self.limits)[0]
    if r.ok:
      return self._observe("ok", "", r.stdout.strip(), tool=True)
    last = _last_line(r.stderr) or r.detail or r.status
    detail = f"{r.detail}: {last}" if r.detail and last != r.detail else last
    return self._observe(r.status, detail[:300], f"Error: {last}", tool=True)

  def _observe(self, status: str, detail: str, output: str, tool: bool) -> Step:
    shown = output[:self.opts["max_output_chars"]]
    if len(output) > len(shown):
      shown += " ..."
    text = OUTPUT.format(shown)
    return Step(observation=text, reward=0.0, done=False, status=status, detail=detail,
                tool_call=tool)

  def _answer(self, text: str, truncated: bool) -> Step:
    from selfimprove_jax import tasks   # the registry imports every task; on use only
    v = tasks.verify(self.task, [self.problem], [text], truncated=[truncated])[0]
    return Step(reward=float(v.reward), done=True, status=v.status, detail=v.detail)


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else ""
