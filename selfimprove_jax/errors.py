"""The one exception type for mistakes in a user's input (files, specs, flags), and the
check of names against a registry.

Raised with a one-line message naming the file or value and what is wrong; the CLI
prints it as a single line and exits with status 2 instead of a traceback."""

from __future__ import annotations

from typing import Collection, Sequence


class UserError(ValueError):
  """A user's input is missing, malformed or unsupported."""


def check_names(names: Sequence[str], known: Collection[str], what: str) -> tuple[str, ...]:
  """`names` as a tuple, each one of `known` (a registry), else a one-line UserError.
  A sequence of names: a config's comma list is split once, in settings.py."""
  if isinstance(names, str):
    raise TypeError(f"{what} names {names!r}: give a sequence of names, not a string")
  unknown = [n for n in names if n not in known]
  if unknown:
    raise UserError(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
  return tuple(names)
