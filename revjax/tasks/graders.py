"""Graders: pure functions of (reference, reply text in reading order).

``#### N`` numeric answers (GSM8K, arithmetic, SpellingBee), multiple-choice letters, exact match, and HumanEval's
code grader, which runs the program in the bubblewrap sandbox of :mod:`revjax.tasks.sandbox` (its own user, PID and
network namespaces, a read-only file system, time, memory and output limits); nothing a model writes is ever
executed in-process, and where no sandbox can be made the grader raises :class:`SandboxUnavailable` instead of
running it.
"""

from __future__ import annotations

import ast
import operator
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from revjax.tasks.sandbox import run_program

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
_LETTER_RE = re.compile(r"[A-Za-z0-9]+")


def extract_answer(text: str) -> str | None:
    """The number after the first ``#### `` marker, commas removed (GSM8K's normalisation), or None."""
    match = ANSWER_RE.search(text)
    if not match:
        return None
    return match.group(1).strip().replace(",", "")


def _number(text: str | None) -> Decimal | None:
    if text is None:
        return None
    text = text.rstrip(".")
    try:
        return Decimal(text) if text else None
    except InvalidOperation:
        return None


def grade_numeric(reference: str, reply: str) -> bool:
    """True when ``reply``'s ``#### N`` equals ``reference``'s (commas ignored; ``12.0`` and ``12.`` equal ``12``)."""
    want, got = _number(extract_answer(reference)), _number(extract_answer(reply))
    return want is not None and got is not None and want == got


def first_choice(reply: str, letters: tuple[str, ...] | list[str]) -> str | None:
    """The first word of ``reply`` that is one of ``letters`` (``"B"``, ``"B."``, ``"(B) x"``), or None."""
    valid = set(letters)
    for word in _LETTER_RE.findall(reply):
        if word in valid:
            return word
    return None


def grade_choice(answer: str, reply: str, letters: tuple[str, ...] | list[str]) -> bool:
    """True when the first choice letter in ``reply`` is ``answer``."""
    return first_choice(reply, letters) == answer


def grade_exact(expected: str, reply: str) -> bool:
    """True when ``reply`` equals ``expected`` up to surrounding whitespace."""
    return reply.strip() == expected.strip()


def last_text(conversation: dict[str, Any]) -> str:
    """The text of the last assistant message (the last part's text when it is a list of parts)."""
    content = conversation["messages"][-1]["content"]
    return content if isinstance(content, str) else content[-1]["text"]


# ------------------------------------------------------------------------------------------- calculator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculate(expr: str) -> str:
    """What Python prints for an arithmetic expression (numbers, ``+ - * /``, parentheses), without ``eval``."""

    def walk(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        raise ValueError(f"unsupported element in arithmetic expression {expr!r}")

    return str(walk(ast.parse(expr, mode="eval").body))


# ------------------------------------------------------------------------------------------- code

def extract_imports(prompt: str) -> str:
    """The import lines at the top of a code prompt (comments and blank lines skipped)."""
    imports = []
    for line in prompt.split("\n"):
        stripped = line.strip()
        if stripped.startswith(("import ", "from ")):
            imports.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    return "\n".join(imports)


def extract_program(reply: str) -> str:
    """The first fenced code block of ``reply`` (```` ```python ```` or bare), else the whole reply."""
    blocks = re.findall(r"```(?:python)?\s*\n(.*?)\n```", reply, re.DOTALL)
    return (blocks[0] if blocks else reply).strip()


def grade_code(prompt: str, reply: str, test: str, entry_point: str, timeout: float = 5.0) -> bool:
    """HumanEval: the prompt's imports + the reply's program + the tests + ``check(entry_point)`` must exit 0 in the
    sandbox; raises :class:`SandboxUnavailable` where there is none (the task is then not run, never scored)."""
    program = f"{extract_imports(prompt)}\n\n{extract_program(reply)}\n\n{test}\ncheck({entry_point})\n"
    return run_program(program, timeout=timeout).success
