"""Inference layouts: prompts and generations between reading and model order, chat prompts and replies.

See :mod:`revjax.direction`, section Inference.
"""

from __future__ import annotations

from collections.abc import Sequence

from revjax.direction.core import ConversationMode, Direction, Specials, _one_way, _resolve_generate
from revjax.direction.units import Unit, flip

TEXT_UNITS = ("With a text ``unit`` (word, entity) ids that a token unit reverses are the tokens of the reversed "
              "text (:func:`revjax.direction.orient_text`) and keep their order; segments are reversed around them.")


def orient_prompt(
    ids: Sequence[int], direction: Direction | str, specials: Specials, *, generate: Direction | str | None = None,
    unit: Unit | str = Unit.TOKEN,
) -> list[int]:
    """Return a reading-order prompt (with BOS) in model order, to generate ``generate`` (default: the model's way).
    ``unit``: see :data:`TEXT_UNITS`."""
    ids = [int(t) for t in ids]
    if not ids or ids[0] != specials.bos:
        raise ValueError(f"a prompt must start with BOS ({specials.bos})")
    way, marked = _resolve_generate(direction, generate)
    body = flip(ids[1:], unit, specials) if way is Direction.BACKWARD else ids[1:]
    return [ids[0]] + ([specials.marker(way)] if marked else []) + body


def restore_prompt(
    ids: Sequence[int], direction: Direction | str, specials: Specials, *, generate: Direction | str | None = None,
    unit: Unit | str = Unit.TOKEN,
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
    return ids[:1] + (flip(body, unit, specials) if way is Direction.BACKWARD else body)


def restore_generation(generated: Sequence[int], generate: Direction | str, *, unit: Unit | str = Unit.TOKEN,
                       specials: Specials | None = None) -> list[int]:
    """Return generated ids (model order, no prompt) in reading order: reversed when generated backward (token
    units; text units need ``specials`` and keep each run of text ids in order)."""
    ids = [int(t) for t in generated]
    if _one_way(generate) is not Direction.BACKWARD:
        return ids
    if Unit.parse(unit) is Unit.TOKEN:
        return ids[::-1]
    if specials is None:
        raise ValueError("restoring a text-unit generation needs the special token ids")
    return flip(ids, unit, specials)


def join_generation(prompt: Sequence[int], generated: Sequence[int], generate: Direction | str, *,
                    unit: Unit | str = Unit.TOKEN, specials: Specials | None = None) -> list[int]:
    """Return the reading-order ids of a prompt (with BOS) and its model-order continuation, BOS first (text units:
    the continuation's segments go before the prompt's; decode and reverse the text to read it)."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("a prompt must start with BOS")
    text = restore_generation(generated, generate, unit=unit, specials=specials)
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
    unit: Unit | str = Unit.TOKEN,
) -> list[int]:
    """Return the model-order chat prompt for the reading-order message contents ``messages`` (see below).

    Forward, and backward in ``turn`` mode, generate the next assistant reply: ``messages`` is
    ``[user, assistant, …, user]`` and the prompt ends with ``as``. Backward in ``sequence`` mode
    generates the user turn that precedes ``messages``: ``messages`` is ``[assistant, user, …,
    assistant]`` (the newest typed reply first), and the prompt ends with ``as`` too, so each
    earlier turn is appended at the end of the model-order sequence. ``unit``: see :data:`TEXT_UNITS`.
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
            content = flip(content, unit, s)
        reading += [s.user_start, *content, s.user_end] if is_user else [s.assistant_start, *content, s.assistant_end]
    if user_generated:
        body = flip(reading[1:], unit, s)
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
    unit: Unit | str = Unit.TOKEN,
) -> list[int]:
    """Return the reading-order message content of a generated chat turn (turn markers stripped); text ``unit``:
    the content's ids in model order (decode them and reverse the text)."""
    way, _, user_generated = _chat_way(direction, mode, generate)
    ids = [int(t) for t in generated]
    stop = specials.user_start if user_generated else specials.assistant_end
    if ids and ids[-1] == stop:
        ids = ids[:-1]
    if user_generated and ids and ids[0] == specials.user_end:
        ids = ids[1:]
    return flip(ids, unit, specials) if way is Direction.BACKWARD else ids
