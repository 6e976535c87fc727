"""Plain chat data: SmolTalk (hub parquet), conversations from a JSONL file, and ChatterBot's YAML dialogs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from revjax.tasks.archives import archive_path, members, read_member
from revjax.tasks.base import Conversation, ListTask, Task, TaskError, check_messages
from revjax.tasks.hub import Rows, default_cache_dir, download, hub_files, read_jsonl, read_table
from revjax.tasks.registry import register

PathLike = str | os.PathLike[str]

SMOLTALK_REPO = "HuggingFaceTB/smol-smoltalk"
SMOLTALK_FILES = {
    "train": [f"data/train-{i:05d}-of-00004.parquet" for i in range(4)],
    "test": ["data/test-00000-of-00001.parquet"],
}
NANOCHAT_IDENTITY_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"


def _choose(value: str, allowed: Any, what: str) -> str:
    if value not in allowed:
        raise TaskError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return value


@register("smoltalk")
class SmolTalk(Task):
    """HuggingFaceTB/smol-smoltalk (train 460K, test 24K): ``messages`` with an optional leading system message."""

    def __init__(
        self, split: str = "train", path: PathLike | None = None, cache_dir: PathLike | None = None,
        shuffle_seed: int | None = 42,
    ) -> None:
        self.split = _choose(split, SMOLTALK_FILES, "SmolTalk split")
        self.name = f"smoltalk/{split}"
        self.eval_only = split != "train"
        self.rows = Rows(read_table(hub_files(SMOLTALK_REPO, SMOLTALK_FILES[split], cache_dir, path)), shuffle_seed)

    def _size(self) -> int:
        return len(self.rows)

    def _get(self, index: int) -> Conversation:
        messages = [{"role": m["role"], "content": m["content"]} for m in self.rows[index]["messages"]]
        return {"messages": check_messages(messages, f"{self.name} row {index}")}


@register("jsonl")
class JsonlConversations(ListTask):
    """Conversations from a JSONL file: each line a list of messages (nanochat's CustomJSON) or
    ``{"messages": [...], ...}``. ``url`` is fetched into the cache when ``path`` is not given."""

    def __init__(
        self, path: PathLike | None = None, url: str | None = None, cache_dir: PathLike | None = None,
        name: str | None = None, eval_only: bool = False,
    ) -> None:
        if path is None:
            if url is None:
                raise TaskError("the jsonl task needs path=FILE (or url=... to download one)")
            root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            path = root / "url" / url.rstrip("/").rsplit("/", 1)[-1]
            if not path.is_file():
                download(url, path)
        path = Path(path).expanduser()
        if not path.is_file():
            raise TaskError(f"conversation file {path} does not exist; pass the path of a JSONL file")
        rows = []
        for i, row in enumerate(read_jsonl(path.read_bytes(), gz=path.name.endswith(".gz"))):
            conversation = {"messages": row} if isinstance(row, list) else row
            if not isinstance(conversation, dict):
                raise TaskError(f"{path} line {i + 1}: expected a list of messages or an object with 'messages'")
            check_messages(conversation.get("messages"), f"{path} line {i + 1}")
            rows.append(conversation)
        super().__init__(rows, name or path.stem, eval_only=eval_only)


@register("nanochat-identity")
def nanochat_identity(path: PathLike | None = None, cache_dir: PathLike | None = None) -> Task:
    """nanochat's identity_conversations.jsonl (it speaks as nanochat; revjax's own is the ``identity`` task)."""
    return JsonlConversations(path, NANOCHAT_IDENTITY_URL, cache_dir, name="nanochat-identity")


CHATTERBOT_MEMBER = r"chatterbot_corpus/data/(?P<language>[^/]+)/(?P<topic>[^/]+)\.yml"


@register("chatterbot")
class Chatterbot(ListTask):
    """ChatterBot corpus dialogs (``conversations:`` lists of alternating statements) as user/assistant turns.

    A dialog with an odd number of statements drops its last one. ``botprofile`` is left out by default: it
    describes another bot's identity.
    """

    def __init__(
        self, language: str = "english", topics: list[str] | None = None, exclude: tuple[str, ...] = ("botprofile",),
        archive: PathLike | None = None, cache_dir: PathLike | None = None, verify: bool = True,
    ) -> None:
        wheel = archive_path("chatterbot-corpus", cache_dir, archive, verify=verify)
        found = members(wheel, CHATTERBOT_MEMBER)
        rows: list[Conversation] = []
        languages = set()
        for member, match in found.items():
            languages.add(match["language"])
            topic = match["topic"]
            if match["language"] != language or topic in exclude or (topics is not None and topic not in topics):
                continue
            # BaseLoader keeps every scalar a string ("Yes" stays "Yes", not True).
            data = yaml.load(read_member(wheel, member).decode("utf-8"), Loader=yaml.BaseLoader) or {}
            for k, dialog in enumerate(data.get("conversations") or []):
                lines = [str(s).strip() for s in (dialog if isinstance(dialog, list) else [dialog])]
                lines = lines[: len(lines) // 2 * 2]
                if not lines or not all(lines):
                    continue
                messages = [{"role": ("user", "assistant")[j % 2], "content": s} for j, s in enumerate(lines)]
                rows.append({"messages": messages, "topic": topic})
        if not rows:
            raise TaskError(
                f"no ChatterBot dialogs for language {language!r} and topics {topics}; "
                f"the languages are {', '.join(sorted(languages))}"
            )
        super().__init__(rows, f"chatterbot/{language}")

