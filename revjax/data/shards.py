"""Parquet shard helpers shared by the default corpus and FineWeb-Edu.

A corpus is a folder of ``shard_XXXXX.parquet`` files with a single string column ``text``. As in nanochat, the
lexicographically last shard is the validation split and all the others are the training split.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from revjax.errors import RevjaxError

Split = Literal["train", "val"]

TEXT_COLUMN = "text"
SHARD_GLOB = "*.parquet"
MAKE_SHARDS_HINT = (
    "run `python -m revjax.data.corpus` for the default corpus or "
    "`python -m revjax.data.fineweb -n 2` for FineWeb-Edu shards"
)
REPAIR_HINT = "delete or replace it (after deleting, `revjax prepare` rebuilds the default or FineWeb-Edu corpus)"


class ShardError(RevjaxError, ValueError):
    """A corpus folder or shard file that cannot be read, described in one sentence."""


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard_00042.parquet``."""
    return f"shard_{index:05d}.parquet"


def write_shard(path: str | os.PathLike[str], docs: list[str], *, row_group_size: int = 1024) -> Path:
    """Write ``docs`` as one zstd parquet file with a ``text`` column, atomically (temp file, then rename)."""
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be at least 1, got {row_group_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({TEXT_COLUMN: pa.array(docs, type=pa.string())})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_shards(
    docs: Iterable[str],
    out_dir: str | os.PathLike[str],
    *,
    docs_per_shard: int,
    row_group_size: int = 1024,
    start_index: int = 0,
) -> list[Path]:
    """Write ``docs`` in order into ``shard_{i:05d}.parquet`` files of ``docs_per_shard`` documents each.

    Numbering starts at ``start_index``; the last shard may hold fewer documents. Returns the written paths.
    """
    if docs_per_shard < 1:
        raise ValueError(f"docs_per_shard must be at least 1, got {docs_per_shard}")
    out_dir = Path(out_dir)
    paths: list[Path] = []
    buffer: list[str] = []

    def flush() -> None:
        paths.append(write_shard(out_dir / shard_name(start_index + len(paths)), buffer, row_group_size=row_group_size))
        buffer.clear()

    for doc in docs:
        if not isinstance(doc, str):
            raise TypeError(f"documents must be str, got {type(doc).__name__}")
        buffer.append(doc)
        if len(buffer) == docs_per_shard:
            flush()
    if buffer:
        flush()
    return paths


def list_shards(data_dir: str | os.PathLike[str]) -> list[Path]:
    """All ``*.parquet`` files in ``data_dir`` (hidden temp files excluded), sorted by name; [] if it does not exist."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    return sorted(p for p in data_dir.glob(SHARD_GLOB) if p.is_file() and not p.name.startswith("."))


def split_shards(data_dir: str | os.PathLike[str], split: Split) -> list[Path]:
    """Shards of ``split``: ``val`` is the lexicographically last shard, ``train`` all the others."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    shards = list_shards(data_dir)
    if not shards:
        raise ShardError(f"no parquet shards found in {data_dir}; {MAKE_SHARDS_HINT}")
    if len(shards) < 2:
        raise ShardError(
            f"only one shard ({shards[0].name}) in {data_dir}, but a train/val split needs at least two "
            f"(the last one is val); {MAKE_SHARDS_HINT}"
        )
    return shards[:-1] if split == "train" else shards[-1:]


def open_shard(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """Open a shard, checking that it is a parquet file with a ``text`` column and at least one row."""
    try:
        shard = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for files that are not parquet
        raise ShardError(f"{path} is not a parquet file ({type(err).__name__}); {REPAIR_HINT}") from None
    columns = shard.schema_arrow.names
    if TEXT_COLUMN not in columns:
        raise ShardError(f"{path} has no {TEXT_COLUMN!r} column (only {', '.join(map(repr, columns)) or 'none'}), "
                         f"so it holds no documents; {REPAIR_HINT}")
    if shard.metadata.num_rows == 0:
        raise ShardError(f"{path} holds no rows, but every shard needs at least one document; {REPAIR_HINT}")
    return shard


def read_texts(shard: pq.ParquetFile, path: str | os.PathLike[str], row_group: int) -> list[str]:
    """The documents of one row group of an opened shard, checking that every one is a string."""
    texts = shard.read_row_group(row_group, columns=[TEXT_COLUMN]).column(TEXT_COLUMN).to_pylist()
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            shown = "a null text" if text is None else f"the {type(text).__name__} {text!r:.40}"
            raise ShardError(f"row {row} of row group {row_group} in {path} holds {shown}, but every row's "
                             f"{TEXT_COLUMN!r} must be a string; {REPAIR_HINT}")
    return texts


def iter_texts(
    data_dir: str | os.PathLike[str],
    split: Split,
    *,
    start: int = 0,
    step: int = 1,
    batch_docs: int = 128,
) -> Iterator[list[str]]:
    """Yield the documents of ``split`` in order, as lists of at most ``batch_docs`` strings.

    Within every shard, row groups ``start, start + step, ...`` are read, so process ``rank`` of ``world`` passes
    ``start=rank, step=world`` and gets a disjoint part of the data, as nanochat's ``parquets_iter_batched`` does.
    """
    if start < 0 or step < 1 or batch_docs < 1:
        raise ValueError(f"need start >= 0, step >= 1 and batch_docs >= 1, got {start}, {step} and {batch_docs}")
    for path in split_shards(data_dir, split):
        shard = open_shard(path)
        for rg in range(start, shard.num_row_groups, step):
            texts = read_texts(shard, path, rg)
            for i in range(0, len(texts), batch_docs):
                yield texts[i : i + batch_docs]


def iter_documents(
    data_dir: str | os.PathLike[str],
    split: Split,
    *,
    start: int = 0,
    step: int = 1,
    max_chars: int | None = None,
    doc_cap: int | None = None,
) -> Iterator[str]:
    """Yield single documents of ``split`` (see ``iter_texts``).

    For tokenizer training, as nanochat's ``tok_train``: each document is cut to ``doc_cap`` characters, and
    iteration stops once more than ``max_chars`` characters have been yielded.
    """
    total = 0
    for batch in iter_texts(data_dir, split, start=start, step=step):
        for doc in batch:
            if doc_cap is not None:
                doc = doc[:doc_cap]
            total += len(doc)
            yield doc
            if max_chars is not None and total > max_chars:
                return


@dataclass(frozen=True)
class RowGroup:
    """One row group of a split that a process reads."""

    shard: int
    row_group: int
    rows: int
    first_doc: int  # index in the split of its first document


def plan_row_groups(shards: list[Path], process_index: int, process_count: int) -> tuple[list[RowGroup], int]:
    """Return process ``p``'s row groups (``p, p+P, …`` of every shard, ``P = process_count``) in reading order,
    and the number of documents in the whole split."""
    units: list[RowGroup] = []
    first_doc = 0
    for shard, path in enumerate(shards):
        meta = open_shard(path)
        for row_group in range(meta.num_row_groups):
            rows = meta.metadata.row_group(row_group).num_rows
            if row_group % process_count == process_index:
                units.append(RowGroup(shard, row_group, rows, first_doc))
            first_doc += rows
    return units, first_doc
