"""Cutting a book's text into documents of about ``TARGET_DOC_CHARS`` characters, for the default corpus.

Project Gutenberg's header, credits and licence are stripped, line ends normalised, and paragraphs (or verses)
joined into documents of at least the target and at most ``MAX_DOC_CHARS`` characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

TARGET_DOC_CHARS = 2500
MIN_DOC_CHARS = 1000
MAX_DOC_CHARS = 8000

_PG_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_PG_OLD_START = re.compile(r"^\*END\*THE SMALL PRINT!.*$", re.IGNORECASE | re.MULTILINE)
_PG_END = re.compile(
    r"^(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|\**\s*End of (the |this )?Project Gutenberg).*$",
    re.IGNORECASE | re.MULTILINE,
)
_PG_CREDITS = re.compile(r"^\s*(Produced by|E-?text prepared by|Transcribed by)\b[^\n]*(\n[^\n]+)*", re.IGNORECASE)


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header, credits line and licence footer from ``text`` if present."""
    start = _PG_START.search(text) or _PG_OLD_START.search(text)
    if start:
        text = _PG_CREDITS.sub("", text[start.end() :].lstrip("\n"), count=1)
    end = _PG_END.search(text)
    return text[: end.start()] if end else text


def normalize(text: str) -> str:
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n"))


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n{2,}", text) if p.strip()]


def _pieces(unit: str, limit: int) -> Iterator[str]:
    """Cut ``unit`` at line breaks (at characters for very long lines) into pieces of at most ``limit`` chars."""
    if len(unit) <= limit:
        yield unit
        return
    current = ""
    for line in unit.split("\n"):
        while len(line) > limit:
            if current:
                yield current
                current = ""
            yield line[:limit]
            line = line[limit:]
        if current and len(current) + 1 + len(line) > limit:
            yield current
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        yield current


def group(units: list[str], sep: str, target: int) -> list[str]:
    """Join consecutive ``units`` with ``sep`` into documents of at least ``target`` and at most MAX_DOC_CHARS chars.

    Units longer than ``target`` are cut first; only the last document may be shorter than ``target`` (it is
    appended to the one before if it is below MIN_DOC_CHARS and fits).
    """
    docs: list[str] = []
    current = ""
    for piece in (p for unit in units for p in _pieces(unit, target)):
        if current and len(current) + len(sep) + len(piece) > MAX_DOC_CHARS:
            docs.append(current)
            current = ""
        current = f"{current}{sep}{piece}" if current else piece
        if len(current) >= target:
            docs.append(current)
            current = ""
    if current:
        if docs and len(current) < MIN_DOC_CHARS and len(docs[-1]) + len(sep) + len(current) <= MAX_DOC_CHARS:
            docs[-1] = f"{docs[-1]}{sep}{current}"
        else:
            docs.append(current)
    return docs


def even_target(units: list[str], sep: str) -> int:
    """Target size that cuts ``units`` joined by ``sep`` into equal parts of at most MAX_DOC_CHARS chars."""
    total = sum(map(len, units)) + len(sep) * (len(units) - 1)
    parts = -(-total // MAX_DOC_CHARS)
    return max(1, -(-total // parts))
