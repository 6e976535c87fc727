"""GSM8K (openai/gsm8k): grade-school maths with calculator calls.

Each ``<<expr=result>>`` span of a solution becomes a ``python`` part (``expr``) and a ``python_output`` part
(``result``, split at the last ``=``; empty when there is none); the text around the spans, the final
``#### answer`` line included, stays as ``text`` parts, empty ones too (nanochat's tasks/gsm8k.py).
"""

from __future__ import annotations

import os
import re

from revjax.tasks.base import Conversation, Task, TaskError
from revjax.tasks.graders import grade_numeric, last_text
from revjax.tasks.hub import Rows, hub_files, read_table
from revjax.tasks.registry import register

PathLike = str | os.PathLike[str]

GSM8K_REPO = "openai/gsm8k"
_CALL = re.compile(r"(<<[^>]+>>)")


def calculator_parts(solution: str) -> list[dict[str, str]]:
    """Assistant parts of a GSM8K solution: text, then python + python_output for each ``<<expr=result>>``."""
    parts: list[dict[str, str]] = []
    for piece in _CALL.split(solution):
        if piece.startswith("<<") and piece.endswith(">>"):
            inner = piece[2:-2]
            expr, result = inner.rsplit("=", 1) if "=" in inner else (inner, "")
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        else:
            parts.append({"type": "text", "text": piece})
    return parts


@register("gsm8k")
class GSM8K(Task):
    """openai/gsm8k ``main`` or ``socratic``, split train (7,473) or test (1,319); graded on the ``#### N`` answer."""

    eval_type = "generative"

    def __init__(
        self, subset: str = "main", split: str = "train", path: PathLike | None = None,
        cache_dir: PathLike | None = None, shuffle_seed: int | None = 42,
    ) -> None:
        if subset not in ("main", "socratic") or split not in ("train", "test"):
            raise TaskError(f"GSM8K subset must be main/socratic and split train/test, got {subset!r}/{split!r}")
        self.subset, self.split = subset, split
        self.name = f"gsm8k/{split}" if subset == "main" else f"gsm8k-{subset}/{split}"
        self.eval_only = split != "train"
        files = [f"{subset}/{split}-00000-of-00001.parquet"]
        self.rows = Rows(read_table(hub_files(GSM8K_REPO, files, cache_dir, path)), shuffle_seed)

    def _size(self) -> int:
        return len(self.rows)

    def _get(self, index: int) -> Conversation:
        row = self.rows[index]
        return {
            "messages": [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": calculator_parts(row["answer"])},
            ]
        }

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        return grade_numeric(last_text(conversation), reply)
