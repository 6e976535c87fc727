"""Generative chat evaluation: the model answers each question and the task grades the reply.

Prompts are built by :func:`revjax.direction.chat_prompt` from the reading-order messages (the final assistant
message is the one to produce), generation stops at :func:`revjax.direction.chat_stop_token`, and
:func:`revjax.direction.chat_reply` restores the reply to reading order before ``task.evaluate`` grades it. Only
directions that generate the assistant's reply can be graded this way (forward, and backward in ``turn`` mode);
in ``sequence`` mode a backward model writes the *user* turn, so generative grading does not apply there.

Forward generation uses the engine's calculator tool when the engine offers one (``Engine.generate(...,
tool_order=...)``); backward text cannot call a tool (the output would precede the call), so it generates plainly.
Prompts are generated in batches of similar length, greedily by default (nanochat's ``temperature=0``).

Reversal units: a backward ``word`` or ``entity`` model reads each message from its reversed text
(:func:`revjax.direction.orient_text`), so :func:`question_messages` encodes the reversed texts for that way, the
prompt is laid out with the unit, and the reply (the ids of the reversed text the model wrote) is decoded and put
back in reading order by :func:`revjax.direction.reverse_units` before it is graded; it generates without the
calculator, like any backward reply.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from revjax import engine as engine_module
from revjax.direction import (ConversationMode, Direction, Specials, Unit, chat_prompt, chat_reply, chat_stop_token,
                              orient_text, reverses_text)
from revjax.eval.icl import EvalError

NOT_APPLICABLE_SEQUENCE = ("in sequence mode a backward model generates the user turn that precedes an answer, "
                           "so it cannot be asked to answer a question; see the joint-likelihood score instead")


def asks_assistant(direction: Direction | str, way: Direction | str, mode: ConversationMode | str) -> bool:
    """Whether a model of ``direction`` reading ``way`` in conversation ``mode`` generates the assistant's reply."""
    backward = Direction.parse(way) is Direction.BACKWARD
    return not (backward and ConversationMode.parse(mode) is ConversationMode.SEQUENCE)


def oriented_messages(conversation: dict, way: Direction | str = Direction.FORWARD,
                      unit: Unit | str = Unit.TOKEN) -> list[dict]:
    """The conversation's messages as read ``way``: a system message joined to the first user turn, and each
    content the reversed text for a backward text ``unit`` (:func:`revjax.direction.orient_text`)."""
    messages = [dict(m) for m in conversation["messages"]]
    if messages and messages[0]["role"] == "system":
        messages = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"},
                    *messages[2:]]
    if not reverses_text(way, unit):
        return messages
    for m in messages:
        if not isinstance(m["content"], str):
            raise EvalError(f"a {Unit.parse(unit).value}-unit model reads messages as reversed text, but a "
                            f"{m['role']} message holds {type(m['content']).__name__} parts; give it plain text")
        m["content"] = orient_text(m["content"], way, unit)
    return messages


def question_messages(conversation: dict, tokenizer: Any, way: Direction | str = Direction.FORWARD,
                      unit: Unit | str = Unit.TOKEN) -> list[list[int]]:
    """Token ids of every message before the final assistant reply (a system message joins the first user turn),
    as a prompt read ``way`` takes them (see :func:`oriented_messages`)."""
    return [tokenizer.encode(m["content"]) for m in oriented_messages(conversation, way, unit)[:-1]]


def _tool_engine() -> bool:
    engine_cls = getattr(engine_module, "Engine", None)
    return engine_cls is not None and "tool_order" in inspect.signature(engine_cls.stream).parameters


def generate_batch(graphdef: Any, params: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   stop: int, *, tools: bool, temperature: float = 0.0, seed: int = 0) -> list[list[int]]:
    """Continuations (model order, stop token removed) of ``prompts``, with the calculator when ``tools``."""
    max_len = max(map(len, prompts)) + max_new_tokens
    if tools and _tool_engine():
        engine = engine_module.Engine(graphdef, params, tokenizer=tokenizer)
        return engine.generate(prompts, max_new_tokens, temperature=temperature, seed=seed, stop_ids=[stop],
                               max_len=max_len, tool_order="forward").tokens
    return engine_module.generate(graphdef, params, prompts, max_new_tokens, temperature=temperature, seed=seed,
                                  stop_ids=[stop], max_len=max_len)


def generative_replies(graphdef: Any, params: Any, tokenizer: Any, conversations: Sequence[dict],
                       direction: Direction | str, way: Direction | str, mode: ConversationMode | str, *,
                       max_new_tokens: int = 512, batch_size: int = 16, temperature: float = 0.0,
                       progress: Callable[[int], Any] | None = None, unit: Unit | str = Unit.TOKEN) -> list[str]:
    """The model's reply text (reading order) to each conversation's final assistant turn."""
    specials = Specials.from_tokenizer(tokenizer)
    way, unit = Direction.parse(way), Unit.parse(unit)
    generate_way = way if Direction.parse(direction) is Direction.BIDIRECTIONAL else None
    prompts = [chat_prompt(question_messages(c, tokenizer, way, unit), direction, specials, mode=mode,
                           generate=generate_way, unit=unit) for c in conversations]
    stop = chat_stop_token(direction, specials, mode=mode, generate=generate_way)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    for at in range(0, len(order), batch_size):
        chunk = order[at: at + batch_size]
        generated = generate_batch(graphdef, params, tokenizer, [prompts[i] for i in chunk], max_new_tokens, stop,
                                   tools=way is Direction.FORWARD, temperature=temperature)
        for i, ids in zip(chunk, generated):
            text = tokenizer.decode(chat_reply(ids, direction, specials, mode=mode, generate=generate_way, unit=unit))
            replies[i] = orient_text(text, way, unit)  # the model-order text back in reading order
        if progress is not None:
            progress(len(chunk))
    return replies
