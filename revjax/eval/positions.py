"""Bits per byte and the loss at each context position of reading-order pieces, read in a model's order.

:mod:`revjax.eval.compare` measures every model on the same pieces: each validation document's tokens cut into
consecutive pieces of at most ``window`` tokens, each ending where a character ends (:func:`pieces`), and each read
from its own BOS in the model's order, so every token is a target exactly once and every model counts the same bytes.
A backward model of a text reversal unit reads the tokens of each piece's reversed text (:func:`read_pieces`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx

from revjax.direction import Direction, Specials, Unit, orient_text, reverses_text
from revjax.eval.choice import model_order
from revjax.eval.icl import EvalError
from revjax.model import cross_entropy

LOGITS_BUDGET = 1 << 27  # batch · length · vocab fp32 logits per call (512 MiB)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _token_nll(graphdef, params, inputs, targets):
    return cross_entropy(nnx.merge(graphdef, params)(inputs), targets, reduction="none")


def _cut(ids: Sequence[int], window: int, token_bytes: Callable[[int], bytes]) -> list[list[int]]:
    """``ids`` cut into consecutive pieces of at most ``window`` tokens, each ending where a character ends (so its
    text decodes exactly) unless one token's bytes alone cross a character."""
    out, start = [], 0
    while start < len(ids):
        end = min(start + window, len(ids))
        while end < len(ids) and end > start + 1 and not _whole(ids[start:end], token_bytes):
            end -= 1
        out.append([int(t) for t in ids[start:end]])
        start = end
    return out


def _whole(ids: Sequence[int], token_bytes: Callable[[int], bytes]) -> bool:
    try:
        b"".join(token_bytes(int(t)) for t in ids).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def pieces(texts: Sequence[str], tokenizer: Any, window: int) -> list[list[int]]:
    """Each text's tokens (reading order, no BOS) cut into consecutive pieces of at most ``window`` tokens that end
    on a character's end."""
    token_bytes = tokenizer.encoding.decode_single_token_bytes
    return [piece for text in texts for piece in _cut(tokenizer.encode(text), window, token_bytes)]


def read_pieces(chunks: Sequence[Sequence[int]], tokenizer: Any, way: Direction | str, unit: Unit | str,
                window: int) -> list[list[int]]:
    """The bodies a model of reversal ``unit`` reads ``way``: the reading-order ``chunks`` themselves, or for a
    backward text unit the tokens of each chunk's reversed text (cut again where they pass ``window``); the bytes
    are the same."""
    if not reverses_text(way, unit):
        return [list(c) for c in chunks]
    token_bytes = tokenizer.encoding.decode_single_token_bytes
    out = []
    for chunk in chunks:
        text = b"".join(token_bytes(int(t)) for t in chunk).decode("utf-8", errors="replace")
        out += _cut(tokenizer.encode(orient_text(text, way, unit)), window, token_bytes)
    return out


def position_losses(graphdef: Any, params: Any, tokenizer: Any, direction: Direction | str, way: Direction | str,
                    chunks: Sequence[Sequence[int]], window: int, *, vocab_size: int,
                    tokens_per_call: int = 8192, token_bytes_method: str = "decode",
                    unit: Unit | str = Unit.TOKEN) -> dict:
    """Bits per byte, loss and per-position loss of ``chunks`` (reading-order pieces of at most ``window``
    tokens), each read ``way`` from its own BOS by a model of ``direction`` and reversal ``unit``
    (:func:`read_pieces`)."""
    chunks = read_pieces(chunks, tokenizer, way, unit, window)
    specials = Specials.from_tokenizer(tokenizer)
    table = tokenizer.token_bytes(token_bytes_method)
    width = window + 1  # room for BOS and a bidirectional model's direction token
    budget = max(1, min(tokens_per_call // width, LOGITS_BUDGET // (width * vocab_size)))
    rows = min(1 << (budget.bit_length() - 1), 1 << max(0, (len(chunks) - 1).bit_length()))
    pos_sum, pos_count = np.zeros(window), np.zeros(window, np.int64)
    nats = loss_nats = 0.0
    nbytes = scored = 0
    for start in range(0, len(chunks), rows):
        inputs = np.full((rows, width), specials.bos, np.int32)
        targets = np.full((rows, width), -1, np.int32)
        position = np.full((rows, width), -1, np.int64)
        for r, chunk in enumerate(chunks[start:start + rows]):
            ids, first = model_order(chunk, direction, way, specials, unit)
            n = len(ids) - 1
            inputs[r, :n], targets[r, first - 1:n] = ids[:-1], ids[first:]
            position[r, first - 1:n] = np.arange(n - first + 1)
        nll = np.asarray(_token_nll(graphdef, params, inputs, targets), np.float64)
        valid = targets >= 0
        np.add.at(pos_sum, position[valid], nll[valid])
        np.add.at(pos_count, position[valid], 1)
        bytes_ = np.where(valid, table[np.maximum(targets, 0)], 0)
        nats += float(nll[bytes_ > 0].sum())
        nbytes += int(bytes_.sum())
        loss_nats += float(nll[valid].sum())
        scored += int(valid.sum())
    if nbytes == 0:
        raise EvalError("the validation documents hold no scored bytes; check the val split and the tokenizer")
    curve = [float(s / c) if c else None for s, c in zip(pos_sum, pos_count)]
    return {"bpb": nats / (np.log(2) * nbytes), "loss": loss_nats / scored, "bytes": nbytes, "tokens": scored,
            "pieces": len(chunks), "per_position": curve, "per_position_count": pos_count.tolist()}
