"""Rendered conversations in model order (``sequence`` and ``turn`` modes, both loss masks) and back.

The layouts are those of :mod:`revjax.direction`, section Conversations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from revjax.direction.core import ConversationMode, Direction, LossMask, Specials, _resolve
from revjax.direction.units import Unit, segment_permutation


def _spans(ids: Sequence[int], pairs: Mapping[int, int]) -> list[tuple[int, int]]:
    """Return ``(opener, closer)`` positions of each turn; ``closer == len(ids)`` when the turn is unclosed."""
    spans, i, n = [], 0, len(ids)
    while i < n:
        closer = pairs.get(ids[i])
        if closer is None:
            i += 1
            continue
        j = i + 1
        while j < n and ids[j] != closer:
            j += 1
        spans.append((i, j))
        i = j + 1
    return spans


def _turn_pairs(specials: Specials) -> dict[int, int]:
    return {specials.user_start: specials.user_end, specials.assistant_start: specials.assistant_end}


def _reversed_positions(ids: Sequence[int], start: int, stop: int, unit: Unit, specials: Specials) -> list[int]:
    """Positions ``start … stop-1`` read backward: reversed (token units) or by segments (text units)."""
    if unit is Unit.TOKEN:
        return list(range(stop - 1, start - 1, -1))
    return [start + p for p in segment_permutation(ids[start:stop], specials.all_ids())]


def _permutation(ids: Sequence[int], mode: ConversationMode, specials: Specials, unit: Unit) -> list[int]:
    """Return the involutive position permutation that reverses a one-way conversation ``ids`` (BOS at 0)."""
    n = len(ids)
    if mode is ConversationMode.SEQUENCE:
        return [0] + _reversed_positions(ids, 1, n, unit, specials)
    perm = list(range(n))
    for start, stop in _spans(ids, _turn_pairs(specials)):
        perm[start + 1 : stop] = _reversed_positions(ids, start + 1, stop, unit, specials)
    return perm


def _check_conversation(ids: Sequence[int], mask: Sequence[int], specials: Specials) -> tuple[list[int], list[int]]:
    ids, mask = [int(t) for t in ids], [int(m) for m in mask]
    if not ids or ids[0] != specials.bos:
        raise ValueError(f"conversation ids must start with BOS ({specials.bos})")
    if len(mask) != len(ids):
        raise ValueError(f"conversation mask has {len(mask)} entries for {len(ids)} ids")
    return ids, mask


def _user_turn_mask(ids: Sequence[int], specials: Specials) -> list[int]:
    """Return 1 on every user turn (``us``, content, ``ue``) of a reading-order conversation, else 0."""
    mask = [0] * len(ids)
    for start, stop in _spans(ids, {specials.user_start: specials.user_end}):
        end = min(stop + 1, len(ids))
        mask[start:end] = [1] * (end - start)
    return mask


def orient_conversation(
    ids: Sequence[int],
    mask: Sequence[int],
    direction: Direction | str,
    specials: Specials,
    *,
    mode: ConversationMode | str,
    loss: LossMask | str = LossMask.GENERATED,
    seed: int = 0,
    index: int = 0,
    unit: Unit | str = Unit.TOKEN,
) -> tuple[list[int], list[int]]:
    """Return ``(ids, mask)`` of a rendered conversation in model order, masked per ``loss`` (module docstring).

    With a text ``unit`` a backward conversation is rendered from reversed message texts
    (:func:`revjax.direction.orient_text`); its turns and markers are reversed around them."""
    ids, mask = _check_conversation(ids, mask, specials)
    mode, loss = ConversationMode.parse(mode), LossMask.parse(loss)
    way, marked = _resolve(direction, seed, index)
    if way is Direction.BACKWARD:
        if mode is ConversationMode.SEQUENCE and loss is LossMask.GENERATED:
            mask = _user_turn_mask(ids, specials)
        perm = _permutation(ids, mode, specials, Unit.parse(unit))
        ids, mask = [ids[p] for p in perm], [mask[p] for p in perm]
    if marked:
        ids = [ids[0], specials.marker(way)] + ids[1:]
        mask = [mask[0], 0] + mask[1:]
    return ids, mask


def restore_conversation(
    ids: Sequence[int],
    mask: Sequence[int],
    direction: Direction | str,
    specials: Specials,
    *,
    mode: ConversationMode | str,
    unit: Unit | str = Unit.TOKEN,
) -> tuple[list[int], list[int]]:
    """Return ``(ids, mask)`` of a model-order conversation in reading order, marker removed, mask carried along
    (text ``unit``: message contents stay the reversed texts' tokens)."""
    ids, mask = _check_conversation(ids, mask, specials)
    mode = ConversationMode.parse(mode)
    direction = Direction.parse(direction)
    if direction is Direction.BIDIRECTIONAL:
        if len(ids) < 2:
            raise ValueError("a bidirectional conversation needs a direction token after BOS")
        direction = specials.marker_direction(ids[1])
        ids, mask = ids[:1] + ids[2:], mask[:1] + mask[2:]
    if direction is Direction.BACKWARD:
        perm = _permutation(ids, mode, specials, Unit.parse(unit))
        ids, mask = [ids[p] for p in perm], [mask[p] for p in perm]
    return ids, mask
