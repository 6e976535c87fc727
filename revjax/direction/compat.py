"""onanchat's layouts, bug for bug (explicit, opt-in): base-loader chunks and parity-alternated conversations.

See :mod:`revjax.direction`, section onanchat compatibility.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from revjax.direction.conversations import _check_conversation
from revjax.direction.core import Direction, Specials, Tokens, _as_ids


def _parity_direction(index: int) -> Direction:
    if index < 0:
        raise ValueError(f"the parity index must be non-negative, got {index}")
    return Direction.FORWARD if index % 2 == 0 else Direction.BACKWARD


def compat_orient_chunk(chunk: Tokens, direction: Direction | str, specials: Specials, index: int) -> np.ndarray:
    """Return onanchat's base-loader transform of one popped ``B·T+1`` chunk at loader yield ``index``."""
    tok = _as_ids(chunk, "chunk")
    if tok.size < 2:
        raise ValueError(f"a chunk needs at least 2 tokens, got {tok.size}")
    direction = Direction.parse(direction)
    if direction is Direction.FORWARD:
        return tok.copy()
    if direction is Direction.BACKWARD:
        return np.concatenate([tok[:1], tok[:0:-1]])
    way = _parity_direction(index)
    body = tok[1:-1][::-1] if way is Direction.BACKWARD else tok[1:-1]
    return np.concatenate([tok[:1], np.asarray([specials.marker(way)], dtype=np.int32), body])


def compat_chunk_to_batch(chunk: Tokens, batch_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(inputs int32 (B,T), targets int64 (B,T))`` of a ``B·T+1`` chunk, as onanchat's loader does."""
    tok = np.asarray(chunk)
    if tok.shape != (batch_size * seq_len + 1,):
        raise ValueError(
            f"a chunk for B={batch_size}, T={seq_len} must hold {batch_size * seq_len + 1} tokens, got {tok.shape}"
        )
    inputs = tok[:-1].astype(np.int32).reshape(batch_size, seq_len)
    targets = tok[1:].astype(np.int64).reshape(batch_size, seq_len)
    return inputs, targets


def compat_chunks(pieces: Iterable[Tokens], batch_size: int, seq_len: int) -> Iterator[np.ndarray]:
    """Yield consecutive, non-overlapping ``B·T+1`` chunks of the flat stream made by concatenating ``pieces``."""
    need = batch_size * seq_len + 1
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch size and sequence length must be positive, got B={batch_size}, T={seq_len}")
    buffer = np.zeros(0, dtype=np.int32)
    for piece in pieces:
        buffer = np.concatenate([buffer, _as_ids(piece, "stream piece")])
        while buffer.size >= need:
            yield buffer[:need]
            buffer = buffer[need:]


def compat_batches(
    pieces: Iterable[Tokens], direction: Direction | str, specials: Specials, batch_size: int, seq_len: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield onanchat base-loader ``(inputs, targets)`` batches from a flat stream, yield index 0, 1, 2, …."""
    for index, chunk in enumerate(compat_chunks(pieces, batch_size, seq_len)):
        yield compat_chunk_to_batch(compat_orient_chunk(chunk, direction, specials, index), batch_size, seq_len)


def compat_orient_conversation(
    ids: Sequence[int], direction: Direction | str, specials: Specials, index: int
) -> list[int]:
    """Return onanchat's mid-training / RL-prompt layout of one rendered conversation at parity ``index``."""
    ids, _ = compat_orient_sft_example(ids, [0] * len(ids), direction, specials, index)
    return ids


def compat_orient_sft_example(
    ids: Sequence[int], mask: Sequence[int], direction: Direction | str, specials: Specials, index: int
) -> tuple[list[int], list[int]]:
    """Return onanchat's SFT ``(ids, mask)`` of one rendered conversation at example parity ``index``."""
    ids, mask = _check_conversation(ids, mask, specials)
    direction = Direction.parse(direction)
    if direction is Direction.FORWARD:
        return ids, mask
    if direction is Direction.BACKWARD:
        return ids[:1] + ids[:0:-1], mask[:1] + mask[:0:-1]
    way = _parity_direction(index)
    body_ids, body_mask = (ids[:0:-1], mask[:0:-1]) if way is Direction.BACKWARD else (ids[1:], mask[1:])
    return [specials.bos, specials.marker(way)] + body_ids, [mask[0], 0] + body_mask
