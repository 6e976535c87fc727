"""Direction semantics: every forward / backward / bidirectional token layout in revjax.

The rest of revjax never reverses a token list itself; it asks this module. Everything here is pure
Python/numpy on token ids: no model, no device, no file, no tokenizer import. Special token ids come
in through :class:`Specials`.

Directions
    ``forward`` reads text left to right, ``backward`` right to left, and ``bidirectional`` trains
    one model on both, with a direction token (``<|forward|>`` F or ``<|backward|>`` K) right after
    BOS telling it which way the sequence runs. In model order BOS always comes first.

Documents (default, corrected mode)
    Each document is oriented on its own: forward ``[BOS, t1 … tn]``, backward ``[BOS, tn … t1]``,
    bidirectional ``[BOS, marker, …]`` on every document, its direction chosen by
    :func:`choose_direction` from ``(seed, document index)`` only, so it does not depend on
    batching, packing, worker or process layout.

    Mask convention (``is_target``, aligned with the ids): ``is_target[i]`` says whether ``ids[i]``
    is scored when the model predicts it from ``ids[:i]``. BOS is a target (the previous document
    ends by predicting it: forward models learn "the text ends here", backward models "the text
    starts here"); the direction token is never a target, since nothing before it determines it.
    A packed row of ``T+1`` ids becomes ``inputs = row[:-1]`` and ``targets = row[1:]`` with −1
    where ``is_target[1:]`` is false (:func:`inputs_and_targets`). Forward, backward and
    bidirectional therefore score the same multiset of tokens per document: BOS plus its text.
    Where rows start is the pipeline's packing choice (:mod:`revjax.data.packing`): a row that
    continues a document may repeat its head (:func:`document_head_length` tokens) as context only
    (:func:`continued_row`), so the scored tokens stay the same.

Conversations (ids + mask from ``render_conversation``: ``B us q ue as a ae …``)
    The mask uses the same convention: ``mask[i] == 1`` means ``ids[i]`` is a target. Two modes:

    * ``sequence`` (what onanchat trains): everything after BOS is reversed, special tokens
      included, so backward is ``B ae rev(a) as ue rev(q) us``; turn order is reversed and each
      turn's end marker comes first.
    * ``turn`` (what the onanchat design describes): the content between each ``us … ue`` and
      ``as … ae`` pair is reversed in place; turn order and markers stay, so backward is
      ``B us rev(q) ue as rev(a) ae``. Tool-call and tool-output tokens inside an assistant turn
      are reversed with its content, so tool use cannot run backward.

    Bidirectional adds the marker right after BOS (mask 0), direction per conversation from
    :func:`choose_direction`. Two loss masks (:class:`LossMask`):

    * ``generated`` (default) supervises exactly what the chat front end asks the model to
      generate in that mode. Forward and turn mode: the assistant content and its ``ae`` (the
      forward mask carried along with its tokens). Sequence-backward: the backward chat prompt is
      ``B ae rev(r) as`` and the model must produce the preceding user turn ``ue rev(q) us``, so
      every user turn (both markers and content) is supervised and the assistant turns are not.
    * ``assistant`` carries the rendered mask along with its tokens, whatever the mode; in
      sequence-backward this is onanchat's SFT mask ``[mask[0]] + reversed(mask[1:])``.

Inference
    A prompt in reading order (with BOS) is oriented like a document; a generation in model order
    is restored by reversing token ids, never strings. For backward generation the continuation
    comes before the prompt text in reading order. Chat prompts (:func:`chat_prompt`) are always
    rebuilt from the reading-order messages, so in backward chat an earlier turn is appended to
    the end of the model-order sequence, and a bidirectional marker sits right after BOS, as in
    training.

onanchat compatibility (explicit, opt-in; functions named ``compat_*``)
    Reproduces onanchat's layouts bug for bug, for comparing with published checkpoints: the base
    loader reverses whole micro-batch chunks of ``B·T+1`` tokens with ``chunk[0]`` pinned, and its
    bidirectional mode alternates direction per loader yield with one marker per chunk and the
    chunk's last token dropped; mid, SFT and RL reverse whole conversations with the parity of a
    batch or example index choosing the direction. The compat base and mid layouts score every
    token; compat SFT carries the rendered mask along with its tokens (``[mask[0]] +
    reversed(mask[1:])``, marker 0).

Documents and compat chunks are numpy ``int32`` arrays (masks ``bool``); conversations, prompts
and chat layouts are Python lists of ints, like ``render_conversation``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

import numpy as np

Tokens = Sequence[int] | np.ndarray

__all__ = [
    "ConversationMode",
    "Direction",
    "LossMask",
    "Specials",
    "chat_prompt",
    "chat_reply",
    "chat_stop_token",
    "choose_direction",
    "compat_batches",
    "compat_chunk_to_batch",
    "compat_chunks",
    "compat_orient_chunk",
    "compat_orient_conversation",
    "compat_orient_sft_example",
    "document_direction",
    "inputs_and_targets",
    "join_generation",
    "orient_conversation",
    "orient_document",
    "orient_documents",
    "document_head_length",
    "continued_row",
    "orient_prompt",
    "restore_conversation",
    "restore_document",
    "restore_generation",
    "restore_prompt",
]

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


# ---------------------------------------------------------------------------------------------
# Documents


def known_directions(direction: Direction | str) -> list[Direction]:
    """The reading directions a model of ``direction`` can generate and be scored in (bidirectional: both)."""
    direction = Direction.parse(direction)
    return [Direction.FORWARD, Direction.BACKWARD] if direction is Direction.BIDIRECTIONAL else [direction]


def document_direction(direction: Direction | str, seed: int, index: int) -> Direction:
    """Return the direction document ``index`` runs in (seeded choice when bidirectional)."""
    return _resolve(direction, seed, index)[0]


def orient_document(
    tokens: Tokens, direction: Direction | str, specials: Specials, *, seed: int = 0, index: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ids int32, is_target bool)`` of one document (tokens without BOS) in model order."""
    body = _as_ids(tokens, "document tokens")
    if np.any(body == specials.bos):
        raise ValueError(f"document tokens contain BOS ({specials.bos}); pass each document without it")
    way, marked = _resolve(direction, seed, index)
    if way is Direction.BACKWARD:
        body = body[::-1]
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
    docs: Iterable[Tokens], direction: Direction | str, specials: Specials, *, seed: int = 0, first_index: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return the flat ``(ids, is_target)`` stream of documents ``first_index, first_index+1, …`` in model order."""
    ids_parts, mask_parts = [], []
    for offset, doc in enumerate(docs):
        ids, is_target = orient_document(doc, direction, specials, seed=seed, index=first_index + offset)
        ids_parts.append(ids)
        mask_parts.append(is_target)
    if not ids_parts:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=bool)
    return np.concatenate(ids_parts), np.concatenate(mask_parts)


def restore_document(ids: Tokens, direction: Direction | str, specials: Specials) -> np.ndarray:
    """Return the reading-order tokens (no BOS, no marker) of one model-order document."""
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
    return body[::-1].copy() if direction is Direction.BACKWARD else body.copy()


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


def _as_ids(tokens: Tokens, what: str) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integer token ids, got dtype {arr.dtype}")
    return arr.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Conversations


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


def _permutation(ids: Sequence[int], mode: ConversationMode, specials: Specials) -> list[int]:
    """Return the involutive position permutation that reverses a one-way conversation ``ids`` (BOS at 0)."""
    n = len(ids)
    if mode is ConversationMode.SEQUENCE:
        return [0] + list(range(n - 1, 0, -1))
    perm = list(range(n))
    for start, stop in _spans(ids, _turn_pairs(specials)):
        perm[start + 1 : stop] = range(stop - 1, start, -1)
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
) -> tuple[list[int], list[int]]:
    """Return ``(ids, mask)`` of a rendered conversation in model order, masked per ``loss`` (module docstring)."""
    ids, mask = _check_conversation(ids, mask, specials)
    mode, loss = ConversationMode.parse(mode), LossMask.parse(loss)
    way, marked = _resolve(direction, seed, index)
    if way is Direction.BACKWARD:
        if mode is ConversationMode.SEQUENCE and loss is LossMask.GENERATED:
            mask = _user_turn_mask(ids, specials)
        perm = _permutation(ids, mode, specials)
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
) -> tuple[list[int], list[int]]:
    """Return ``(ids, mask)`` of a model-order conversation in reading order, marker removed, mask carried along."""
    ids, mask = _check_conversation(ids, mask, specials)
    mode = ConversationMode.parse(mode)
    direction = Direction.parse(direction)
    if direction is Direction.BIDIRECTIONAL:
        if len(ids) < 2:
            raise ValueError("a bidirectional conversation needs a direction token after BOS")
        direction = specials.marker_direction(ids[1])
        ids, mask = ids[:1] + ids[2:], mask[:1] + mask[2:]
    if direction is Direction.BACKWARD:
        perm = _permutation(ids, mode, specials)
        ids, mask = [ids[p] for p in perm], [mask[p] for p in perm]
    return ids, mask


# ---------------------------------------------------------------------------------------------
# Inference: prompts, generations, chat


def orient_prompt(
    ids: Sequence[int], direction: Direction | str, specials: Specials, *, generate: Direction | str | None = None
) -> list[int]:
    """Return a reading-order prompt (with BOS) in model order, to generate ``generate`` (default: the model's way)."""
    ids = [int(t) for t in ids]
    if not ids or ids[0] != specials.bos:
        raise ValueError(f"a prompt must start with BOS ({specials.bos})")
    way, marked = _resolve_generate(direction, generate)
    body = ids[:0:-1] if way is Direction.BACKWARD else ids[1:]
    return [ids[0]] + ([specials.marker(way)] if marked else []) + body


def restore_prompt(
    ids: Sequence[int], direction: Direction | str, specials: Specials, *, generate: Direction | str | None = None
) -> list[int]:
    """Return a model-order prompt or whole generated sequence in reading order (BOS kept, marker removed)."""
    ids = [int(t) for t in ids]
    if not ids or ids[0] != specials.bos:
        raise ValueError(f"a model-order prompt must start with BOS ({specials.bos})")
    if Direction.parse(direction) is Direction.BIDIRECTIONAL:
        if len(ids) < 2:
            raise ValueError("a bidirectional prompt needs a direction token after BOS")
        way = specials.marker_direction(ids[1])
        if generate is not None and _one_way(generate) is not way:
            raise ValueError(f"the prompt's direction token says {way.value}, not {Direction.parse(generate).value}")
        body = ids[2:]
    else:
        way, body = _resolve_generate(direction, generate)[0], ids[1:]
    return ids[:1] + (body[::-1] if way is Direction.BACKWARD else body)


def restore_generation(generated: Sequence[int], generate: Direction | str) -> list[int]:
    """Return generated ids (model order, no prompt) in reading order: reversed when generated backward."""
    ids = [int(t) for t in generated]
    return ids[::-1] if _one_way(generate) is Direction.BACKWARD else ids


def join_generation(prompt: Sequence[int], generated: Sequence[int], generate: Direction | str) -> list[int]:
    """Return the reading-order text of a prompt (with BOS) and its model-order continuation, BOS first."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("a prompt must start with BOS")
    text = restore_generation(generated, generate)
    if _one_way(generate) is Direction.BACKWARD:
        return prompt[:1] + text + prompt[1:]
    return prompt + text


def _chat_way(
    direction: Direction | str, mode: ConversationMode | str, generate: Direction | str | None
) -> tuple[Direction, bool, bool]:
    """Return (generation direction, whether a marker is used, whether the user turn is generated)."""
    way, marked = _resolve_generate(direction, generate)
    mode = ConversationMode.parse(mode)
    return way, marked, way is Direction.BACKWARD and mode is ConversationMode.SEQUENCE


def chat_prompt(
    messages: Sequence[Sequence[int]],
    direction: Direction | str,
    specials: Specials,
    *,
    mode: ConversationMode | str,
    generate: Direction | str | None = None,
) -> list[int]:
    """Return the model-order chat prompt for the reading-order message contents ``messages`` (see below).

    Forward, and backward in ``turn`` mode, generate the next assistant reply: ``messages`` is
    ``[user, assistant, …, user]`` and the prompt ends with ``as``. Backward in ``sequence`` mode
    generates the user turn that precedes ``messages``: ``messages`` is ``[assistant, user, …,
    assistant]`` (the newest typed reply first), and the prompt ends with ``as`` too, so each
    earlier turn is appended at the end of the model-order sequence.
    """
    if len(messages) % 2 != 1:
        raise ValueError(f"a chat prompt needs an odd number of messages, got {len(messages)}")
    way, marked, user_generated = _chat_way(direction, mode, generate)
    s = specials
    reading = [s.bos]
    for i, content in enumerate(messages):
        content = [int(t) for t in content]
        is_user = (i % 2 == 1) if user_generated else (i % 2 == 0)
        if way is Direction.BACKWARD and not user_generated:
            content = content[::-1]
        reading += [s.user_start, *content, s.user_end] if is_user else [s.assistant_start, *content, s.assistant_end]
    if user_generated:
        body = reading[:0:-1]
    else:
        body = reading[1:] + [s.assistant_start]
    return [s.bos] + ([s.marker(way)] if marked else []) + body


def chat_stop_token(
    direction: Direction | str,
    specials: Specials,
    *,
    mode: ConversationMode | str,
    generate: Direction | str | None = None,
) -> int:
    """Return the token that ends a generated chat turn: ``us`` in sequence-backward, ``ae`` otherwise."""
    user_generated = _chat_way(direction, mode, generate)[2]
    return specials.user_start if user_generated else specials.assistant_end


def chat_reply(
    generated: Sequence[int],
    direction: Direction | str,
    specials: Specials,
    *,
    mode: ConversationMode | str,
    generate: Direction | str | None = None,
) -> list[int]:
    """Return the reading-order message content of a generated chat turn (turn markers stripped)."""
    way, _, user_generated = _chat_way(direction, mode, generate)
    ids = [int(t) for t in generated]
    stop = specials.user_start if user_generated else specials.assistant_end
    if ids and ids[-1] == stop:
        ids = ids[:-1]
    if user_generated and ids and ids[0] == specials.user_end:
        ids = ids[1:]
    return ids[::-1] if way is Direction.BACKWARD else ids


# ---------------------------------------------------------------------------------------------
# onanchat compatibility


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
