"""Documents in model order: orientation, packed-row continuation, restoration, inputs and targets.

The layouts and mask convention are those of :mod:`revjax.direction`, section Documents.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from revjax.direction.core import Direction, Specials, Tokens, _as_ids, _resolve
from revjax.direction.units import Unit, flip


def _backward_body(body: np.ndarray, unit: Unit | str, specials: Specials) -> np.ndarray:
    """A one-way document body read backward: ids reversed (token units) or segments reversed (text units)."""
    if Unit.parse(unit) is Unit.TOKEN:
        return body[::-1].copy()
    return np.asarray(flip(body, unit, specials), dtype=np.int32)


def known_directions(direction: Direction | str) -> list[Direction]:
    """The reading directions a model of ``direction`` can generate and be scored in (bidirectional: both)."""
    direction = Direction.parse(direction)
    return [Direction.FORWARD, Direction.BACKWARD] if direction is Direction.BIDIRECTIONAL else [direction]


def document_direction(direction: Direction | str, seed: int, index: int) -> Direction:
    """Return the direction document ``index`` runs in (seeded choice when bidirectional)."""
    return _resolve(direction, seed, index)[0]


def orient_document(
    tokens: Tokens, direction: Direction | str, specials: Specials, *, seed: int = 0, index: int = 0,
    unit: Unit | str = Unit.TOKEN,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ids int32, is_target bool)`` of one document (tokens without BOS) in model order.

    With a text ``unit`` a backward document's ``tokens`` are those of its reversed text
    (:func:`revjax.direction.orient_text` with :func:`document_direction`), kept in order."""
    body = _as_ids(tokens, "document tokens")
    if np.any(body == specials.bos):
        raise ValueError(f"document tokens contain BOS ({specials.bos}); pass each document without it")
    way, marked = _resolve(direction, seed, index)
    if way is Direction.BACKWARD:
        body = _backward_body(body, unit, specials)
    head = [specials.bos, specials.marker(way)] if marked else [specials.bos]
    ids = np.concatenate([np.asarray(head, dtype=np.int32), body])
    is_target = np.ones(ids.shape, dtype=bool)
    if marked:
        is_target[1] = False
    return ids, is_target


def document_head_length(direction: Direction | str) -> int:
    """Tokens before a model-order document's text: BOS, plus the direction token when bidirectional."""
    return 2 if Direction.parse(direction) is Direction.BIDIRECTIONAL else 1


def continued_row(head: Tokens, ids: Tokens, is_target: Tokens) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ids, is_target)`` of a packed row that continues a document after its ``head`` (BOS[, marker]).

    ``ids`` go on from where the previous row stopped: its first token was the previous row's last target, so
    here it is context only, as are the repeated head tokens; every document token stays a target once.
    """
    head_ids = _as_ids(head, "document head")
    body = _as_ids(ids, "continued ids")
    mask = np.asarray(is_target, dtype=bool).copy()
    if mask.shape != body.shape or body.size == 0:
        raise ValueError(f"a continued row needs ids and is_target of one non-empty shape, got {body.shape}")
    mask[0] = False
    return np.concatenate([head_ids, body]), np.concatenate([np.zeros(len(head_ids), bool), mask])


def orient_documents(
    docs: Iterable[Tokens], direction: Direction | str, specials: Specials, *, seed: int = 0, first_index: int = 0,
    unit: Unit | str = Unit.TOKEN,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the flat ``(ids, is_target)`` stream of documents ``first_index, first_index+1, …`` in model order."""
    ids_parts, mask_parts = [], []
    for offset, doc in enumerate(docs):
        ids, is_target = orient_document(doc, direction, specials, seed=seed, index=first_index + offset, unit=unit)
        ids_parts.append(ids)
        mask_parts.append(is_target)
    if not ids_parts:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=bool)
    return np.concatenate(ids_parts), np.concatenate(mask_parts)


def restore_document(ids: Tokens, direction: Direction | str, specials: Specials, *,
                     unit: Unit | str = Unit.TOKEN) -> np.ndarray:
    """Return the reading-order tokens (no BOS, no marker) of one model-order document; with a text ``unit`` a
    backward body stays as it is (decode it and :func:`revjax.direction.reverse_units` the text)."""
    arr = _as_ids(ids, "model-order ids")
    if arr.size == 0 or arr[0] != specials.bos:
        raise ValueError(f"a model-order document must start with BOS ({specials.bos})")
    direction = Direction.parse(direction)
    if direction is Direction.BIDIRECTIONAL:
        if arr.size < 2:
            raise ValueError("a bidirectional document needs a direction token after BOS")
        direction, body = specials.marker_direction(int(arr[1])), arr[2:]
    else:
        body = arr[1:]
    return _backward_body(body, unit, specials) if direction is Direction.BACKWARD else body.copy()


def inputs_and_targets(ids: Tokens, is_target: Tokens) -> tuple[np.ndarray, np.ndarray]:
    """Split rows of ``T+1`` (last axis) into ``(inputs int32, targets int64)`` with −1 where not a target."""
    arr = np.asarray(ids)
    mask = np.asarray(is_target).astype(bool)
    if arr.shape != mask.shape or arr.ndim == 0 or arr.shape[-1] < 2:
        raise ValueError(
            f"ids and is_target must have the same shape with rows of at least 2, got {arr.shape} and {mask.shape}"
        )
    inputs = arr[..., :-1].astype(np.int32)
    targets = np.where(mask[..., 1:], arr[..., 1:], -1).astype(np.int64)
    return inputs, targets
