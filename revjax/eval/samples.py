"""Greedy samples, the one sampler of training hooks and ``revjax eval``: continuations of fixed prompts (text), or
chat turns (conversation phases), for each direction a model reads, shown in reading order and rendered for people
by :func:`revjax.direction.render` (no raw special tokens; a chat turn ends at its end token).

With a text ``unit`` (``word``, ``entity``) a backward prompt is the tokens of its reversed text
(:func:`revjax.direction.orient_text`), and the prompt with its continuation is shown by rendering the whole model-order
text and putting its pieces back in reading order, so a word the model finishes is read whole."""

from __future__ import annotations

from typing import Any, Sequence

from revjax.direction import (Direction, Specials, Unit, chat_prompt, chat_stop_token, orient_prompt, orient_text, render,
                              render_reply, reverses_text)
from revjax.engine import generate

SAMPLE_PROMPTS = {
    Direction.FORWARD: ["The capital of France is", "And God said,", "To be, or not to be:"],
    Direction.BACKWARD: ["is the capital of France.", "and it was so.", "that is the question."],
}
CHAT_SAMPLES = [  # (question, answer) pairs: forward asks the question, sequence-backward gives the answer
    ("What is 12 plus 7?", "12 + 7 = 19. #### 19"),
    ("Who are you?", "I am a language model trained with revjax."),
]


def greedy_samples(graphdef: Any, params: Any, tokenizer: Any, direction: Direction | str,
                   ways: Sequence[Direction | str], max_len: int, max_new_tokens: int = 32, *,
                   unit: Unit | str = Unit.TOKEN) -> dict[str, list[str]]:
    """Greedy continuations of :data:`SAMPLE_PROMPTS` for each way, in reading order (backward text grows left)."""
    specials = Specials.from_tokenizer(tokenizer)
    unit = Unit.parse(unit)
    out = {}
    for way in map(Direction.parse, ways):
        prompts = [tokenizer.encode(orient_text(t, way, unit), prepend=tokenizer.bos_id) for t in SAMPLE_PROMPTS[way]]
        oriented = [orient_prompt(p, direction, specials, generate=way, unit=unit) for p in prompts]
        room = min(max_len, max(map(len, oriented)) + max_new_tokens)
        generated = generate(graphdef, params, oriented, max_new_tokens, stop_ids=[tokenizer.bos_id], max_len=room)
        token_bytes = tokenizer.encoding.decode_single_token_bytes
        texts = []
        for prompt, ids in zip(prompts, generated):
            if reverses_text(way, unit):  # model order: the reversed prompt, then ids
                texts.append(render([*prompt[1:], *ids], token_bytes, specials, backward=True,
                                    ends=[tokenizer.bos_id], unit=unit))
                continue
            given = render(prompt[1:], token_bytes, specials)
            written = render(ids, token_bytes, specials, backward=way is Direction.BACKWARD, ends=[tokenizer.bos_id])
            texts.append(written + given if way is Direction.BACKWARD else given + written)
        out[way.value] = texts
    return out


def chat_samples(graphdef: Any, params: Any, tokenizer: Any, direction: Direction | str, mode: str,
                 ways: Sequence[Direction | str], max_len: int, max_new_tokens: int = 48, *,
                 unit: Unit | str = Unit.TOKEN) -> dict[str, list[str]]:
    """Greedy chat turns for each way, in reading order, as ``given → generated`` (unquoted): the assistant's reply
    to a question, or (sequence-mode backward) the question that an answer replies to."""
    specials = Specials.from_tokenizer(tokenizer)
    out: dict[str, list[str]] = {}
    for way in map(Direction.parse, ways):
        asks_user = way is Direction.BACKWARD and mode == "sequence"
        given = [answer for _, answer in CHAT_SAMPLES] if asks_user else [question for question, _ in CHAT_SAMPLES]
        prompts = [chat_prompt([tokenizer.encode(orient_text(text, way, unit))], direction, specials, mode=mode,
                               generate=way, unit=unit) for text in given]
        stop = chat_stop_token(direction, specials, mode=mode, generate=way)
        generated = generate(graphdef, params, prompts, max_new_tokens, stop_ids=[stop],
                             max_len=min(max_len, max(map(len, prompts)) + max_new_tokens))
        token_bytes = tokenizer.encoding.decode_single_token_bytes
        replies = [render_reply(g, direction, specials, token_bytes, mode=mode, generate=way, unit=unit)
                   for g in generated]
        out[way.value] = [f"{text} → {reply}" for text, reply in zip(given, replies)]
    return out
