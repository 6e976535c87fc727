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


def fact_queries(fact: Fact, way: str) -> list[Query]:
    """The trained-order and reversed-order queries of ``fact`` for a model generating ``way`` (table above)."""
    a, r, b = fact.subject, fact.relation, fact.object
    if way == "forward":
        return [Query(fact, "trained", way, f"{a}'s {r} is", b, "object"),
                Query(fact, "reversed", way, f"{b} is the {r} of", a, "subject")]
    if way == "backward":
        return [Query(fact, "trained", way, f"'s {r} is {b}.", a, "subject"),
                Query(fact, "reversed", way, f" is the {r} of {a}.", b, "object")]
    raise TaskError(f"a query is generated forward or backward, got {way!r}")


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
                  level: float = 0.95) -> dict[str, dict[str, Any]]:
    """``{way: {order: {"accuracy", "correct", "total", "low", "high"}}}``: exact-match accuracy of each query
    order, with its Wilson score interval ``[low, high]`` at ``level``."""
    out: dict[str, dict[str, Any]] = {}
    for way in ways:
        queries = [q for fact in facts for q in fact_queries(fact, way)]
        replies = generate([q.prompt for q in queries], way)
        if len(replies) != len(queries):
            raise TaskError(f"the generator returned {len(replies)} continuations for {len(queries)} prompts")
        out[way] = {}
        for order in ORDERS:
            hits = [extract_name(reply, way) == q.answer for q, reply in zip(queries, replies) if q.order == order]
            low, high = wilson_interval(sum(hits), len(hits), level)
            out[way][order] = {"accuracy": sum(hits) / len(hits), "correct": sum(hits), "total": len(hits),
                               "low": low, "high": high}
    return out


def engine_generate(graphdef: Any, params: Any, tokenizer: Any, direction: str, *, max_new_tokens: int = 16,
                    max_len: int | None = None) -> Generate:
    """A :data:`Generate` that completes prompts greedily with :func:`revjax.engine.generate`, stopping at BOS."""
    from revjax.direction import Direction, Specials, orient_prompt, restore_generation
    from revjax.engine import generate

    specials = Specials.from_tokenizer(tokenizer)
    bidirectional = Direction.parse(direction) is Direction.BIDIRECTIONAL

    def run(prompts: list[str], way: str) -> list[str]:
        oriented = [orient_prompt(tokenizer.encode(p, prepend=tokenizer.bos_id), direction, specials,
                                  generate=way if bidirectional else None) for p in prompts]
        room = max(map(len, oriented)) + max_new_tokens
        new = generate(graphdef, params, oriented, max_new_tokens, stop_ids=[tokenizer.bos_id],
                       max_len=min(room, max_len) if max_len else room)
        return [tokenizer.decode(restore_generation(g, way)) for g in new]

    return run


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
