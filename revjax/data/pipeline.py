"""Base-training data pipeline: parquet shards → documents → tokens → model order → packed batches.

A :class:`TokenBatchDataset` is a stateful Grain ``IterDataset``. Its iterator reads the documents of one
split (this process's row groups of every shard, strided like nanochat's ``parquets_iter_batched``),
tokenizes them in threaded batches, puts each document in model order through :mod:`revjax.direction`,
concatenates them into one flat stream and cuts that stream into ``(inputs int32 (B, T), targets int32
(B, T))`` batches, −1 marking targets that are not scored.

Layouts
    ``document`` (default): every document is oriented on its own (``[BOS t…]``, ``[BOS rev(t)]`` or
    ``[BOS marker …]`` with a seeded per-document direction; ``rev`` by the reversal ``unit``). Row ``r``
    of a batch is the ``T+1`` stream tokens starting ``r·T`` after the batch start, so consecutive rows
    overlap by one token (the last target of a row is the first input of the next), and the next batch
    starts ``B·T`` tokens later. Every stream token after the first is therefore a target exactly once.
    The document index that seeds the bidirectional choice is ``epoch · N + i`` for the ``i``-th of the
    split's ``N`` documents, so it does not depend on the process layout and a document seen again in
    a later epoch gets a fresh draw.

    ``data.packing`` (:mod:`revjax.data.packing`) decides where rows start in the document layout:
    ``stream`` as just described; ``marked`` repeats the document's head (BOS[, marker]) at the start of
    a row that starts inside a document, so each row advances ``T − head`` tokens there; ``bos_aligned``
    packs whole documents best-fit into rows of ``T+1`` that do not overlap, each starting with BOS.

    ``compat``: onanchat's base loader exactly (``nanochat/direction_dataloader.py`` in onanchat): the stream is the
    BOS-prefixed documents, every yield pops ``B·T+1`` tokens (the last target is not reused) and
    transforms them with :func:`revjax.direction.compat_orient_chunk` at the yield index.

State
    ``get_state()`` is a small JSON dict naming the stream position after the last yielded batch: the
    epoch, the shard (index in the split), its row group, the document in that row group and the token
    offset into that document's model-order sequence, plus the number of batches yielded; with
    ``bos_aligned`` packing the next document to read and the stream indices of the buffered documents.
    No tokens are stored: restoring re-reads and re-tokenizes those documents, which gives the same stream.
    The train split cycles forever; val stops at its end unless ``cycle=True``.

Process ``p`` of ``P`` reads row groups ``p, p+P, …`` of every shard (:func:`revjax.data.shards.plan_row_groups`);
:mod:`revjax.data.pieces` tokenizes and orients the documents; :mod:`revjax.data.batches` builds the pipelines of a
config and assembles the global batch.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Literal

import grain
import numpy as np
import pyarrow.parquet as pq

from revjax.data.packing import PACKINGS, BestFitBuffer, Packing, expand_runs
from revjax.data.pieces import Piece, orient_texts, usable_cores
from revjax.data.shards import Split, open_shard, plan_row_groups, read_texts, split_shards
from revjax.direction import (
    Direction,
    Specials,
    Unit,
    compat_chunk_to_batch,
    compat_orient_chunk,
    continued_row,
    document_head_length,
    inputs_and_targets,
)
from revjax.tokenizer import Tokenizer

Layout = Literal["document", "compat"]
Batch = tuple[np.ndarray, np.ndarray]

_LAYOUTS = ("document", "compat")
_FINGERPRINT = ("split", "layout", "packing", "direction", "unit", "seed", "process_index", "process_count")
_BEFORE = {"packing": "stream", "unit": "token"}  # what states saved before these keys existed had


class TokenBatchDataset(grain.IterDataset):
    """Packed ``(inputs, targets)`` batches of one split of a parquet corpus, for one process."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        split: Split,
        tokenizer: Tokenizer,
        *,
        batch_size: int,
        seq_len: int,
        direction: Direction | str = "forward",
        unit: Unit | str = Unit.TOKEN,
        layout: Layout = "document",
        packing: Packing = "stream",
        packing_buffer: int = 1000,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        cycle: bool | None = None,
        tokenizer_threads: int = 4,
        tokenizer_batch_size: int = 128,
    ) -> None:
        """Plan the reading order; ``cycle=None`` cycles the train split forever and reads val once.

        Tokenization uses at most as many threads as this process may run on: tiktoken slows down
        when its threads outnumber the cores.
        """
        super().__init__()
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if layout not in _LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(_LAYOUTS)}")
        if packing not in PACKINGS:
            raise ValueError(f"unknown packing {packing!r}; expected one of {', '.join(PACKINGS)}")
        if layout == "compat" and packing != "stream":
            raise ValueError(f"the compat layout packs onanchat's stream; packing={packing!r} needs layout=document")
        if packing_buffer < 1:
            raise ValueError(f"packing_buffer must be a positive number of documents, got {packing_buffer}")
        if packing == "marked" and seq_len <= document_head_length(direction):
            raise ValueError(f"marked packing needs seq_len above the {document_head_length(direction)}-token "
                             f"document head, got {seq_len}")
        if not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index must be in [0, process_count={process_count}), got {process_index}"
            )
        if tokenizer_threads < 1 or tokenizer_batch_size < 1:
            raise ValueError(
                f"tokenizer_threads and tokenizer_batch_size must be positive, "
                f"got {tokenizer_threads} and {tokenizer_batch_size}"
            )
        self.shards = split_shards(data_dir, split)
        self.units, self.split_docs = plan_row_groups(self.shards, process_index, process_count)
        if not any(unit.rows for unit in self.units):
            total = sum(pq.ParquetFile(p).num_row_groups for p in self.shards)
            raise ValueError(
                f"the {split} split in {data_dir} has no documents for process {process_index} of "
                f"{process_count} ({total} row groups in all); use fewer processes or write the shards "
                "with more, smaller row groups"
            )
        self.split = split
        self.tokenizer = tokenizer
        self.specials = Specials.from_tokenizer(tokenizer)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.direction, self.unit = Direction.parse(direction), Unit.parse(unit)
        self.layout = layout
        self.packing = packing
        self.packing_buffer = packing_buffer
        self.head_length = document_head_length(self.direction)
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.cycle = split == "train" if cycle is None else cycle
        self.tokenizer_threads = min(tokenizer_threads, usable_cores())
        self.tokenizer_batch_size = tokenizer_batch_size

    def __iter__(self) -> TokenBatchIterator:
        return TokenBatchIterator(self)

    def __str__(self) -> str:
        return (
            f"TokenBatchDataset(split={self.split}, B={self.batch_size}, T={self.seq_len}, "
            f"direction={self.direction.value}, layout={self.layout}, packing={self.packing}, "
            f"process={self.process_index}/{self.process_count})"
        )


class TokenBatchIterator(grain.DatasetIterator):
    """Iterator of a :class:`TokenBatchDataset`; ``get_state``/``set_state`` give exact resumption."""

    def __init__(self, dataset: TokenBatchDataset) -> None:
        super().__init__()
        self._ds = dataset
        self._unit_index = {(u.shard, u.row_group): i for i, u in enumerate(dataset.units)}
        self._first_docs = np.array([u.first_doc for u in dataset.units], dtype=np.int64)
        self._file: tuple[int, pq.ParquetFile] | None = None
        self._texts: tuple[int, list[str]] | None = None
        self._reset(self._normalise(0, 0, 0), offset=0, yields=0)

    # ---- stream position ---------------------------------------------------------------------------

    def _reset(self, cursor: tuple[int, int, int], *, offset: int, yields: int) -> None:
        """Start reading at document ``cursor`` (epoch, unit, row), ``offset`` tokens into it."""
        self._cursor = cursor
        self._pieces: collections.deque[Piece] = collections.deque()
        self._head = offset  # offset of the stream head into the first piece
        self._available = -offset  # buffered tokens after the head
        self._yields = yields
        self._buffer = BestFitBuffer()  # bos_aligned packing only

    def _normalise(self, epoch: int, unit: int, row: int) -> tuple[int, int, int]:
        """Return the first document at or after (epoch, unit, row), wrapping to the next epoch."""
        units = self._ds.units
        while row >= units[unit].rows:
            unit, row = unit + 1, 0
            if unit == len(units):
                epoch, unit = epoch + 1, 0
        return epoch, unit, row

    def _position(self) -> tuple[int, int, int, int]:
        """Return (epoch, unit, row, offset) of the stream head."""
        if not self._pieces:
            return (*self._cursor, self._head)
        piece = self._pieces[0]
        i = int(np.searchsorted(piece.starts, self._head, side="right")) - 1
        return (*piece.where[i], self._head - int(piece.starts[i]))

    # ---- reading and tokenizing ------------------------------------------------------------------------

    def _unit_texts(self, unit: int) -> list[str]:
        if self._texts is None or self._texts[0] != unit:
            info = self._ds.units[unit]
            path = self._ds.shards[info.shard]
            if self._file is None or self._file[0] != info.shard:
                self._file = (info.shard, open_shard(path))
            self._texts = (unit, read_texts(self._file[1], path, info.row_group))
        return self._texts[1]

    def _read_piece(self) -> Piece | None:
        """Tokenize and orient the next (up to) ``tokenizer_batch_size`` documents; None at a finite end."""
        ds = self._ds
        texts: list[str] = []
        where: list[tuple[int, int, int]] = []
        while len(texts) < ds.tokenizer_batch_size and (ds.cycle or self._cursor[0] == 0):
            epoch, unit, row = self._cursor
            taken = self._unit_texts(unit)[row : row + ds.tokenizer_batch_size - len(texts)]
            texts += taken
            where += [(epoch, unit, r) for r in range(row, row + len(taken))]
            self._cursor = self._normalise(epoch, unit, row + len(taken))
        if not texts:
            return None
        return self._orient(texts, where)

    def _stream_index(self, epoch: int, unit: int, row: int) -> int:
        """The document's index in the split's endless stream (it seeds the bidirectional choice)."""
        return epoch * self._ds.split_docs + self._ds.units[unit].first_doc + row

    def _orient(self, texts: list[str], where: list[tuple[int, int, int]]) -> Piece:
        ds = self._ds
        direction = Direction.FORWARD if ds.layout == "compat" else ds.direction
        piece = orient_texts(texts, where, ds.tokenizer, threads=ds.tokenizer_threads, direction=direction,
                             specials=ds.specials, seed=ds.seed, stream_index=self._stream_index, unit=ds.unit)
        if not self._pieces and self._head >= piece.first_size:
            raise ValueError(
                f"the iterator state's token offset {self._head} lies past the end of its document "
                f"({piece.first_size} tokens); the data or tokenizer changed since the state was saved"
            )
        return piece

    def _take(self, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the next ``n`` stream tokens (ids, is_target) without consuming them; None at a finite end."""
        while self._available < n:
            piece = self._read_piece()
            if piece is None:
                return None
            self._pieces.append(piece)
            self._available += len(piece.ids)
        ids, masks = [], []
        start, need = self._head, n
        for piece in self._pieces:
            part = slice(start, start + need)
            ids.append(piece.ids[part])
            masks.append(piece.is_target[part])
            need -= len(ids[-1])
            start = 0
            if need == 0:
                break
        return np.concatenate(ids), np.concatenate(masks)

    def _advance(self, n: int) -> None:
        self._head += n
        self._available -= n
        while self._pieces and self._head >= len(self._pieces[0].ids):
            self._head -= len(self._pieces.popleft().ids)

    # ---- iterator protocol ---------------------------------------------------------------------------------

    def __next__(self) -> Batch:
        ds = self._ds
        b, t = ds.batch_size, ds.seq_len
        chunk = self._take(b * t + 1) if ds.packing == "stream" else ()
        if chunk is None:
            return self._end()
        if ds.layout == "compat":
            oriented = compat_orient_chunk(chunk[0], ds.direction, ds.specials, self._yields)
            inputs, targets = compat_chunk_to_batch(oriented, b, t)
            self._advance(b * t + 1)
        elif ds.packing != "stream":
            rows = []
            for _ in range(b):
                row = self._marked_row() if ds.packing == "marked" else self._bos_aligned_row()
                if row is None:
                    return self._end()
                rows.append(row)
            inputs, targets = inputs_and_targets(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))
        else:
            ids, is_target = chunk
            window = np.lib.stride_tricks.sliding_window_view
            inputs, targets = inputs_and_targets(window(ids, t + 1)[::t], window(is_target, t + 1)[::t])
            self._advance(b * t)
        self._yields += 1
        return inputs, targets.astype(np.int32)

    def _end(self) -> Batch:
        ds = self._ds
        if self._yields == 0:
            need = f"the {ds.batch_size * ds.seq_len + 1} tokens" if ds.packing == "stream" else "the tokens"
            raise ValueError(
                f"the {ds.split} split holds fewer than {need} one batch of B={ds.batch_size}, T={ds.seq_len} "
                f"needs ({ds.packing} packing) for process {ds.process_index} of {ds.process_count}; "
                "use a smaller batch or sequence length, or more data"
            )
        raise StopIteration

    def _marked_row(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next row of ``marked`` packing: from a document's BOS, or its head then where the last row ended."""
        t, h = self._ds.seq_len, self._ds.head_length
        offset = self._position()[3]
        if offset < h:  # at the head already: start the row at the document's BOS
            self._head, self._available = self._head - offset, self._available + offset
            row = self._take(t + 1)
            if row is not None:
                self._advance(t)
            return row
        tail = self._take(t + 1 - h)
        if tail is None:
            return None
        start = self._head - offset  # the document starts in the first buffered piece
        row = continued_row(self._pieces[0].ids[start : start + h], *tail)
        self._advance(t - h)
        return row

    def _refill(self) -> bool:
        piece = self._read_piece()
        if piece is not None:
            self._buffer_piece(piece)
        return piece is not None

    def _buffer_piece(self, piece: Piece) -> None:
        ends = [*piece.starts[1:], len(piece.ids)]
        for a, b, place in zip(piece.starts, ends, piece.where):
            self._buffer.add(self._stream_index(*place), piece.ids[a:b], piece.is_target[a:b])

    def _bos_aligned_row(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self._buffer.take_row(self._ds.seq_len + 1, self._refill, self._ds.packing_buffer)

    def _restore_buffer(self, runs: str) -> None:
        """Re-read the documents of a saved best-fit buffer from their stream indices."""
        ds, where = self._ds, []
        for index in expand_runs(runs):
            epoch, local = divmod(index, ds.split_docs)
            unit = int(np.searchsorted(self._first_docs, local, side="right")) - 1
            if unit < 0 or not 0 <= local - ds.units[unit].first_doc < ds.units[unit].rows:
                raise ValueError(f"the iterator state buffers document {index}, which this process does not read; "
                                 "the shards or the process layout changed since it was saved")
            where.append((epoch, unit, local - ds.units[unit].first_doc))
        for start in range(0, len(where), ds.tokenizer_batch_size):
            part = where[start : start + ds.tokenizer_batch_size]
            self._buffer_piece(self._orient([self._unit_texts(unit)[row] for _, unit, row in part], part))

    def get_state(self) -> dict[str, Any]:
        """Return the JSON-serialisable position after the last yielded batch."""
        ds = self._ds
        epoch, unit, row, offset = self._position()
        return {
            "epoch": epoch,
            "shard": ds.units[unit].shard,
            "row_group": ds.units[unit].row_group,
            "doc": row,
            "offset": offset,
            "yields": self._yields,
            "split": ds.split,
            "layout": ds.layout,
            "packing": ds.packing,
            "direction": ds.direction.value,
            "unit": ds.unit.value,
            "seed": ds.seed,
            "process_index": ds.process_index,
            "process_count": ds.process_count,
        } | ({"packing_buffer": ds.packing_buffer, "buffer": self._buffer.index_runs()}
             if ds.packing == "bos_aligned" else {})

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a state returned by :meth:`get_state` of an iterator over the same data."""
        ds = self._ds
        mine = self.get_state()
        for key in (*_FINGERPRINT, *(["packing_buffer"] if ds.packing == "bos_aligned" else [])):
            saved = state.get(key, _BEFORE.get(key))
            if saved != mine[key]:
                raise ValueError(
                    f"the iterator state was saved with {key}={saved!r} but this pipeline has "
                    f"{key}={mine[key]!r}; build the pipeline with the settings of the saved run"
                )
        unit = self._unit_index.get((state["shard"], state["row_group"]))
        if unit is None or not 0 <= state["doc"] < ds.units[unit].rows or state["offset"] < 0:
            raise ValueError(
                f"the iterator state points at document {state['doc']} of shard {state['shard']} row group "
                f"{state['row_group']}, which this split does not hold; the shards changed since it was saved"
            )
        self._reset((state["epoch"], unit, state["doc"]), offset=state["offset"], yields=state["yields"])
        if ds.packing == "bos_aligned":
            self._restore_buffer(state.get("buffer", ""))

    def __str__(self) -> str:
        return f"TokenBatchIterator({self._ds})"
