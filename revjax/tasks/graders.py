"""Graders: pure functions of (reference, reply text in reading order).

``#### N`` numeric answers (GSM8K, arithmetic, SpellingBee), multiple-choice letters, exact match, and a code
runner that executes a program in a separate Python process with a timeout and memory limit (HumanEval); nothing
a model writes is ever executed in-process.
"""

from __future__ import annotations

import ast
import operator
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

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

@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`run_program`."""

    success: bool
    timed_out: bool
    returncode: int | None
    stdout: str
    stderr: str


# Run before the program (``python -I -c _BOOT program.py``): every socket constructor and name lookup raises, then
# the program runs as ``__main__`` with its own line numbers.
_BOOT = """\
import socket as _s, _socket as _c
def _refuse(*args, **kwargs):
    raise PermissionError("network access is disabled in the revjax sandbox")
class _NoSocket(_c.socket):
    def __init__(self, *args, **kwargs):
        _refuse()
for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "create_connection",
              "create_server", "socketpair", "fromfd"):
    for _module in (_s, _c):
        if hasattr(_module, _name):
            setattr(_module, _name, _refuse)
_s.socket = _s.SocketType = _c.socket = _c.SocketType = _NoSocket
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000


def _limits(memory_bytes: int):
    """A ``preexec_fn`` that moves the child into an empty network namespace where the kernel allows it (so
    processes it starts have no network either) and caps its address space and file sizes (Linux); None
    elsewhere."""
    if not sys.platform.startswith("linux"):
        return None

    def apply() -> None:
        import ctypes
        import resource

        try:
            ctypes.CDLL(None, use_errno=True).unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
        except (OSError, AttributeError):
            pass  # no namespaces here: the in-process block still refuses sockets
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    return apply


def run_program(program: str, timeout: float = 5.0, memory_bytes: int = 1 << 30) -> RunResult:
    """Run ``program`` in a fresh isolated Python (``-I``) in an empty temporary folder; success is exit code 0.

    The child gets ``timeout`` seconds of wall time, an address-space cap of ``memory_bytes`` (Linux), a 1 MiB
    file-size cap and no network (sockets refused in-process, plus an empty network namespace where the kernel
    allows one). This bounds runaway and careless code; it is not a security sandbox for hostile code.
    """
    with tempfile.TemporaryDirectory(prefix="revjax-run-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0", "HOME": tmp}
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _BOOT, path], cwd=tmp, env=env, capture_output=True, text=True,
                timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=_limits(int(memory_bytes)),
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return RunResult(False, True, None, out, "timed out")
    return RunResult(proc.returncode == 0, False, proc.returncode, proc.stdout, proc.stderr)


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
    """HumanEval: the prompt's imports + the reply's program + the tests + ``check(entry_point)`` must exit 0."""
    program = f"{extract_imports(prompt)}\n\n{extract_program(reply)}\n\n{test}\ncheck({entry_point})\n"
    return run_program(program, timeout=timeout).success
