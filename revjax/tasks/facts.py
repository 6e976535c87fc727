"""The reversal-curse study: fictitious facts "<name>'s <relation> is <name>." learnt in one order, asked in both.

A world of ``size`` facts is drawn from its ``seed`` alone (:func:`make_facts`); every name is made of invented
syllables and appears in one fact only. Each fact has two statements in reading order:

* ``trained``: ``"A's r is B."`` — the sentence every training document uses;
* ``reversed``: ``"B is the r of A."`` — the same fact with the two names swapped round.

:func:`fact_documents` writes the base-training documents, one statement per document: the ``trained`` statement of
every fact, and for every ``demo_every``-th fact also its ``reversed`` statement, so that the model sees the second
template and that it says the same thing; the other facts (:func:`probe_facts`) are never seen reversed.

Queries (:func:`fact_queries`) ask a model to complete a statement of a tested fact greedily **in the direction it
generates**, the name to produce being the one it reads last in that statement:

* forward, trained (``A's r is B.``): prompt ``A's r is``, answer B — after A, as in training;
* forward, reversed (``B is the r of A.``): prompt ``B is the r of``, answer A — after B, the reversed order;
* backward, trained: prompt ``'s r is B.``, answer A — written leftwards after B, as in training;
* backward, reversed: prompt `` is the r of A.``, answer B — written leftwards after A, the reversed order.

So for every direction the ``trained`` query asks for a name in the model order it was learnt (a forward model saw
A then B, a backward model B then A) and the ``reversed`` query for the other: the reversal curse is the gap
between the two. A bidirectional model answers all four; each of its ``reversed`` queries asks for the name in the
model order its documents of the other direction taught (forward reversed: A after B, as its backward documents
read), which is what the study looks at. The answer is exact-matched against
the name the model writes up to the first sentence end (forward) or from the last one (backward).

Text reversal units (``direction.unit`` word or entity, :mod:`revjax.direction.units`): a backward document is the
statement's text with its pieces reversed, tokenized normally. With A = "A1 A2" and B = "B1 B2" the trained
statement reads, in model order, ``"B2. B1 is r A2's A1"`` (word: each name's words swapped round, each word spelled
as in reading order) or ``"B1 B2. is r A1 A2's"`` (entity: each name one piece, exactly as forward text spells it);
the reversed statement reads ``"A2. A1 of r the is B2 B1"`` or ``"A1 A2. of r the is B1 B2"``. So "trained order"
and "reversed order" keep their meaning — B before A in model order is the order every backward document of the
fact taught, A before B the order only the reversed statement teaches — but the unit of what is written changes:
a backward text-unit model writes whole words leftwards, and "A's" is one word. Its prompts therefore start at a
word boundary (the reading-order suffix after the asked word and its space; :mod:`revjax.direction.units`), so
their model-order text ends with that word and the model writes the space and the next word, as in training:

* backward, trained: prompt ``r is B.``, the model writes the word(s) ``A's`` (``ending`` "'s"); the answer is the
  name before "'s";
* backward, reversed: prompt ``is the r of A.``, the model writes B.

Forward queries are the token-unit ones. The prompt is oriented with ``orient_text(prompt, way, unit)`` before it is
tokenized and ``orient_prompt(..., unit=unit)`` after, and the model-order text (prompt and continuation, decoded
together) is read back with ``reverse_units``; the continuation is what comes before the prompt. What the entity
unit changes is what a *bidirectional* model reads: its backward documents hold B before A with every name spelled
exactly as its forward documents spell it, the premise of Reverse Training (Golovneva et al., 2024), so its forward
``reversed`` query ("B is the r of" → A) asks for an order its backward documents taught in the same spelling;
with word units each name's words come swapped round, with token units each name is spelled backwards.
Each accuracy comes with its Wilson score interval (:func:`wilson_interval`, 95% by default), which stays inside
[0, 1] and is not empty at 0 or n correct answers, where the normal approximation collapses to a point.
The :class:`ReversalFacts` task serves the same facts as question-answer conversations.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable, Sequence

from revjax.tasks.base import Conversation, Task, TaskError
from revjax.tasks.registry import register

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "tr", "zh", "th")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
CODAS = ("", "", "n", "r", "l", "s", "k", "x")
RELATIONS = ("mentor", "rival", "neighbour", "teacher", "partner", "editor", "doctor", "landlord")
ORDERS = ("trained", "reversed")

Generate = Callable[[list[str], str], list[str]]  # (reading-order prompts, "forward"|"backward") -> continuations


@dataclass(frozen=True)
class Fact:
    subject: str  # A
    relation: str  # r
    object: str  # B

    def statement(self, order: str) -> str:
        if order == "trained":
            return f"{self.subject}'s {self.relation} is {self.object}."
        if order == "reversed":
            return f"{self.object} is the {self.relation} of {self.subject}."
        raise TaskError(f"a statement order is trained or reversed, got {order!r}")


@dataclass(frozen=True)
class Query:
    fact: Fact
    order: str  # trained | reversed (the statement completed)
    way: str  # forward | backward (the direction the model generates)
    prompt: str  # reading order
    answer: str  # the name to produce
    asked: str  # subject | object
    ending: str = ""  # what the written word(s) carry after the name ("'s" for a text unit's backward trained query)

    def hit(self, reply: str) -> bool:
        """Whether ``reply`` (a reading-order continuation) names :attr:`answer`, followed by :attr:`ending`."""
        name = extract_name(reply, self.way)
        if self.ending:
            if not name.endswith(self.ending):
                return False
            name = name[:-len(self.ending)]
        return name == self.answer


def _word(rng: random.Random) -> str:
    syllables = [rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(2)]
    return "".join(syllables).capitalize()


def make_facts(size: int, seed: int = 0) -> list[Fact]:
    """``size`` facts with distinct invented names (first name and surname), drawn from ``seed`` alone."""
    if size < 1:
        raise TaskError(f"a fact world needs at least one fact, got size={size}")
    rng, seen, names = random.Random(f"reversal-facts:{seed}"), set(), []
    while len(names) < 2 * size:
        name = f"{_word(rng)} {_word(rng)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return [Fact(names[2 * i], rng.choice(RELATIONS), names[2 * i + 1]) for i in range(size)]


def fact_documents(facts: Sequence[Fact], demo_every: int = 3) -> list[str]:
    """Training documents: every fact's trained statement, and the reversed one of every ``demo_every``-th fact."""
    if demo_every < 1:
        raise TaskError(f"demo_every must be a positive number of facts, got {demo_every}")
    docs = []
    for i, fact in enumerate(facts):
        docs.append(fact.statement("trained"))
        if i % demo_every == 0:
            docs.append(fact.statement("reversed"))
    return docs


def probe_facts(facts: Sequence[Fact], demo_every: int = 3) -> list[Fact]:
    """The facts whose reversed statement no training document holds."""
    return [fact for i, fact in enumerate(facts) if i % demo_every != 0]


def fact_queries(fact: Fact, way: str, unit: str = "token") -> list[Query]:
    """The trained-order and reversed-order queries of ``fact`` for a model of reversal ``unit`` generating ``way``
    (lists above)."""
    a, r, b = fact.subject, fact.relation, fact.object
    text_unit = _unit(unit) != "token"
    if way == "forward":
        return [Query(fact, "trained", way, f"{a}'s {r} is", b, "object"),
                Query(fact, "reversed", way, f"{b} is the {r} of", a, "subject")]
    if way == "backward" and text_unit:
        return [Query(fact, "trained", way, f"{r} is {b}.", a, "subject", "'s"),
                Query(fact, "reversed", way, f"is the {r} of {a}.", b, "object")]
    if way == "backward":
        return [Query(fact, "trained", way, f"'s {r} is {b}.", a, "subject"),
                Query(fact, "reversed", way, f" is the {r} of {a}.", b, "object")]
    raise TaskError(f"a query is generated forward or backward, got {way!r}")


def _unit(unit: Any) -> str:
    """The name of a reversal unit (token, word or entity), or a TaskError saying what is allowed."""
    name = getattr(unit, "value", unit)
    if name not in ("token", "word", "entity"):
        raise TaskError(f"a reversal unit is token, word or entity, got {unit!r}")
    return name


def extract_name(continuation: str, way: str) -> str:
    """The name a continuation gives: up to the first sentence end (forward), or after the last one (backward)."""
    parts = re.split(r"[.\n]", continuation)
    return (parts[0] if way == "forward" else parts[-1]).strip()


def wilson_interval(correct: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """The two-sided Wilson score interval of a proportion ``p = correct / total`` at confidence ``level``:
    ``(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)``, ``z`` the normal quantile of ``(1 + level) / 2``."""
    if total < 1 or not 0 <= correct <= total:
        raise TaskError(f"an interval needs 0 <= correct <= total and total >= 1, got {correct}/{total}")
    if not 0 < level < 1:
        raise TaskError(f"a confidence level lies strictly between 0 and 1, got {level}")
    z = NormalDist().inv_cdf((1 + level) / 2)
    p, n = correct / total, total
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == total else centre + half)


def score_queries(generate: Generate, facts: Sequence[Fact], ways: Sequence[str],
                  level: float = 0.95, unit: str = "token") -> dict[str, dict[str, Any]]:
    """``{way: {order: {"accuracy", "correct", "total", "low", "high"}}}``: exact-match accuracy of each query
    order (the queries of a model of reversal ``unit``), with its Wilson score interval ``[low, high]`` at
    ``level``."""
    out: dict[str, dict[str, Any]] = {}
    for way in ways:
        queries = [q for fact in facts for q in fact_queries(fact, way, unit)]
        replies = generate([q.prompt for q in queries], way)
        if len(replies) != len(queries):
            raise TaskError(f"the generator returned {len(replies)} continuations for {len(queries)} prompts")
        out[way] = {}
        for order in ORDERS:
            hits = [q.hit(reply) for q, reply in zip(queries, replies) if q.order == order]
            low, high = wilson_interval(sum(hits), len(hits), level)
            out[way][order] = {"accuracy": sum(hits) / len(hits), "correct": sum(hits), "total": len(hits),
                               "low": low, "high": high}
    return out


def engine_generate(graphdef: Any, params: Any, tokenizer: Any, direction: str, *, unit: str = "token",
                    max_new_tokens: int = 16, max_len: int | None = None) -> Generate:
    """A :data:`Generate` that completes prompts greedily with :func:`revjax.engine.generate`, stopping at BOS, for
    a model of reversal ``unit``: a text unit's prompt text is reversed by pieces before it is tokenized for a
    backward generation, and the model-order text read back with ``reverse_units`` (see above)."""
    from revjax.direction import Direction, Specials, orient_prompt, orient_text, restore_generation
    from revjax.engine import generate

    specials = Specials.from_tokenizer(tokenizer)
    bidirectional = Direction.parse(direction) is Direction.BIDIRECTIONAL
    unit = _unit(unit)

    def run(prompts: list[str], way: str) -> list[str]:
        bodies = [tokenizer.encode(orient_text(p, way, unit)) for p in prompts]
        oriented = [orient_prompt([tokenizer.bos_id, *body], direction, specials,
                                  generate=way if bidirectional else None, unit=unit) for body in bodies]
        room = max(map(len, oriented)) + max_new_tokens
        new = generate(graphdef, params, oriented, max_new_tokens, stop_ids=[tokenizer.bos_id],
                       max_len=min(room, max_len) if max_len else room)
        if unit == "token" or way == "forward":
            return [tokenizer.decode(restore_generation(g, way)) for g in new]
        return [read_back(tokenizer.decode([*body, *g]), prompt, unit) for body, g, prompt in zip(bodies, new, prompts)]

    return run


def read_back(model_text: str, prompt: str, unit: str) -> str:
    """The reading-order continuation of a backward ``prompt`` (reading order) from the model-order text of prompt
    and continuation (a text ``unit``): the text before the prompt, or all of it where the model changed the
    prompt's first word (then no name matches)."""
    from revjax.direction import reverse_units

    text = reverse_units(model_text, unit)
    return text[:-len(prompt)] if prompt and text.endswith(prompt) else text


@register("reversal-facts")
class ReversalFacts(Task):
    """The facts as conversations: train asks "Who is A's r?" (answer "A's r is B."), test asks the reversed
    question "Whose r is B?" of the tested facts (answer "B is the r of A."); graded by exact match of the name."""

    eval_type = "generative"

    def __init__(self, size: int = 300, split: str = "train", seed: int = 0, demo_every: int = 3) -> None:
        if split not in ("train", "test"):
            raise TaskError(f"reversal-facts needs split train or test, got {split!r}")
        facts = make_facts(size, seed)
        self.facts = facts if split == "train" else probe_facts(facts, demo_every)
        self.split, self.name, self.eval_only = split, f"reversal-facts/{split}", split == "test"

    def _size(self) -> int:
        return len(self.facts)

    def _get(self, index: int) -> Conversation:
        fact = self.facts[index]
        if self.split == "train":
            question, answer = f"Who is {fact.subject}'s {fact.relation}?", fact.statement("trained")
        else:
            question, answer = f"Whose {fact.relation} is {fact.object}?", fact.statement("reversed")
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "answer": fact.object if self.split == "train" else fact.subject}

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        """Whether the reply names the answer: the name after the last " is " / " of ", up to the sentence end."""
        said = re.split(r" is (?:the \w+ of )?", reply.strip())[-1]
        return extract_name(said, "forward") == conversation["answer"]
