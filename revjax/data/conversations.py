"""Conversation batches for mid-training and SFT: render → orient → rows of ``(inputs, targets)``.

A source is any random-access sequence of conversations (``len(src)``, ``src[i]`` → ``{"messages": [...]}``),
e.g. a task mixture. Each conversation is rendered by :meth:`revjax.tokenizer.Tokenizer.render_conversation`,
put in model order by :mod:`revjax.direction` (the only place direction is defined) and cut into
``(inputs int32 (rows, T), targets int32 (rows, T))`` batches, −1 marking targets that are not scored.

Order
    Example positions ``g = 0, 1, 2, …`` run through epochs of ``N = len(source)``: position ``g`` is source
    example ``order(g // N)[g % N]``, where ``order(epoch)`` is a permutation seeded by ``(training.seed,
    epoch)`` (``shuffle=False``: the source's own order, which is what onanchat iterates). Train cycles
    forever; with ``cycle=False`` the stream ends after one epoch and the last batch is padded with tokens that
    score nothing. In the ``document`` layout a bidirectional example's direction is
    :func:`revjax.direction.choose_direction` of ``(direction.seed, epoch · N + i)`` for source index ``i``.

Mid (``kind="mid"``)
    Every conversation is rendered whole and packed into one flat stream exactly like base documents
    (``revjax.data.pipeline``): a row is ``T+1`` stream tokens, consecutive rows overlap by one token, the next
    batch starts ``G·T`` tokens later (``G = rows · process_count``, the global batch). As in nanochat's
    mid-training the rendered loss mask is ignored and every token is scored, BOS included (the previous conversation ends by predicting it); the one exception
    is the bidirectional direction token, which is never a target. Backward conversations use the configured
    conversation mode (``sequence``: all after BOS reversed; ``turn``: each turn's content reversed).

Reversal units
    With a text unit (``word``, ``entity``) a backward conversation is rendered from messages whose texts are
    reversed by pieces (:func:`orient_messages`), and its turns and markers are reversed around them.

SFT (``kind="sft"``)
    One example per row of fixed width ``T`` (so the step compiles once): the model-order sequence is cut to
    its first ``T+1`` tokens, inputs are padded with ``<|assistant_end|>`` and targets with −1. Targets are −1
    wherever the loss mask (:class:`revjax.direction.LossMask`) is 0: ``generated`` (default) scores what the
    chat front end asks the model to generate in that direction and mode (forward and turn mode: assistant
    content and ``<|assistant_end|>``; sequence-backward: the user turns); ``assistant`` carries nanochat's
    assistant mask along with the tokens (onanchat's backward SFT).

``compat`` layout (``direction.layout = "compat"``)
    onanchat's layouts: conversations rendered with its 2,048-token cut, whole conversation reversed after BOS,
    no ``turn`` mode. Mid scores every token, the marker included, chunks of ``rows·T+1`` tokens are popped
    without overlap, and bidirectional conversations take the parity of the number of batches yielded when
    they were fetched. SFT takes the rendered mask along and the parity of the example position ``g``.

Processes
    All processes see one global stream of ``rows · process_count`` rows per batch; process ``p`` yields global
    rows ``p·rows … (p+1)·rows − 1``, so the local batches concatenated in process order (what
    :func:`revjax.data.batches.global_batch` assembles) are the same for any process count. SFT renders only
    its own rows; mid renders the whole stream on every process (it needs every conversation's length).

State
    ``get_state()`` is a small JSON dict of global positions (no tokens): for SFT the number of batches yielded;
    for mid the example at the stream head, the token offset into it, its compat parity and the batches
    yielded. It does not depend on the process layout, so a run may resume with another process count as long
    as the global batch (``rows · process_count``) and ``T`` stay the same.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, Literal

import grain
import numpy as np

from revjax.config import Config
from revjax.direction import (
    ConversationMode,
    Direction,
    LossMask,
    Specials,
    Unit,
    compat_orient_conversation,
    compat_orient_sft_example,
    document_direction,
    inputs_and_targets,
    orient_conversation,
    orient_text,
    reverses_text,
)
from revjax.errors import RevjaxError
from revjax.tokenizer import Tokenizer

Kind = Literal["mid", "sft"]
Batch = tuple[np.ndarray, np.ndarray]

COMPAT_RENDER_TOKENS = 2048  # onanchat renders with render_conversation's default cut
_UNCUT = 1 << 62
_BEFORE = {"unit": "token"}  # what states saved before these keys existed had
_FINGERPRINT = ("kind", "direction", "unit", "layout", "mode", "loss", "seed", "order_seed", "shuffle", "examples",
                "global_rows", "seq_len")


class ConversationDataError(RevjaxError, ValueError):
    """A conversation source, batch shape or saved iterator state does not fit the configured pipeline."""


def orient_messages(conversation: Any, way: Direction | str, unit: Unit | str) -> Any:
    """``conversation`` to render for a reading ``way`` with reversal ``unit``: for a backward text unit a copy whose
    message texts (a string content or each part's text) are reversed by pieces; a leading system message is merged
    into the first user message first, and neighbouring text parts into one, as each is one stretch of text."""
    if not reverses_text(way, unit):
        return conversation
    messages = list(conversation["messages"])
    if len(messages) > 1 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
        messages = [{**messages[1], "content": messages[0]["content"] + "\n\n" + messages[1]["content"]},
                    *messages[2:]]
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = orient_text(content, way, unit)
        elif isinstance(content, list):
            parts: list[dict] = []
            for part in content:
                if part.get("type") == "text" and parts and parts[-1].get("type") == "text":
                    parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
                else:
                    parts.append(dict(part))
            content = [{**part, "text": orient_text(part["text"], way, unit)} for part in parts]
        out.append({**message, "content": content})
    return {**conversation, "messages": out}


class ConversationDataset(grain.IterDataset):
    """Mid or SFT batches of a conversation source for one process (module docstring)."""

    def __init__(self, source: Sequence[Any], tokenizer: Tokenizer, *, kind: Kind, rows: int, seq_len: int,
                 direction: Direction | str = "forward", layout: str = "document",
                 mode: ConversationMode | str = "sequence", loss: LossMask | str = "generated", seed: int = 0,
                 order_seed: int = 0, shuffle: bool = True, process_index: int = 0, process_count: int = 1,
                 cycle: bool = True, unit: Unit | str = Unit.TOKEN) -> None:
        super().__init__()
        if kind not in ("mid", "sft"):
            raise ConversationDataError(f"unknown conversation batch kind {kind!r}; expected 'mid' or 'sft'")
        if layout not in ("document", "compat"):
            raise ConversationDataError(f"unknown direction layout {layout!r}; expected 'document' or 'compat'")
        if rows < 1 or seq_len < 1:
            raise ConversationDataError(f"rows and seq_len must be positive, got {rows} and {seq_len}")
        if layout == "compat" and Unit.parse(unit) is not Unit.TOKEN:
            raise ConversationDataError(f"the compat layout reverses token ids as onanchat does; unit={unit} needs the "
                                        "document layout")
        if not 0 <= process_index < process_count:
            raise ConversationDataError(f"process_index must be in [0, {process_count}), got {process_index}")
        if len(source) == 0:
            raise ConversationDataError("the conversation source is empty; give the phase at least one example")
        self.source, self.tokenizer, self.kind = source, tokenizer, kind
        self.specials = Specials.from_tokenizer(tokenizer)
        self.rows, self.seq_len = rows, seq_len
        self.direction, self.unit = Direction.parse(direction), Unit.parse(unit)
        self.layout = layout
        self.mode, self.loss = ConversationMode.parse(mode), LossMask.parse(loss)
        self.seed, self.order_seed, self.shuffle = seed, order_seed, shuffle
        self.process_index, self.process_count, self.cycle = process_index, process_count, cycle
        self.examples = len(source)
        self.global_rows = rows * process_count
        self._order: tuple[int, np.ndarray] | None = None

    def __iter__(self) -> grain.DatasetIterator:
        return _MidIterator(self) if self.kind == "mid" else _SFTIterator(self)

    def __str__(self) -> str:
        return (f"ConversationDataset(kind={self.kind}, rows={self.rows}, T={self.seq_len}, "
                f"direction={self.direction.value}, layout={self.layout}, mode={self.mode.value}, "
                f"loss={self.loss.value}, process={self.process_index}/{self.process_count})")

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "direction": self.direction.value, "unit": self.unit.value, "layout": self.layout,
                "mode": self.mode.value,
                "loss": self.loss.value, "seed": self.seed, "order_seed": self.order_seed, "shuffle": self.shuffle,
                "examples": self.examples, "global_rows": self.global_rows, "seq_len": self.seq_len}

    # ---- order and orientation -------------------------------------------------------------------------------

    def order(self, epoch: int) -> np.ndarray:
        """Return the source indices of ``epoch`` in visiting order."""
        if not self.shuffle:
            return np.arange(self.examples)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.order_seed, epoch]).permutation(self.examples))
        return self._order[1]

    def locate(self, position: int) -> tuple[int, int]:
        """Return (epoch, source index) of example position ``position``."""
        epoch, k = divmod(position, self.examples)
        return epoch, int(self.order(epoch)[k])

    def render(self, index: int, stream_index: int) -> tuple[list[int], list[int]]:
        """The rendered conversation ``index`` (``stream_index`` draws a bidirectional one's direction)."""
        cut = COMPAT_RENDER_TOKENS if self.layout == "compat" else _UNCUT
        conversation = self.source[index]
        if self.unit is not Unit.TOKEN:
            way = document_direction(self.direction, self.seed, stream_index)
            conversation = orient_messages(conversation, way, self.unit)
        return self.tokenizer.render_conversation(conversation, max_tokens=cut)

    def mid_example(self, position: int, parity: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the model-order ``(ids int32, is_target bool)`` of a mid example (``parity``: compat only)."""
        epoch, index = self.locate(position)
        ids, _ = self.render(index, epoch * self.examples + index)
        if self.layout == "compat":
            ids = compat_orient_conversation(ids, self.direction, self.specials, parity)
            mask = [1] * len(ids)
        else:  # score everything: carry an all-ones mask; orientation clears the marker's entry
            ids, mask = orient_conversation(ids, [1] * len(ids), self.direction, self.specials, mode=self.mode,
                                            loss=LossMask.ASSISTANT, seed=self.seed,
                                            index=epoch * self.examples + index, unit=self.unit)
        return np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool)

    def sft_example(self, position: int) -> tuple[list[int], list[int]]:
        """Return the model-order ``(ids, mask)`` of an SFT example, cut to ``T+1`` tokens."""
        epoch, index = self.locate(position)
        ids, mask = self.render(index, epoch * self.examples + index)
        if self.layout == "compat":
            ids, mask = compat_orient_sft_example(ids, mask, self.direction, self.specials, position)
        else:
            ids, mask = orient_conversation(ids, mask, self.direction, self.specials, mode=self.mode, loss=self.loss,
                                            seed=self.seed, index=epoch * self.examples + index, unit=self.unit)
        return ids[: self.seq_len + 1], mask[: self.seq_len + 1]

    def check_state(self, state: dict[str, Any]) -> None:
        mine = self.fingerprint()
        for key in _FINGERPRINT:
            saved = state.get(key, _BEFORE.get(key))
            if saved != mine[key]:
                raise ConversationDataError(
                    f"the conversation iterator state was saved with {key}={saved!r} but this pipeline has "
                    f"{key}={mine[key]!r}; build the pipeline with the settings and data of the saved run")


class _SFTIterator(grain.DatasetIterator):
    """Global batch ``k`` holds example positions ``k·G … k·G+G−1``; this process renders its ``rows`` of them."""

    def __init__(self, dataset: ConversationDataset) -> None:
        super().__init__()
        self._ds = dataset
        self._yields = 0

    def __next__(self) -> Batch:
        ds = self._ds
        first = self._yields * ds.global_rows
        if not ds.cycle and first >= ds.examples:
            raise StopIteration
        inputs = np.full((ds.rows, ds.seq_len), ds.specials.assistant_end, dtype=np.int32)
        targets = np.full((ds.rows, ds.seq_len), -1, dtype=np.int32)
        for r in range(ds.rows):
            position = first + ds.process_index * ds.rows + r
            if not ds.cycle and position >= ds.examples:
                break  # padding rows past the end of a finite stream
            row_inputs, row_targets = inputs_and_targets(*ds.sft_example(position))
            inputs[r, : len(row_inputs)] = row_inputs
            targets[r, : len(row_targets)] = row_targets
        self._yields += 1
        return inputs, targets

    def get_state(self) -> dict[str, Any]:
        return {**self._ds.fingerprint(), "yields": self._yields}

    def set_state(self, state: dict[str, Any]) -> None:
        self._ds.check_state(state)
        self._yields = int(state["yields"])

    def __str__(self) -> str:
        return f"ConversationIterator({self._ds})"


class _MidIterator(grain.DatasetIterator):
    """A flat stream of packed conversations; each batch is a ``G·T+1`` window of it, this process's rows cut out."""

    def __init__(self, dataset: ConversationDataset) -> None:
        super().__init__()
        self._ds = dataset
        self._reset(position=0, offset=0, parity=0, yields=0)

    def _reset(self, *, position: int, offset: int, parity: int, yields: int) -> None:
        self._next = position  # the next example position to fetch
        self._first_parity: int | None = parity  # parity of the first fetch after a reset (compat)
        self._pieces: collections.deque[tuple[int, int, np.ndarray, np.ndarray]] = collections.deque()
        self._head = offset  # offset of the stream head into the first piece
        self._available = -offset  # buffered tokens after the head
        self._yields = yields

    def _fetch(self) -> bool:
        """Render and orient the next example into the buffer; False at the end of a finite stream."""
        ds = self._ds
        if not ds.cycle and self._next >= ds.examples:
            return False
        parity = self._yields if self._first_parity is None else self._first_parity
        self._first_parity = None
        ids, is_target = ds.mid_example(self._next, parity)
        if not self._pieces and self._head >= len(ids):
            raise ConversationDataError(
                f"the iterator state's token offset {self._head} lies past the end of its conversation ({len(ids)} "
                "tokens); the source or tokenizer changed since the state was saved")
        self._pieces.append((self._next, parity, ids, is_target))
        self._available += len(ids)
        self._next += 1
        return True

    def _take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Return up to ``n`` tokens after the head (fewer only at the end of a finite stream), not consumed."""
        while self._available < n and self._fetch():
            pass
        ids, masks, start, left = [], [], self._head, n
        for _, _, piece_ids, piece_mask in self._pieces:
            ids.append(piece_ids[start : start + left])
            masks.append(piece_mask[start : start + len(ids[-1])])
            start, left = 0, left - len(ids[-1])
            if left == 0:
                break
        return (np.concatenate(ids), np.concatenate(masks)) if ids else (np.zeros(0, np.int32), np.zeros(0, bool))

    def _advance(self, n: int) -> None:
        self._head += n
        self._available -= n
        while self._pieces and self._head >= len(self._pieces[0][2]):
            self._head -= len(self._pieces.popleft()[2])
        if not self._pieces:  # a finite stream ran out inside this batch
            self._head, self._available = 0, 0

    def __next__(self) -> Batch:
        ds = self._ds
        t, need = ds.seq_len, ds.global_rows * ds.seq_len + 1
        ids, is_target = self._take(need)
        if len(ids) < 2:
            raise StopIteration
        if len(ids) < need:  # the last batch of a finite stream: pad with tokens that are not targets
            ids = np.concatenate([ids, np.full(need - len(ids), ds.specials.assistant_end, np.int32)])
            is_target = np.concatenate([is_target, np.zeros(need - len(is_target), bool)])
        lo = ds.process_index * ds.rows * t
        window = np.lib.stride_tricks.sliding_window_view
        mine = slice(lo, lo + ds.rows * t + 1)
        inputs, targets = inputs_and_targets(window(ids[mine], t + 1)[::t], window(is_target[mine], t + 1)[::t])
        self._advance(need if ds.layout == "compat" else need - 1)
        self._yields += 1
        return inputs, targets.astype(np.int32)

    def get_state(self) -> dict[str, Any]:
        if self._pieces:
            position, parity, _, _ = self._pieces[0]
        else:
            position = self._next
            parity = self._yields if self._first_parity is None else self._first_parity
        return {**self._ds.fingerprint(), "position": position, "offset": self._head, "parity": parity,
                "yields": self._yields}

    def set_state(self, state: dict[str, Any]) -> None:
        self._ds.check_state(state)
        if state["position"] < 0 or state["offset"] < 0:
            raise ConversationDataError(f"the conversation iterator state {state} has a negative position")
        self._reset(position=int(state["position"]), offset=int(state["offset"]), parity=int(state["parity"]),
                    yields=int(state["yields"]))

    def __str__(self) -> str:
        return f"ConversationIterator({self._ds})"


class ConversationBatches:
    """A process's mid or SFT batches of ``source`` as ``config`` describes them, prefetched in a thread.

    ``loss_mask`` (``"generated"`` / ``"assistant"``) defaults to ``config.direction.loss_mask``; ``shuffle``
    defaults to True except in the compat layout, which visits the source in its own order as onanchat does. ``get_state`` reflects the yielded batches only.
    """

    def __init__(self, config: Config, tokenizer: Tokenizer, source: Sequence[Any], *, kind: Kind, rows: int,
                 seq_len: int, process_index: int = 0, process_count: int = 1, cycle: bool = True,
                 loss_mask: LossMask | str | None = None, shuffle: bool | None = None, prefetch: int = 2) -> None:
        d = config.direction
        self.dataset = ConversationDataset(
            source, tokenizer, kind=kind, rows=rows, seq_len=seq_len, direction=d.direction, layout=d.layout,
            mode=d.conversation, loss=loss_mask if loss_mask is not None else d.loss_mask,
            seed=d.seed, order_seed=config.training.seed, unit=d.unit,
            shuffle=d.layout != "compat" if shuffle is None else shuffle,
            process_index=process_index, process_count=process_count, cycle=cycle)
        wrapped: grain.IterDataset = self.dataset
        if prefetch > 0:
            wrapped = grain.experimental.ThreadPrefetchIterDataset(wrapped, prefetch_buffer_size=prefetch)
        self._it = iter(wrapped)

    def __iter__(self) -> ConversationBatches:
        return self

    def __next__(self) -> Batch:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        return self._it.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(state)

    def epochs(self) -> float:
        """Return how many epochs of the source the yielded batches have consumed (mid: up to the stream head)."""
        state = self.get_state()
        if state["kind"] == "mid":
            return state["position"] / state["examples"]
        return state["yields"] * state["global_rows"] / state["examples"]

    def close(self) -> None:
        self._it.close()
