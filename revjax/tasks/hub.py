"""Files from the Hugging Face hub and local tables: download into a cache, read parquet / JSONL / Arrow rows.

``hub_files(repo, files, cache_dir, local)`` returns the paths of ``files`` of dataset ``repo``: from ``local``
(a file, or a folder laid out like the repository) when given, else from ``<cache_dir>/hub/<repo>/``, downloading
what is missing from ``https://huggingface.co/datasets/<repo>/resolve/main/<file>`` with an atomic write.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from revjax.tasks.base import TaskError

HUB_URL = "https://huggingface.co/datasets/{repo}/resolve/{revision}/{file}"


class DownloadError(TaskError):
    """A data file could not be downloaded."""


def default_cache_dir() -> Path:
    """``$REVJAX_BASE_DIR/tasks``, else ``~/.cache/revjax/tasks``."""
    return Path(os.environ.get("REVJAX_BASE_DIR", "~/.cache/revjax")).expanduser() / "tasks"


def download(url: str, dest: str | os.PathLike[str], timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` through a temporary file and an atomic rename; the file is never half written."""
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, requests.get(url, stream=True, timeout=timeout) as resp:
            resp.raise_for_status()
            for chunk in resp.iter_content(chunk_size=1 << 20):
                f.write(chunk)
        os.replace(tmp, dest)
    except requests.RequestException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (requests.ConnectionError, requests.Timeout)):
            reason = "no network connection to the server"
        elif isinstance(e, requests.HTTPError) and e.response is not None:
            reason = f"HTTP {e.response.status_code}"
        else:
            reason = type(e).__name__
        raise DownloadError(
            f"could not download {url} ({reason}); if this machine is offline, copy the file to {dest} or pass "
            "path=... pointing at a local copy"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def hub_url(repo: str, file: str, revision: str = "main") -> str:
    """The download address of ``file`` in hub dataset ``repo``."""
    return HUB_URL.format(repo=repo, revision=revision, file=file)


def hub_files(
    repo: str,
    files: Iterable[str],
    cache_dir: str | os.PathLike[str] | None = None,
    local: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Paths of ``files`` of ``repo``: ``local`` itself if it is one file, else under ``local`` or the cache."""
    files = list(files)
    if local is not None:
        local = Path(local).expanduser()
        if local.is_file():
            return [local]
        missing = [f for f in files if not (local / f).is_file()]
        if not local.is_dir() or missing:
            raise TaskError(
                f"{local} is neither a data file nor a folder holding {', '.join(missing or files)} of {repo}; "
                "pass the file itself or a folder laid out like the hub repository"
            )
        return [local / f for f in files]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = []
    for f in files:
        path = root / "hub" / repo / f
        if not path.is_file():
            download(hub_url(repo, f), path)
        out.append(path)
    return out


def read_table(paths: list[Path]) -> pa.Table:
    """All rows of parquet (``.parquet``), JSONL (``.jsonl``, ``.jsonl.gz``) or Arrow stream files, in order."""
    tables = [_read_one(p) for p in paths]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _read_one(path: Path) -> pa.Table:
    name = path.name
    try:
        if name.endswith(".parquet"):
            return pq.read_table(path)
        if name.endswith((".jsonl", ".jsonl.gz")):
            return pa.Table.from_pylist(read_jsonl(path.read_bytes(), gz=name.endswith(".gz")))
        if name.endswith(".arrow"):
            return arrow_stream(path.read_bytes())
    except (OSError, pa.ArrowException, ValueError) as e:
        raise TaskError(f"could not read {path} ({e}); delete it so it is fetched again, or check the file") from e
    raise TaskError(f"{path} is not a .parquet, .jsonl, .jsonl.gz or .arrow file")


def read_jsonl(data: bytes, gz: bool = False) -> list[Any]:
    """Parse JSON lines (blank lines skipped)."""
    if gz:
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def arrow_stream(data: bytes) -> pa.Table:
    """A table from Arrow IPC stream bytes (the ``data-*.arrow`` files of a saved Hugging Face dataset)."""
    with pa.ipc.open_stream(io.BytesIO(data)) as reader:
        return reader.read_all()


class Rows:
    """Random access to table rows as Python dicts, in an order optionally shuffled like ``Dataset.shuffle(seed)``.

    Hugging Face datasets shuffle by ``np.random.default_rng(seed).permutation(n)``; the same rule here gives
    nanochat's row order for the same source files.
    """

    def __init__(self, table: pa.Table, shuffle_seed: int | None = None) -> None:
        self.table = table  # chunks kept as they are: one chunk could overflow 32-bit string offsets
        n = table.num_rows
        self.order = None if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(self.order[index]) if self.order is not None else index
        return self.table.slice(i, 1).to_pylist()[0]
