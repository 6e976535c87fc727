"""Pieces of the base pipeline's stream: documents tokenized together, each put in model order.

:class:`revjax.data.pipeline.TokenBatchIterator` reads a split's documents a batch of texts at a time;
:func:`orient_texts` tokenizes them in threads and orients each through :func:`revjax.direction.orient_document`,
giving one :class:`Piece` of flat ids and target mask with each document's start and stream position. With a text
reversal unit (``word``, ``entity``) each document's direction is drawn first and a backward document's text is
reversed by pieces (:func:`revjax.direction.orient_text`) before tokenization.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from revjax.direction import Direction, Specials, Unit, document_direction, orient_document, orient_text
from revjax.tokenizer import Tokenizer

Place = tuple[int, int, int]  # (epoch, unit, row) of a document


@dataclass(frozen=True)
class Piece:
    """Consecutive model-order documents: flat ids and mask, each document's start and stream position."""

    ids: np.ndarray
    is_target: np.ndarray
    starts: np.ndarray
    where: list[Place]  # (epoch, unit, row) of each document

    @property
    def first_size(self) -> int:
        """Tokens of the first document."""
        return int(self.starts[1]) if len(self.starts) > 1 else len(self.ids)


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def orient_texts(
    texts: list[str],
    where: list[Place],
    tokenizer: Tokenizer,
    *,
    threads: int,
    direction: Direction,
    specials: Specials,
    seed: int,
    stream_index: Callable[[int, int, int], int],
    unit: Unit | str = Unit.TOKEN,
) -> Piece:
    """Tokenize ``texts`` (in ``threads``) and orient each; ``stream_index(*place)`` seeds its bidirectional draw."""
    unit = Unit.parse(unit)
    if unit is not Unit.TOKEN:
        texts = [orient_text(text, document_direction(direction, seed, stream_index(*place)), unit)
                 for text, place in zip(texts, where)]
    rows = tokenizer.encode(texts, num_threads=threads)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
    bounds = np.cumsum(lengths)[:-1]
    oriented = [
        orient_document(doc, direction, specials, seed=seed, index=stream_index(*place), unit=unit)
        for doc, place in zip(np.split(flat, bounds), where)
    ]
    sizes = np.fromiter((len(ids) for ids, _ in oriented), dtype=np.int64, count=len(oriented))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ids = np.concatenate([ids for ids, _ in oriented])
    is_target = np.concatenate([mask for _, mask in oriented])
    return Piece(ids, is_target, starts, where)
