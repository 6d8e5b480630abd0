"""The shape of the code: dependency rules (import-linter contracts in pyproject.toml),
registries that config validation mirrors, function size limits, and a loop that
names no paradigm."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

from selfimprove_jax import config
from selfimprove_jax.paradigms import registry as algorithms
from selfimprove_jax.refine import strategies as refine
from selfimprove_jax.select import filters as select

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "selfimprove_jax"
MAX_LINES, MAX_PARAMS = 60, 8


def test_dependency_rules_hold():
  exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
  assert exe, "lint-imports is missing: install the test extra (pip install -e '.[test]')"
  out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
  assert "0 broken" in out.stdout


def test_config_validation_knows_every_registered_name():
  assert config.FILTER_NAMES == tuple(select.FILTERS)
  assert config.STRATEGY_NAMES == tuple(refine.STRATEGIES)
  assert config.SCORER_NAMES == tuple(refine.SCORERS)


def _oversized():
  """Functions over the limits whose def has no '# size:' reason on the line above it
  (or above its decorators)."""
  bad = []
  for path in sorted(PACKAGE.rglob("*.py")):
    lines = path.read_text().splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      a = node.args
      params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in
                ("self", "cls")] + [x for x in (a.vararg, a.kwarg) if x]
      size = node.end_lineno - node.lineno + 1
      if size <= MAX_LINES and len(params) <= MAX_PARAMS:
        continue
      first = min([node.lineno] + [d.lineno for d in node.decorator_list])
      if not lines[first - 2].strip().startswith("# size:"):
        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                   f"({size} lines, {len(params)} parameters)")
  return bad


def test_functions_are_short_or_say_why():
  assert _oversized() == []


def test_the_loop_names_no_paradigm():
  """A paradigm is a module plus a config: loop.py branches on no algorithm's name."""
  source = (PACKAGE / "loop.py").read_text()
  for name in algorithms.ALGORITHMS:
    assert f'"{name}"' not in source and f"'{name}'" not in source, name
