"""Text for people: generated ids (model order) rendered in reading order, without raw special tokens.

Every front end shows generated text through this module (``revjax chat``, ``revjax serve`` and its page, training
samples, eval samples). It works on ids, never on decoded strings, so a user's literal ``<|bos|>`` (plain text to
the tokenizer) is shown as typed. The rules:

* a chat turn ends at its end token, or at any other turn or direction token the model writes in its place
  (:func:`chat_turn_ends`); the reverse task's leading ``<|user_end|>`` is skipped;
* a calculator call is shown as ``[calculator: EXPR = RESULT]`` (``[calculator: EXPR]`` when no result came back,
  ``[calculator result: RESULT]`` for an output without its call), whichever way it was generated: forward the
  output follows its call, backward it comes before the call in reading order;
* outside a chat turn (a sample that runs into a conversation) ``<|user_start|>`` reads ``User: ``,
  ``<|assistant_start|>`` ``Assistant: ``, a turn's end a line break; BOS and direction tokens are not shown.

:class:`Rendering` streams: fed model-order ids chunk by chunk it returns pieces in reading order, to go after the
text so far (forward) or before it (backward). A tool call is held back until it is complete, and so is a character
whose UTF-8 bytes are split over tokens, so the pieces always add up to :func:`render`'s text.

A backward model with a text ``unit`` (word, entity) writes the reversed text left to right: its ids are decoded in
model order and the text's pieces put back in reading order (:class:`revjax.direction.UnitStream`), each going
before the text so far.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Collection, Sequence

from revjax.direction.chat import _chat_way
from revjax.direction.core import ConversationMode, Direction, Specials
from revjax.direction.units import Unit, UnitStream, flip

TokenBytes = Callable[[int], bytes]
CALL, RESULT = "[calculator: ", " = "
LONE_RESULT = "[calculator result: "


def _labels(s: Specials) -> dict[int, bytes]:
    return {s.bos: b"", s.forward: b"", s.backward: b"", s.user_start: b"User: ", s.assistant_start: b"Assistant: ",
            s.user_end: b"\n", s.assistant_end: b"\n"}


class Rendering:
    """Model-order ids → reading-order text pieces (see the module). ``backward``: ids arrive right to left;
    ``skip_first``: a token dropped when it comes first; ``ends``: tokens that end the text (nothing after shows);
    ``unit``: what a backward text reverses."""

    def __init__(self, token_bytes: TokenBytes, specials: Specials, *, backward: bool, skip_first: int | None = None,
                 ends: Collection[int] = (), unit: Unit | str = Unit.TOKEN):
        self._bytes, self.backward, self._skip, self._ends = token_bytes, backward, skip_first, frozenset(ends)
        self._units = UnitStream(unit) if backward and Unit.parse(unit) is not Unit.TOKEN else None
        self._flipped = backward and self._units is None  # ids arrive in reverse reading order
        s = specials
        # model order: a backward call reads python_end … python_start, its output output_end … output_start
        self._call = (s.python_end, s.python_start) if backward else (s.python_start, s.python_end)
        self._out = (s.output_end, s.output_start) if backward else (s.output_start, s.output_end)
        self._labels, self._tools = _labels(s), {*self._call, *self._out}
        self._group: list[int] = []  # a tool call not complete yet (model order)
        self._ended, self._held = False, b""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def ended(self) -> bool:
        """Whether an end token has arrived (later ids are ignored)."""
        return self._ended

    def feed(self, ids: Sequence[int]) -> str:
        """The new piece of text for the next model-order ``ids`` ('' when nothing is complete yet)."""
        parts: list[bytes] = []
        for t in map(int, ids):
            if self._skip is not None:
                skip, self._skip = self._skip, None
                if t == skip:
                    continue
            if self._ended:
                break
            if t in self._ends:
                self._ended = True
                parts.append(self._settle())
                break
            parts += self._step(t)
        return self._text(parts)

    def finish(self) -> str:
        """The rest: a tool call or character left incomplete, as far as it goes."""
        parts = [self._settle()]
        if self._units is not None:
            done = self._units.feed(self._decoder.decode(b"".join(parts), final=True))
            return self._units.finish() + done
        if not self.backward:
            return self._decoder.decode(b"".join(parts), final=True)
        held, self._held = b"".join(parts) + self._held, b""
        return held.decode("utf-8", errors="replace")

    def _step(self, t: int) -> list[bytes]:
        group, (call_open, call_close), (out_open, out_close) = self._group, self._call, self._out
        if not group:
            if t in (call_open, out_open):
                self._group = [t]
                return []
            return [self._token(t)]
        body_special = t in self._labels or t in self._tools
        if group[0] == call_open and call_close not in group:  # inside the expression
            if t == call_close:
                group.append(t)
                return []
            if body_special:
                return [self._settle(), *self._step(t)]
        elif group[-1] == call_close:  # the call is closed: its output, or the call alone
            if t == out_open:
                group.append(t)
                return []
            return [self._settle(), *self._step(t)]
        elif t == out_close:
            group.append(t)
            return [self._settle()]
        elif body_special:
            return [self._settle(), *self._step(t)]
        group.append(t)
        return []

    def _settle(self) -> bytes:
        """The reading-order bytes of the pending tool call (empty when there is none); the call is done."""
        group, self._group = self._group, []
        if not group:
            return b""
        tools = self._tools
        if group[0] == self._call[0]:
            cut = group.index(self._call[1]) if self._call[1] in group else len(group)
            expr, result = group[1:cut], group[cut + 2:] if self._out[0] in group else None
        else:
            expr, result = None, group[1:]

        def text(ids: list[int]) -> bytes:
            return b"".join(self._bytes(i) for i in (ids[::-1] if self._flipped else ids) if i not in tools)

        if expr is None:
            return LONE_RESULT.encode() + text(result) + b"]"
        return CALL.encode() + text(expr) + (b"" if result is None else RESULT.encode() + text(result)) + b"]"

    def _token(self, t: int) -> bytes:
        return self._labels[t] if t in self._labels else b"" if t in self._tools else self._bytes(t)

    def _text(self, parts: list[bytes]) -> str:
        if self._units is not None:
            return self._units.feed(self._decoder.decode(b"".join(parts)))
        if not self.backward:
            return self._decoder.decode(b"".join(parts))
        data = b"".join(reversed(parts)) + self._held
        start = next((i for i, b in enumerate(data) if b & 0xC0 != 0x80), len(data))
        self._held = data[:start]
        return data[start:].decode("utf-8", errors="replace")


def render(generated: Sequence[int], token_bytes: TokenBytes, specials: Specials, *, backward: bool = False,
           skip_first: int | None = None, ends: Collection[int] = (), unit: Unit | str = Unit.TOKEN) -> str:
    """The reading-order text for people of model-order ``generated`` ids (``backward``: generated right to left);
    the whole of what :class:`Rendering` streams."""
    rendering = Rendering(token_bytes, specials, backward=backward, skip_first=skip_first, ends=ends, unit=unit)
    body, tail = rendering.feed(generated), rendering.finish()
    return tail + body if backward else body + tail


def chat_turn_ends(
    direction: Direction | str, specials: Specials, *, mode: ConversationMode | str,
    generate: Direction | str | None = None,
) -> tuple[bool, int | None, frozenset[int]]:
    """``(backward, skip_first, ends)`` of a generated chat turn: whether it runs right to left, the token skipped
    when it comes first (``<|user_end|>`` in the reverse task) and the tokens that end it (the turn's stop token, or
    any other turn, BOS or direction token written in its place)."""
    way, _, user_generated = _chat_way(direction, mode, generate)
    s = specials
    ends = frozenset({s.bos, s.user_start, s.user_end, s.assistant_start, s.assistant_end, s.forward, s.backward})
    return way is Direction.BACKWARD, (s.user_end if user_generated else None), ends


def chat_turn(
    generated: Sequence[int], direction: Direction | str, specials: Specials, *, mode: ConversationMode | str,
    generate: Direction | str | None = None, unit: Unit | str = Unit.TOKEN,
) -> list[int]:
    """Reading-order content ids of a generated chat turn (model order in), ended at the turn's end (see
    :func:`chat_turn_ends`); tool calls are kept, so a later prompt holds exactly what the model wrote (text
    ``unit``: a backward turn's ids of its reversed text, as a later prompt takes them)."""
    backward, skip, ends = chat_turn_ends(direction, specials, mode=mode, generate=generate)
    ids = [int(t) for t in generated]
    if ids and ids[0] == skip:
        ids = ids[1:]
    cut = next((i for i, t in enumerate(ids) if t in ends), len(ids))
    return flip(ids[:cut], unit, specials) if backward else ids[:cut]


def render_reply(
    generated: Sequence[int], direction: Direction | str, specials: Specials, token_bytes: TokenBytes, *,
    mode: ConversationMode | str, generate: Direction | str | None = None, unit: Unit | str = Unit.TOKEN,
) -> str:
    """The reading-order text for people of a generated chat turn (model order in): :func:`render` of the turn."""
    backward, skip, ends = chat_turn_ends(direction, specials, mode=mode, generate=generate)
    return render(generated, token_bytes, specials, backward=backward, skip_first=skip, ends=ends, unit=unit)
