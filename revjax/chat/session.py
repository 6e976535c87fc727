"""Chat with a revjax run: the loaded model, reading-order text streams, and a multi-turn session.

Every token layout comes from :mod:`revjax.direction`: a prompt is always rebuilt from the reading-order history by
:func:`~revjax.direction.chat_prompt`, generation stops at :func:`~revjax.direction.chat_stop_token`, the reply's
ids end at the turn's end (:func:`~revjax.direction.chat_turn`) and its text is rendered for people by
:func:`~revjax.direction.render_reply` (streamed by :class:`~revjax.direction.Rendering`): reading order, tool
calls as ``[calculator: EXPR = RESULT]``, never a raw special token.

Two tasks, depending on the generation's direction and the model's conversation mode:

* ``answer`` (forward, and backward in ``turn`` mode): the user writes a message, the model writes the assistant's
  reply, appended at the end of the conversation. The calculator tool fires in the generation's direction.
* ``reverse`` (backward in ``sequence`` mode): the user writes an *answer* and the model writes the user question
  that precedes it; the new pair goes at the *start* of the reading-order conversation, since a backward model
  writes what comes before.

Streaming: a forward generation arrives left to right, so each piece goes after the text so far. A backward one
arrives right to left: each piece (itself in reading order) goes *before* the text so far (``Piece.prepend``); a
front end may show it growing leftwards and then presents the whole reply in reading order (``Reply.text``).
Pieces are cut at UTF-8 character boundaries, so a character split over tokens is never shown half.

Reversal units (``ChatModel.unit``): a backward ``word`` or ``entity`` model reads each message as its reversed text
(:func:`~revjax.direction.orient_text`), so a typed message read backward is encoded from its reversed text, the
prompt is laid out with the unit (turns and markers reversed around the contents), and a reply's ids stay those of
the reversed text the model wrote (:attr:`Message.ids` with ``Message.reversed``), which is what a later backward
prompt takes; its text for people is put back in reading order piece by piece. A message is encoded again from its
text only when a bidirectional model reads it the other way. The calculator does not run in a backward text-unit
reply (its expression would be reversed text).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from revjax.direction import (ConversationMode, Direction, Rendering, Specials, Unit, chat_prompt, chat_stop_token,
                              chat_turn, chat_turn_ends, orient_text, render_reply, reverses_text)
from revjax.errors import RevjaxError
from revjax.phases import PHASES

ANSWER, REVERSE = "answer", "reverse"
TASK_LABELS = {ANSWER: "reply", REVERSE: "question (reverse task)"}


class ChatError(RevjaxError):
    """A chat request that cannot be served as given (unknown direction, message too long, bad history)."""


@dataclass
class ChatModel:
    """A model ready to chat: graphdef + params, tokenizer, the direction it reads and its conversation mode."""

    graphdef: object
    params: object
    tokenizer: object
    direction: Direction
    mode: ConversationMode
    max_len: int
    name: str = "revjax"
    step: int | None = None
    chunk_size: int = 8
    phase: str | None = None  # the training phase of the run (``base``, ``mid``, ``sft``, ``rl``), when known
    unit: Unit = Unit.TOKEN  # what a backward reading reverses (``token``, ``word``, ``entity``)

    def __post_init__(self) -> None:
        from revjax.engine import Engine

        self.direction = Direction.parse(self.direction)
        self.unit = Unit.parse(self.unit)
        self.mode = ConversationMode.parse(self.mode)
        self.specials = Specials.from_tokenizer(self.tokenizer)
        self.engine = Engine(self.graphdef, self.params, tokenizer=self.tokenizer, chunk_size=self.chunk_size)

    @property
    def is_base(self) -> bool:
        """Whether the model was trained on documents only (a base model: it was never taught to chat)."""
        row = PHASES.get(self.phase) if self.phase else None
        return row is not None and not row.conversations

    @property
    def ways(self) -> list[Direction]:
        """The directions this model generates in (both for a bidirectional model, forward first)."""
        if self.direction is Direction.BIDIRECTIONAL:
            return [Direction.FORWARD, Direction.BACKWARD]
        return [self.direction]

    def way(self, generate: Direction | str | None = None) -> Direction:
        """The generation direction asked for (None: the model's own; forward for a bidirectional model)."""
        if generate is None:
            return self.ways[0]
        try:
            way = Direction.parse(generate)
        except ValueError as err:
            raise ChatError(str(err)) from None
        if way not in self.ways:
            known = " and ".join(w.value for w in self.ways)
            raise ChatError(f"this {self.direction.value} model generates {known} only, not {way.value}")
        return way

    def task(self, way: Direction) -> str:
        """``reverse`` when the model writes the user turn before the given messages, else ``answer``."""
        reverse = way is Direction.BACKWARD and self.mode is ConversationMode.SEQUENCE
        return REVERSE if reverse else ANSWER

    def _generate_arg(self, way: Direction) -> Direction | None:
        return way if self.direction is Direction.BIDIRECTIONAL else None

    def reverses_text(self, way: Direction) -> bool:
        """Whether messages read ``way`` are the tokens of their reversed text (a backward word or entity unit)."""
        return reverses_text(way, self.unit)

    @property
    def tool_order(self) -> dict[Direction, str | None]:
        """The calculator layout of a reply generated each way (None: no calculator, a backward text unit)."""
        return {way: None if self.reverses_text(way) else way.value for way in (Direction.FORWARD, Direction.BACKWARD)}

    def encode_message(self, text: str, way: Direction) -> list[int]:
        """A message's content ids as a prompt read ``way`` takes them (the reversed text's for a text unit)."""
        return self.encode(orient_text(text, way, self.unit))

    def prompt(self, messages: Sequence[Sequence[int]], way: Direction) -> list[int]:
        """Model-order prompt for the message ids (``[user, …, user]``, or ``[assistant, …, assistant]`` for the
        reverse task) in reading order of messages, each from :meth:`encode_message` for ``way``."""
        return chat_prompt(messages, self.direction, self.specials, mode=self.mode, generate=self._generate_arg(way),
                           unit=self.unit)

    def stop_id(self, way: Direction) -> int:
        return chat_stop_token(self.direction, self.specials, mode=self.mode, generate=self._generate_arg(way))

    def content(self, generated: Sequence[int], way: Direction) -> list[int]:
        """Message ids of a generated turn (model order, as the engine returns it), ended at the turn's end: in
        reading order, or for a backward text unit the ids of the reversed text (as a later prompt takes them)."""
        return chat_turn(generated, self.direction, self.specials, mode=self.mode, generate=self._generate_arg(way),
                         unit=self.unit)

    def render(self, generated: Sequence[int], way: Direction) -> str:
        """The reading-order text for people of a generated turn (model order in): what :meth:`text_stream`'s
        pieces add up to."""
        return render_reply(generated, self.direction, self.specials, self.tokenizer.encoding.decode_single_token_bytes,
                            mode=self.mode, generate=self._generate_arg(way), unit=self.unit)

    def text_stream(self, way: Direction) -> TextStream:
        backward, skip, ends = chat_turn_ends(self.direction, self.specials, mode=self.mode,
                                              generate=self._generate_arg(way))
        return TextStream(self.tokenizer, backward=backward, skip_first=skip, ends=ends, unit=self.unit)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)


def load_model(run_dir: str | Path, step: int | None = None, *, chunk_size: int = 8, batch: int = 1,
               command: str = "chat") -> ChatModel:
    """The chat model of a revjax run folder (the newest intact step, or ``step``); imported onanchat exports too.

    Before any array is read, the model's dimensions are checked and its parameters plus the KV cache of ``batch``
    rows at its full ``sequence_len`` are compared with the machine's memory (``command``: ``chat``, or ``serve``
    with the server's largest batch); a :class:`revjax.memory.SizeError` refuses in one sentence."""
    from revjax.runs import load_run

    run = load_run(run_dir, step, command=command, batch=batch)
    return ChatModel(run.graphdef, run.params, run.tokenizer, run.direction, run.mode, run.config.model.sequence_len,
                     name=run.run_dir.resolve().name, step=run.step, chunk_size=chunk_size, phase=run.meta.get("phase"),
                     unit=run_unit(run))


def run_unit(run) -> Unit:
    """The reversal unit of a loaded run: its ``unit``, else its config's ``direction.unit``, else ``token``."""
    unit = getattr(run, "unit", None) or getattr(getattr(run.config, "direction", None), "unit", None)
    return Unit.parse(unit or Unit.TOKEN)


# ---- text in reading order ------------------------------------------------------------------------------------

class TextStream(Rendering):
    """Turns generated ids (model order, arriving chunk by chunk) into reading-order text pieces for people
    (:class:`revjax.direction.Rendering` with the tokenizer's token bytes).

    ``feed`` returns the new piece: after the text so far when forward, before it when ``backward``. Bytes of a
    character that is not complete yet, and a tool call not complete yet, are held back until they are; nothing
    after an ``ends`` token is shown.
    """

    def __init__(self, tokenizer, *, backward: bool, skip_first: int | None = None, ends=(),
                 unit: Unit | str = Unit.TOKEN):
        super().__init__(tokenizer.encoding.decode_single_token_bytes, Specials.from_tokenizer(tokenizer),
                         backward=backward, skip_first=skip_first, ends=ends, unit=unit)


class Piece(NamedTuple):
    """A streamed piece of reply text, in reading order; ``prepend``: it goes before the text so far (backward)."""

    text: str
    prepend: bool


# ---- the session -----------------------------------------------------------------------------------------------

@dataclass
class Message:
    """A turn in reading order; ``ids`` are its content's token ids (a generated turn keeps the ids it was made of,
    tool calls included, so a prompt never re-encodes generated text); ``reversed``: they are the ids of the
    reversed text (a backward text unit)."""

    role: str  # "user" or "assistant"
    content: str
    ids: list[int]
    reversed: bool = False


class Reply:
    """One generation, run lazily: iterate it for the :class:`Piece` stream; once exhausted ``text`` holds the
    reply in reading order and the session's history has the new turn. Abandoned early, history is unchanged."""

    def __init__(self, session: ChatSession, typed: str, way: Direction, settings: dict):
        self.session, self.typed, self.way, self.settings = session, typed, way, settings
        self.task = session.model.task(way)
        self.label = TASK_LABELS[self.task]
        self.prompt = session.prompt_for(typed, way)
        self.text: str | None = None
        self.tokens: list[int] = []  # content ids (reading order; a backward text unit's: of the reversed text)
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[Piece]:
        if self.text is not None:
            raise ChatError("this reply has been generated already; ask the session for a new one")
        model = self.session.model
        max_new = min(self.settings["max_tokens"], model.max_len - len(self.prompt))
        stream = model.text_stream(self.way)
        generated: list[int] = []
        chunks = model.engine.stream(
            [self.prompt], max_new, temperature=self.settings["temperature"], top_k=self.settings["top_k"],
            seed=self.settings["seed"], stop_ids=[model.stop_id(self.way)], max_len=model.max_len,
            tool_order=model.tool_order[self.way])
        try:
            for chunk in chunks:
                generated += chunk.tokens[0]
                piece = stream.feed(chunk.tokens[0])
                if piece:
                    yield Piece(piece, stream.backward)
                if stream.ended:  # the model ended its turn with another turn token: nothing more to show
                    break
        finally:
            chunks.close()
        piece = stream.finish()
        if piece:
            yield Piece(piece, stream.backward)
        self.finish_reason = "stop" if stream.ended or len(generated) < max_new else "length"
        self.tokens = model.content(generated, self.way)
        self.text = model.render(generated, self.way)
        self.session._commit(self)

    def run(self) -> str:
        """Generate the whole reply; returns its reading-order text."""
        for _ in self:
            pass
        return self.text


class ChatSession:
    """A multi-turn conversation with one :class:`ChatModel`; ``history`` is in reading order (user first)."""

    def __init__(self, model: ChatModel, *, generate: Direction | str | None = None):
        self.model = model
        self.generate = model.way(generate)
        self.history: list[Message] = []
        self.replies = 0  # replies generated in full so far (the first one compiles the model)

    def set_direction(self, generate: Direction | str) -> Direction:
        self.generate = self.model.way(generate)
        return self.generate

    def clear(self) -> None:
        self.history = []

    @property
    def task(self) -> str:
        return self.model.task(self.generate)

    def prompt_for(self, typed: str, way: Direction) -> list[int]:
        """The model-order prompt for a new turn; the turns farthest from the new one are dropped to fit."""
        model, reverses = self.model, self.model.reverses_text(way)
        encoded = [m.ids if m.reversed is reverses else model.encode_message(m.content, way) for m in self.history]
        typed_ids = model.encode_message(typed, way)
        reverse = model.task(way) == REVERSE
        for dropped in range(0, len(encoded) + 1, 2):
            kept = encoded[: len(encoded) - dropped] if reverse else encoded[dropped:]
            prompt = model.prompt([typed_ids, *kept] if reverse else [*kept, typed_ids], way)
            if len(prompt) < model.max_len:
                return prompt
        raise ChatError(f"the message is {len(typed_ids)} tokens long, too long for this model's "
                        f"{model.max_len}-token context; shorten it")

    def reply(self, user_text: str, *, generate: Direction | str | None = None, temperature: float = 0.6,
              top_k: int | None = 50, max_tokens: int = 512, seed: int | None = None) -> Reply:
        """Generate the next turn for ``user_text`` (a message; for the reverse task, an answer). ``generate`` picks
        the direction for a bidirectional model (default: the session's). Nothing runs until the reply is iterated."""
        if max_tokens < 1:
            raise ChatError(f"max_tokens must be at least 1, got {max_tokens}")
        if temperature < 0:
            raise ChatError(f"temperature must be non-negative, got {temperature}")
        way = self.generate if generate is None else self.model.way(generate)
        seed = secrets.randbits(31) if seed is None else seed
        return Reply(self, user_text, way, {"temperature": temperature, "top_k": top_k or None,
                                            "max_tokens": max_tokens, "seed": seed})

    def _commit(self, reply: Reply) -> None:
        self.replies += 1
        reverses = self.model.reverses_text(reply.way)
        typed = Message("assistant" if reply.task == REVERSE else "user", reply.typed,
                        self.model.encode_message(reply.typed, reply.way), reverses)
        written = Message("user" if reply.task == REVERSE else "assistant", reply.text, reply.tokens, reverses)
        if reply.task == REVERSE:
            self.history[:0] = [written, typed]
        else:
            self.history += [typed, written]
