"""Directions, conversation modes, loss masks, special token ids and the seeded per-item direction choice.

See :mod:`revjax.direction` for the layouts these name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

import numpy as np

Tokens = Sequence[int] | np.ndarray

_MASK64 = (1 << 64) - 1


class Direction(str, Enum):
    """The direction a model reads text in."""

    FORWARD = "forward"
    BACKWARD = "backward"
    BIDIRECTIONAL = "bidirectional"

    @classmethod
    def parse(cls, value: str | Direction) -> Direction:
        """Return the Direction named by ``value``, or raise a one-sentence ValueError."""
        return _parse_enum(cls, value, "direction")


class ConversationMode(str, Enum):
    """How a backward conversation is reversed: whole ``sequence`` after BOS, or inside each ``turn``."""

    SEQUENCE = "sequence"
    TURN = "turn"

    @classmethod
    def parse(cls, value: str | ConversationMode) -> ConversationMode:
        """Return the ConversationMode named by ``value``, or raise a one-sentence ValueError."""
        return _parse_enum(cls, value, "conversation mode")


class LossMask(str, Enum):
    """Which conversation tokens are targets: what the mode ``generated``, or the rendered ``assistant`` mask."""

    GENERATED = "generated"
    ASSISTANT = "assistant"

    @classmethod
    def parse(cls, value: str | LossMask) -> LossMask:
        """Return the LossMask named by ``value``, or raise a one-sentence ValueError."""
        return _parse_enum(cls, value, "loss mask")


def _parse_enum(cls: Any, value: Any, what: str) -> Any:
    if isinstance(value, cls):
        return value
    for member in cls:
        if value == member.value:
            return member
    names = ", ".join(m.value for m in cls)
    raise ValueError(f"unknown {what} {value!r}; expected one of {names}")


_SPECIAL_NAMES = {
    "bos": "<|bos|>",
    "user_start": "<|user_start|>",
    "user_end": "<|user_end|>",
    "assistant_start": "<|assistant_start|>",
    "assistant_end": "<|assistant_end|>",
    "python_start": "<|python_start|>",
    "python_end": "<|python_end|>",
    "output_start": "<|output_start|>",
    "output_end": "<|output_end|>",
    "forward": "<|forward|>",
    "backward": "<|backward|>",
}


@dataclass(frozen=True)
class Specials:
    """The special token ids that direction layouts use."""

    bos: int
    user_start: int
    user_end: int
    assistant_start: int
    assistant_end: int
    python_start: int
    python_end: int
    output_start: int
    output_end: int
    forward: int
    backward: int

    def __post_init__(self) -> None:
        ids = [getattr(self, f.name) for f in fields(self)]
        if len(set(ids)) != len(ids):
            raise ValueError(f"special token ids must be distinct, got {dict(zip(_SPECIAL_NAMES, ids))}")

    @classmethod
    def from_mapping(cls, ids: Mapping[str, int]) -> Specials:
        """Build from a mapping of special token text (``"<|bos|>"`` …) to id, e.g. ``special_ids.json``."""
        missing = [name for name in _SPECIAL_NAMES.values() if name not in ids]
        if missing:
            raise ValueError(f"special token ids are missing for {', '.join(missing)}")
        return cls(**{field: int(ids[name]) for field, name in _SPECIAL_NAMES.items()})

    @classmethod
    def from_tokenizer(cls, tok: Any) -> Specials:
        """Build from a tokenizer that has ``encode_special(name) -> int``."""
        return cls(**{field: int(tok.encode_special(name)) for field, name in _SPECIAL_NAMES.items()})

    def all_ids(self) -> frozenset[int]:
        """Every special token id."""
        return frozenset(getattr(self, f.name) for f in fields(self))

    def marker(self, direction: Direction | str) -> int:
        """Return the direction token id for ``forward`` or ``backward``."""
        direction = _one_way(direction)
        return self.forward if direction is Direction.FORWARD else self.backward

    def marker_direction(self, token: int) -> Direction:
        """Return the direction a direction token stands for, or raise if ``token`` is not one."""
        if token == self.forward:
            return Direction.FORWARD
        if token == self.backward:
            return Direction.BACKWARD
        raise ValueError(
            f"expected a direction token ({self.forward} or {self.backward}) after BOS, got {int(token)}"
        )


def _one_way(direction: Direction | str) -> Direction:
    direction = Direction.parse(direction)
    if direction is Direction.BIDIRECTIONAL:
        raise ValueError("a single sequence runs forward or backward, not bidirectional")
    return direction


def _mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def choose_direction(seed: int, index: int) -> Direction:
    """Return the seeded direction (forward or backward) of item ``index`` in a bidirectional stream."""
    bit = _mix64(_mix64(int(seed) & _MASK64) ^ (int(index) & _MASK64)) >> 63
    return Direction.BACKWARD if bit else Direction.FORWARD


def _resolve(direction: Direction | str, seed: int, index: int) -> tuple[Direction, bool]:
    """Return (the direction this item runs in, whether it carries a marker)."""
    direction = Direction.parse(direction)
    if direction is Direction.BIDIRECTIONAL:
        return choose_direction(seed, index), True
    return direction, False


def _resolve_generate(direction: Direction | str, generate: Direction | str | None) -> tuple[Direction, bool]:
    """Return (generation direction, whether a marker is used) for a model of ``direction``."""
    direction = Direction.parse(direction)
    if generate is None:
        if direction is Direction.BIDIRECTIONAL:
            raise ValueError("a bidirectional model needs generate='forward' or generate='backward'")
        return direction, False
    return _one_way(generate), direction is Direction.BIDIRECTIONAL


def _as_ids(tokens: Tokens, what: str) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integer token ids, got dtype {arr.dtype}")
    return arr.astype(np.int32)
