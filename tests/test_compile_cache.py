"""The persistent compilation cache (runtime/compile_cache.py): where it goes, how it is
turned off, and that a corrupt cache is a miss with one warning line, never a failure."""

import os
import subprocess
import sys

import pytest

from selfimprove_jax.errors import UserError
from selfimprove_jax.runtime import compile_cache

# A fresh process (JAX sets its cache up once per process): the CLI's set-up, then three
# programs compiled and run; prints their results.
_PROGRAM = """
from selfimprove_jax.runtime import compile_cache
print(compile_cache.enable())
import jax, jax.numpy as jnp
x = jnp.arange(12.0).reshape(3, 4)
print(float(jax.jit(lambda a: (a @ a.T).sum())(x)), float(jax.jit(jnp.tanh)(x).sum()),
      float(jax.jit(lambda a: jnp.cumsum(a, axis=1).max())(x)))
"""


def _run(cache, **extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_PERSISTENT", "JAX_COMP"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", **{compile_cache.ENV: str(cache)}, **extra)
  return subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True,
                        text=True, timeout=300)


def _entries(cache):
  return [os.path.join(cache, n) for n in os.listdir(cache) if n.endswith("-cache")]


def test_corrupt_or_truncated_cache_is_a_miss_with_one_warning_line(tmp_path):
  cache = tmp_path / "jax"
  first = _run(cache)
  assert first.returncode == 0, first.stderr
  assert first.stdout.splitlines()[0] == str(cache)
  entries = _entries(cache)
  assert len(entries) >= 3, os.listdir(cache)
  for i, path in enumerate(entries):
    data = open(path, "rb").read()
    with open(path, "wb") as f:   # garbage, or half an entry (a writer killed mid-write)
      f.write(os.urandom(len(data)) if i % 2 else data[:len(data) // 2])
  second = _run(cache)
  assert second.returncode == 0, second.stderr
  assert second.stdout == first.stdout   # same results, recompiled
  lines = second.stderr.strip().splitlines()
  assert len(lines) == 1 and "compilation cache" in lines[0] and str(cache) in lines[0], lines


def test_warm_cache_is_read_back(tmp_path):
  cache = tmp_path / "jax"
  assert _run(cache).returncode == 0
  stamp = {p: os.path.getmtime(p) for p in _entries(cache)}
  again = _run(cache)
  assert again.returncode == 0 and again.stderr == ""
  assert {p: os.path.getmtime(p) for p in _entries(cache)} == stamp   # nothing rewritten


def test_where_the_cache_goes(tmp_path, monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.chosen_dir() == str(tmp_path / "xdg" / "selfimprove_jax" / "jax")
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))
  assert compile_cache.chosen_dir() == str(tmp_path / "mine")
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.chosen_dir() is None
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "users"))   # the user's wins
  assert compile_cache.chosen_dir() == str(tmp_path / "users")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  (tmp_path / "a_file").write_text("x")
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "a_file"))
  with pytest.raises(UserError, match=compile_cache.ENV):
    compile_cache.chosen_dir()
