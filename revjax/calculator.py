"""The engine's calculator tool: a safe arithmetic evaluator and the forced output for a tool call.

A tool call is laid out ``forward`` (``<|python_start|> expr <|python_end|>`` → ``<|output_start|> result
<|output_end|>``) or ``backward`` (every piece reversed: ``<|python_end|> rev(expr) <|python_start|>`` →
``<|output_end|> rev(result) <|output_start|>``); :func:`tool_output` gives the forced ids for a sequence that ends
with one. :class:`revjax.engine.Engine` writes them as given tokens.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Any, Mapping, Sequence

MAX_EXPR_CHARS = 256
MAX_DIGITS = 1000  # largest integer (in decimal digits) the calculator computes
TOOL_SPECIALS = ("python_start", "python_end", "output_start", "output_end")


class _Refused(Exception):
    pass


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Refused
    if isinstance(value, int) and value.bit_length() > MAX_DIGITS * 3.33:
        raise _Refused
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused
    return value


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _number(_UNARY[type(node.op)](_number(_evaluate(node.operand))))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _number(_evaluate(node.left)), _number(_evaluate(node.right))
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right * math.log10(abs(left)) > MAX_DIGITS:
                raise _Refused
        return _number(_BINARY[type(node.op)](left, right))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "count"
            and len(node.args) == 1 and not node.keywords):
        text, sub = _evaluate(node.func.value), _evaluate(node.args[0])
        if isinstance(text, str) and isinstance(sub, str):
            return text.count(sub)
    raise _Refused


def calculate(expr: str) -> int | float | None:
    """Evaluate arithmetic (numbers, + - * / // % **, unary ±, parentheses) or ``'text'.count('s')``; None if refused.

    The expression is parsed with ``ast`` and walked node by node; nothing is ever executed. Thousands separators in
    numbers are dropped. Errors (division by zero …), non-numeric results, integers over ``MAX_DIGITS`` digits and
    powers that would exceed them are refused.
    """
    expr = expr.strip()
    if not expr or len(expr) > MAX_EXPR_CHARS:
        return None
    if "'" not in expr and '"' not in expr:
        expr = expr.replace(",", "")
    try:
        return _number(_evaluate(ast.parse(expr, mode="eval").body))
    except (_Refused, SyntaxError, ValueError, ArithmeticError, TypeError, RecursionError, MemoryError):
        return None


def tool_specials(tokenizer) -> dict[str, int]:
    """The ids of the four tool markers (:data:`TOOL_SPECIALS`) in ``tokenizer``."""
    return {name: int(tokenizer.encode_special(f"<|{name}|>")) for name in TOOL_SPECIALS}


def tool_output(seq: Sequence[int], order: str, ids: Mapping[str, int], tokenizer, max_tokens: int) -> list[int] | None:
    """The forced output for a tool call that ``seq`` ends with (layout ``order``), or None if there is none, the
    expression is refused or the output would take more than ``max_tokens`` ids."""
    opener, closer = ("python_start", "python_end") if order == "forward" else ("python_end", "python_start")
    if not seq or seq[-1] != ids[closer] or ids[opener] not in seq[:-1]:
        return None
    begin = len(seq) - 2 - list(seq[-2::-1]).index(ids[opener])
    body = list(seq[begin + 1: -1])
    if any(t in ids.values() for t in body):
        return None
    value = calculate(tokenizer.decode(body if order == "forward" else body[::-1]))
    if value is None:
        return None
    result = [int(t) for t in tokenizer.encode(str(value))]
    if order == "forward":
        forced = [ids["output_start"], *result, ids["output_end"]]
    else:
        forced = [ids["output_end"], *result[::-1], ids["output_start"]]
    return forced if len(forced) <= max_tokens else None
