"""Environment options (environments/base.py `Option`, `read_options`): the one reader
the three environments share, their defaults (as before the tables), and the README's
table of options rendered from the same tables."""

import importlib
import pathlib
import re

import pytest

from selfimprove_jax import environments
from selfimprove_jax.environments import code_feedback, guess_number, python_tool
from selfimprove_jax.environments.base import Option, read_options
from selfimprove_jax.errors import UserError

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
TABLE = {
    "limit": Option(float, 2.0, "seconds", low=0.5, high=10.0),
    "count": Option(int, 3, "how many", low=1),
    "mode": Option(str, "a", "which", choices=("a", "b")),
    "flag": Option(bool, False, "whether"),
}


def test_defaults_fill_what_is_not_given_and_an_integer_becomes_a_number():
  assert read_options(TABLE, {}) == {"limit": 2.0, "count": 3, "mode": "a", "flag": False}
  got = read_options(TABLE, {"limit": 5, "count": 7, "mode": "b", "flag": True})
  assert got == {"limit": 5.0, "count": 7, "mode": "b", "flag": True}
  assert type(got["limit"]) is float and type(got["count"]) is int


@pytest.mark.parametrize("options, message", [
    ({"limits": 1, "other": 2}, "environment.options.limits=1 is not an option; the options "
     "are limit, count, mode, flag"),
    ({"limit": 0.4}, "environment.options.limit=0.4 must be a number in [0.5, 10.0]"),
    ({"limit": 11}, "environment.options.limit=11 must be a number in [0.5, 10.0]"),
    ({"limit": float("nan")}, "environment.options.limit=nan must be a number in [0.5, 10.0]"),
    ({"limit": True}, "environment.options.limit=True must be a number in [0.5, 10.0]"),
    ({"limit": "2"}, "environment.options.limit='2' must be a number in [0.5, 10.0]"),
    ({"count": 0}, "environment.options.count=0 must be an integer >= 1"),
    ({"count": 2.0}, "environment.options.count=2.0 must be an integer >= 1"),
    ({"count": False}, "environment.options.count=False must be an integer >= 1"),
    ({"mode": "c"}, "environment.options.mode='c' must be one of a, b"),
    ({"mode": None}, "environment.options.mode=None must be one of a, b"),
    ({"flag": 0}, "environment.options.flag=0 must be True or False"),
])
def test_a_bad_option_is_one_line_naming_key_value_and_what_is_allowed(options, message):
  with pytest.raises(UserError) as e:
    read_options(TABLE, options)
  assert str(e.value) == message


def test_a_table_default_outside_its_own_range_is_refused():
  with pytest.raises(ValueError, match="default 0 is not an integer >= 1"):
    Option(int, 0, "how many", low=1)
  with pytest.raises(ValueError, match="default 'c' is not one of a, b"):
    Option(str, "c", "which", choices=("a", "b"))


def test_the_environments_defaults_are_unchanged():
  """The values each environment used before its options were tables."""
  assert read_options(python_tool.OPTIONS, {}) == {
      "timeout_s": 2.0, "memory_mb": 64, "max_output_chars": 200, "output_bytes": 4096,
      "observation": "inline", "few_shot": True}
  assert read_options(code_feedback.OPTIONS, {}) == {
      "failing_tests": 1, "error_lines": 4, "max_chars": 400}
  assert read_options(guess_number.OPTIONS, {}) == {"reward": "outcome", "range_hint": False}


def test_every_environment_has_a_table_of_documented_options():
  for name, module in environments.ENVIRONMENTS.items():
    table = importlib.import_module(module).OPTIONS
    assert table and all(isinstance(o, Option) and o.help for o in table.values()), name


def test_readme_lists_the_options_of_the_tables():
  """The README's table between its markers is `options_markdown()`, character for
  character: after changing an OPTIONS table, paste in the new output of
  python -c 'from selfimprove_jax import environments as e; print(e.options_markdown())'"""
  text = README.read_text()
  found = re.search(r"<!-- environment options: begin[^\n]*-->\n(.*?)\n<!-- environment "
                    r"options: end -->", text, re.DOTALL)
  assert found, "README.md has no environment options table between its markers"
  assert found.group(1) == environments.options_markdown()
  table = environments.options_markdown()
  for name in environments.ENVIRONMENTS:
    assert f"| `{name}` |" in table
  assert "| `python_tool` | `timeout_s` | `2.0` | a number in [0.1, 30.0] |" in table
