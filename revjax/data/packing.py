"""How base-training rows are cut from model-order documents (``data.packing``).

``stream``
    The documents are concatenated and cut into rows of ``T+1`` tokens that overlap by one token. Most rows
    start inside a document, so a bidirectional model sees no direction token for them.
``marked``
    The same stream, but a row that starts inside a document first repeats that document's head (BOS, and the
    direction token when bidirectional); the repeated tokens are context only, so every document token is
    still a target exactly once (:func:`revjax.direction.continued_row`).
``bos_aligned``
    Every row starts with a document's head: whole documents are packed best-fit from a buffer of the next
    ``data.packing_buffer`` documents in stream order (the largest that fits the space left; when none fits,
    the shortest is cropped to fill the row and the rest of it is dropped), as newer nanochat's
    BOS-aligned loader does. Rows do not overlap; a row's first token is context only. No padding.

The buffer keeps stream order, and the choice depends only on its documents' lengths, so the rows depend on
the seed and the data alone. :meth:`BestFitBuffer.index_runs` names its documents compactly for the iterator
state, which re-reads them on restore.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np

Packing = Literal["stream", "marked", "bos_aligned"]
PACKINGS = ("stream", "marked", "bos_aligned")


class BestFitBuffer:
    """Model-order documents waiting to be packed, in stream order, each with its index in the stream."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.docs: list[tuple[np.ndarray, np.ndarray]] = []
        self.lengths = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.docs)

    def add(self, index: int, ids: np.ndarray, is_target: np.ndarray) -> None:
        if self.indices and index <= self.indices[-1]:
            raise ValueError(f"documents enter the buffer in stream order; {index} came after {self.indices[-1]}")
        self.indices.append(index)
        self.docs.append((ids, is_target))
        self.lengths = np.append(self.lengths, len(ids))

    def _pop(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        self.indices.pop(i)
        self.lengths = np.delete(self.lengths, i)
        return self.docs.pop(i)

    def take_row(self, row_len: int, refill: Callable[[], bool], fill_to: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Pack one row of ``row_len`` tokens; ``refill()`` adds documents (False at a finite end) and is called
        while the buffer holds fewer than ``fill_to``. Returns None, taking nothing, when too few tokens are left."""
        while (len(self) < fill_to or int(self.lengths.sum()) < row_len) and refill():
            pass
        if int(self.lengths.sum()) < row_len:
            return None
        ids, masks, left = [], [], row_len
        while left:
            while len(self) < fill_to and refill():
                pass
            fits = self.lengths <= left
            if fits.any():
                doc = self._pop(int(np.argmax(np.where(fits, self.lengths, -1))))
            else:
                doc = self._pop(int(np.argmin(self.lengths)))
                doc = (doc[0][:left], doc[1][:left])
            ids.append(doc[0])
            masks.append(doc[1])
            left -= len(doc[0])
        return np.concatenate(ids), np.concatenate(masks)

    def index_runs(self) -> str:
        """The buffered documents' stream indices as ``"first+count …"`` runs of consecutive indices (a string, so
        that the iterator state keeps one shape)."""
        runs: list[list[int]] = []
        for index in self.indices:
            if runs and runs[-1][0] + runs[-1][1] == index:
                runs[-1][1] += 1
            else:
                runs.append([index, 1])
        return " ".join(f"{first}+{count}" for first, count in runs)


def expand_runs(runs: str) -> list[int]:
    """The stream indices named by :meth:`BestFitBuffer.index_runs`."""
    out: list[int] = []
    for run in runs.split():
        first, _, count = run.partition("+")
        if not (first.isdigit() and count.isdigit()) or int(count) < 1 or (out and int(first) <= out[-1]):
            raise ValueError(f"the iterator state's document buffer {runs!r} is not runs of stream indices in order")
        out.extend(range(int(first), int(first) + int(count)))
    return out


def best_fit_rows(docs: list[tuple[np.ndarray, np.ndarray]], row_len: int, buffer_size: int):
    """Yield the ``(ids, is_target)`` rows that BOS-aligned best-fit packing makes of ``docs`` (model order)."""
    buffer, pending = BestFitBuffer(), iter(enumerate(docs))

    def refill() -> bool:
        nxt = next(pending, None)
        if nxt is None:
            return False
        buffer.add(nxt[0], *nxt[1])
        return True

    while (row := buffer.take_row(row_len, refill, buffer_size)) is not None:
        yield row
