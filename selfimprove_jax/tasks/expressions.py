"""Safe evaluation of arithmetic expressions written by a model or a user.

Nothing is ever passed to `eval`: the text is parsed with `ast` and only a whitelist of
nodes is interpreted (integer literals, + - * /, unary +/-, parentheses). Anything else
(names, calls, attributes, `**`, strings...) is rejected, so `__import__('os')` is just
an invalid answer. Values are exact `Fraction`s, so `/` never loses precision.
"""

from __future__ import annotations

import ast
import fractions
from typing import Optional

# Long inputs are rejected before parsing: a verifier must stay cheap on any output.
MAX_EXPRESSION_CHARS = 200
MAX_NODES = 64

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
_UNARY = {ast.UAdd: lambda a: a, ast.USub: lambda a: -a}
_SYMBOLS = {"\u00d7": "*", "\u00f7": "/", "\u2212": "-", "\u2013": "-", "\u22c5": "*"}


class ExpressionError(ValueError):
  """The text is not a whitelisted arithmetic expression (or divides by zero)."""


def normalize_expression(text: str) -> str:
  """Unicode operator symbols mapped to ASCII, surrounding whitespace and `.` removed."""
  for k, v in _SYMBOLS.items():
    text = text.replace(k, v)
  return text.strip().rstrip(".").strip()


def evaluate(text: str) -> tuple[fractions.Fraction, list[int]]:
  """Value of an expression and the integer literals it uses, in order of appearance.

  Raises ExpressionError for anything outside the whitelist."""
  text = normalize_expression(text)
  if not text or len(text) > MAX_EXPRESSION_CHARS:
    raise ExpressionError("empty or too long")
  try:
    tree = ast.parse(text, mode="eval")
  except (SyntaxError, ValueError) as e:
    raise ExpressionError(f"does not parse: {e}") from None
  nodes = list(ast.walk(tree))
  if len(nodes) > MAX_NODES:
    raise ExpressionError("too many terms")
  used: list[int] = []

  def value(node) -> fractions.Fraction:
    if isinstance(node, ast.Expression):
      return value(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
      used.append(node.value)
      return fractions.Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
      a, b = value(node.left), value(node.right)
      if isinstance(node.op, ast.Div) and b == 0:
        raise ExpressionError("division by zero")
      return _BINARY[type(node.op)](a, b)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
      return _UNARY[type(node.op)](value(node.operand))
    raise ExpressionError(f"{type(node).__name__} is not allowed")

  return value(tree), used


def try_evaluate(text: str) -> Optional[tuple[fractions.Fraction, list[int]]]:
  """`evaluate`, or None when the text is not a valid expression."""
  try:
    return evaluate(text)
  except ExpressionError:
    return None


def format_value(v: fractions.Fraction) -> str:
  """An exact value as text: "12", "-3", or "7/2" for a non-integer."""
  return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"
