"""Every package name a benchmark script uses resolves, read from the scripts with `ast`
(nothing in them runs): `import selfimprove_jax.x`, `from selfimprove_jax.x import a`,
attribute chains on a name bound to a package module (`lib.foo`), and module names
passed as strings (`python -m selfimprove_jax.cli`). The benchmarks are not run by the
other tests, so a module moved inside the package would otherwise break them silently."""

import ast
import importlib
import importlib.util
import pathlib
import re
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
PACKAGE = "selfimprove_jax"
MODULE_STRING = re.compile(rf"{PACKAGE}(\.\w+)+")


def _import(name):
  """(module, None), or (None, why) when `name` does not import."""
  try:
    return importlib.import_module(name), None
  except ImportError as e:
    return None, f"{type(e).__name__}: {e}"


def _member(module, name):
  """`module.name` as an attribute or a submodule, or None."""
  if hasattr(module, name):
    return getattr(module, name)
  full = f"{module.__name__}.{name}"
  if getattr(module, "__path__", None) and importlib.util.find_spec(full) is not None:
    return importlib.import_module(full)
  return None


def _scopes(tree):
  """The module and every function/lambda/class node: each has its own names."""
  kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
  return [tree] + [n for n in ast.walk(tree) if isinstance(n, kinds)]


def _own_nodes(scope):
  """Nodes of `scope` outside its nested scopes."""
  kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
  todo = list(ast.iter_child_nodes(scope))
  while todo:
    node = todo.pop()
    yield node
    if not isinstance(node, kinds):
      todo.extend(ast.iter_child_nodes(node))


class _Checker:
  """Walks one file; `problems` collects "path:line: name (why)"."""

  def __init__(self, path: pathlib.Path):
    self.rel = path.relative_to(ROOT)
    self.tree = ast.parse(path.read_text(), filename=str(path))
    self.problems: list[str] = []
    self.checked = 0
    # per scope: names bound to a package module, and names bound to anything else
    self.aliases = {s: {} for s in _scopes(self.tree)}
    self.others = {s: set() for s in _scopes(self.tree)}
    self.parent = {c: p for p in ast.walk(self.tree) for c in ast.iter_child_nodes(p)}

  def fail(self, node, name, why):
    self.problems.append(f"{self.rel}:{node.lineno}: {name} ({why})")

  def check_import(self, node, scope):
    for a in node.names:
      if not (a.name == PACKAGE or a.name.startswith(PACKAGE + ".")):
        continue
      self.checked += 1
      module, why = _import(a.name)
      if module is None:
        self.fail(node, a.name, why)
      elif a.asname:
        self.aliases[scope][a.asname] = module
      else:                                  # `import p.x.y` binds p
        self.aliases[scope][PACKAGE] = importlib.import_module(PACKAGE)

  def check_import_from(self, node, scope):
    if node.level or not (node.module == PACKAGE
                          or node.module.startswith(PACKAGE + ".")):
      return
    self.checked += 1
    module, why = _import(node.module)
    if module is None:
      self.fail(node, node.module, why)
      return
    for a in node.names:
      if a.name == "*":
        continue
      self.checked += 1
      value = _member(module, a.name)
      if value is None:
        self.fail(node, f"{node.module}.{a.name}", f"no such name in {node.module}")
      elif isinstance(value, types.ModuleType):
        self.aliases[scope][a.asname or a.name] = value

  def bind_others(self, scope):
    for node in _own_nodes(scope):
      if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
        self.others[scope].add(node.id)
      elif isinstance(node, ast.arg):
        self.others[scope].add(node.arg)
      elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        self.others[scope].add(node.name)
    self.others[scope] -= set(self.aliases[scope])

  def lookup(self, name, node):
    """The package module `name` is bound to where `node` is, or None."""
    scope = self.parent.get(node)
    while scope is not None:
      if scope in self.aliases:
        if name in self.aliases[scope]:
          return self.aliases[scope][name]
        if name in self.others[scope]:
          return None
      scope = self.parent.get(scope)
    return None

  def check_chain(self, node):
    """`alias.a.b...`: each attribute resolves while the value is a module."""
    attrs = []
    while isinstance(node, ast.Attribute):
      attrs.append(node.attr)
      node = node.value
    if not isinstance(node, ast.Name):
      return
    value = self.lookup(node.id, node)
    if value is None:
      return
    self.checked += 1
    used = node.id
    for attr in reversed(attrs):
      if not isinstance(value, types.ModuleType):
        return
      used += "." + attr
      found = _member(value, attr)
      if found is None:
        self.fail(node, f"{value.__name__}.{attr}",
                  f"no such name in {value.__name__}, used as {used}")
        return
      value = found

  def run(self):
    for scope in _scopes(self.tree):
      for node in _own_nodes(scope):
        if isinstance(node, ast.Import):
          self.check_import(node, scope)
        elif isinstance(node, ast.ImportFrom):
          self.check_import_from(node, scope)
    for scope in _scopes(self.tree):
      self.bind_others(scope)
    for node in ast.walk(self.tree):
      # only the outermost attribute of a chain: `a.b.c`, not also `a.b`
      if isinstance(node, ast.Attribute) and not isinstance(self.parent.get(node),
                                                            ast.Attribute):
        self.check_chain(node)
      elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and MODULE_STRING.fullmatch(node.value)):
        self.checked += 1
        if importlib.util.find_spec(node.value) is None:
          self.fail(node, node.value, "no such module")
    return self


def test_there_are_benchmarks_using_the_package():
  assert BENCHMARKS, "no benchmarks/*.py found"
  assert sum(_Checker(p).run().checked for p in BENCHMARKS) > 0, (
      f"no benchmark names {PACKAGE}: is PACKAGE still the package's name?")


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_names_resolve(path):
  problems = _Checker(path).run().problems
  assert not problems, "names that do not resolve:\n" + "\n".join(problems)
