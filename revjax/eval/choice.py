"""Direction-neutral few-shot candidate scoring for the three in-context task kinds.

A candidate (continuation) ``c`` of a context ``x`` is scored by ``log P(x ⊕ c) − log P(x)``, each term the
log-likelihood of the text's tokens in the model's own reading order (:func:`model_order`, built by
:func:`revjax.direction.orient_document`: BOS first, reversed for backward, a direction token after BOS for a
bidirectional model). The context ``x`` is the span before nanochat's scored span (the choices' common token
prefix for multiple choice, everything before the shared continuation for schema), so both texts are token-exact.

* Forward: ``log P(x)`` is the prefix of ``log P(x ⊕ c)``, so the score is the sum over the candidate's tokens in
  one sequence — nanochat's continuation log-likelihood, computed the same way.
* Backward: the model reads ``c`` before ``x``; the score is the same quantity by Bayes' rule
  (``P(c | x) = P(x ⊕ c) / P(x)``), from two sequences: ``[BOS, rev(x ⊕ c)]`` and ``[BOS, rev(x)]``.

Normalisation follows nanochat per kind: multiple choice and schema pick the option with the highest mean
log-probability per scored token (nanochat's lowest mean loss); language modeling is correct when every
continuation token is the greedy prediction. Greedy prediction of a continuation has no direction-neutral meaning
for a model that reads the continuation before its context, so it is *not applicable* when reading backward.

Reversal units: a backward ``word`` or ``entity`` model reads the reversed *text*, so its two sequences are the
tokens of the reversed texts (:func:`revjax.direction.orient_text`): ``[BOS, tok(rev(x ⊕ c))]``, whose first
tokens are the option's words, and ``[BOS, tok(rev(x))]``; the score is the same ``log P(x ⊕ c) − log P(x)``, each
term what the model itself assigns to the text it reads, and its mean is over the option's reading-order tokens
(``c``'s count in the example), as for every other model. The texts are the decoded reading-order spans, so the
tokenizer is needed (``tokenizer=``); cropping to ``max_len`` drops the fewest leading reading-order tokens (of
every option alike) that make the longest model-order sequence fit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from revjax.direction import (Direction, Specials, Unit, choose_direction, orient_document, orient_text,
                              reverses_text)
from revjax.eval.icl import EvalError, Example
from revjax.eval.scorer import Request, Scorer

NOT_APPLICABLE_LM = ("language modeling scores greedy prediction of the continuation after its context; a model "
                     "reading backward sees the continuation first, so there is no direction-neutral equivalent")


class NotApplicable(Exception):
    """A task kind has no direction-neutral meaning for a reading direction; ``str(err)`` is the reason."""


@dataclass
class ExampleResult:
    """One example: the chosen option (None for language modeling), correctness, and per-option scores.

    ``scores[i]`` is ``log P(x ⊕ c_i) − log P(x)`` and ``tokens[i]`` the number of tokens of ``c_i``.
    """

    pred: int | None
    correct: bool
    scores: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


@functools.lru_cache(maxsize=None)
def bidirectional_index(way: Direction) -> int:
    """The document index whose seeded direction (seed 0) is ``way``, to orient a bidirectional item that way."""
    return next(i for i in range(1 << 10) if choose_direction(0, i) is way)


def model_order(body: Sequence[int], direction: Direction | str, way: Direction | str,
                specials: Specials, unit: Unit | str = Unit.TOKEN) -> tuple[np.ndarray, int]:
    """``(ids, first)``: the reading-order text ``body`` (no BOS) as a model of ``direction`` reads it ``way``,
    and the position of its first text token (after BOS and any direction token). With a text ``unit`` a backward
    ``body`` must be the tokens of the reversed text; they keep their order."""
    direction, way = Direction.parse(direction), Direction.parse(way)
    if direction is Direction.BIDIRECTIONAL:
        ids, _ = orient_document(body, direction, specials, index=bidirectional_index(way), unit=unit)
    else:
        if way is not direction:
            raise ValueError(f"a {direction.value} model reads {direction.value} only, not {way.value}")
        ids, _ = orient_document(body, direction, specials, unit=unit)
    return ids, len(ids) - len(body)


@dataclass(frozen=True)
class TextUnits:
    """A backward text-unit reading: the ``unit`` and the tokenizer that decodes and encodes the spans."""

    unit: Unit
    tokenizer: object

    def reversed_ids(self, body: Sequence[int]) -> list[int]:
        """The tokens of the reversed text of the reading-order tokens ``body``."""
        text = self.tokenizer.decode([int(t) for t in body])
        return [int(t) for t in self.tokenizer.encode(orient_text(text, Direction.BACKWARD, self.unit))]


def _text_requests(bodies, starts, direction, way, specials, text: TextUnits, limit: int | None):
    """Per option ``(requests, tokens)`` of a backward text unit, cropping ``bodies`` from the front to fit."""
    cut = 0
    while True:
        plan = []
        for body, start in zip(bodies, starts):
            body, start = body[cut:], max(0, start - cut)
            full_ids, first = model_order(text.reversed_ids(body), direction, way, specials, text.unit)
            requests = [Request(tuple(full_ids.tolist()), first, len(full_ids))]
            if start > 0:
                ctx, ctx_first = model_order(text.reversed_ids(body[:start]), direction, way, specials, text.unit)
                requests.append(Request(tuple(ctx.tolist()), ctx_first, len(ctx)))
            plan.append((requests, len(body) - start))
        if limit is None or max(len(r[0].ids) for r, _ in plan) <= limit or cut >= max(map(len, bodies)):
            return plan
        cut += 1


def _requests(example: Example, direction, way, specials, max_len: int | None,
              text: TextUnits | None = None) -> list[tuple[list[Request], int]]:
    """Per option: ``(requests, tokens)``; the option's score is ``+requests[0] − sum(requests[1:])``.

    With ``max_len``, every option of the example loses the same leading tokens (as many as its longest option
    must), so the options keep sharing their context text.
    """
    out = []
    marker = 1 if Direction.parse(direction) is Direction.BIDIRECTIONAL else 0
    bodies = [list(seq[1:end]) for seq, end in zip(example.sequences, example.ends)]  # nanochat's spans end there
    cut = 0 if max_len is None else max(0, max(map(len, bodies)) - (max_len - 1 - marker))
    if text is not None and Direction.parse(way) is Direction.BACKWARD:
        starts = [max(0, start - 1) for start in example.starts]
        return _text_requests([b[cut:] for b in bodies], [max(0, s - cut) for s in starts], direction, way,
                              specials, text, max_len)
    for body, start in zip(bodies, example.starts):
        body, start = body[cut:], max(0, start - 1 - cut)  # start in the body (BOS dropped)
        ids, first = model_order(body, direction, way, specials)
        n = len(body) - start
        if Direction.parse(way) is Direction.FORWARD:
            out.append(([Request(tuple(ids.tolist()), first + start, len(ids))], n))
            continue
        full = Request(tuple(ids.tolist()), first, len(ids))
        if start == 0:
            out.append(([full], n))
            continue
        ctx, ctx_first = model_order(body[:start], direction, way, specials)
        out.append(([full, Request(tuple(ctx.tolist()), ctx_first, len(ctx))], n))
    return out


def score_examples(examples: Sequence[Example], kind: str, scorer: Scorer, direction: Direction | str,
                   way: Direction | str, specials: Specials, *, max_len: int | None = None,
                   unit: Unit | str = Unit.TOKEN, tokenizer: object = None) -> list[ExampleResult]:
    """Score every example of one task read ``way`` by a model of ``direction`` (:func:`score_tasks` for one
    task); raises :class:`NotApplicable` for language modeling read backward."""
    (results,) = score_tasks([(examples, kind)], scorer, direction, way, specials, max_len=max_len, unit=unit,
                             tokenizer=tokenizer)
    if isinstance(results, NotApplicable):
        raise results
    return results


def score_tasks(tasks: Sequence[tuple[Sequence[Example], str]], scorer: Scorer, direction: Direction | str,
                way: Direction | str, specials: Specials, *, max_len: int | None = None,
                unit: Unit | str = Unit.TOKEN, tokenizer: object = None) -> list[list[ExampleResult] | NotApplicable]:
    """Score the examples of several tasks (``(examples, kind)`` each) read ``way`` by a model of ``direction``,
    all in one batched pass, so the sequences of every task share the scorer's rows.

    ``max_len`` crops the texts of an example from the front, by the same number of tokens for every option, so
    the longest model-order sequence fits (None: no cropping, as nanochat does for its own models). The options
    of one example go to the scorer as a group, so a shared context is computed once. A task that has no
    direction-neutral meaning read ``way`` (language modeling read backward) gets a :class:`NotApplicable`
    instead of its results. A text ``unit`` (``word``, ``entity``) read backward needs the ``tokenizer`` (see the
    module).
    """
    way, unit = Direction.parse(way), Unit.parse(unit)
    text = None
    if reverses_text(way, unit):
        if tokenizer is None:
            raise EvalError(f"scoring a {unit.value}-unit model backward reads the reversed text of each span; "
                            "pass its tokenizer")
        text = TextUnits(unit, tokenizer)
    plans: list[list | None] = []
    unique: dict[Request, int] = {}
    groups = []
    for examples, kind in tasks:
        if kind == "language_modeling" and way is Direction.BACKWARD:
            plans.append(None)
            continue
        plans.append([_requests(ex, direction, way, specials, max_len, text) for ex in examples])
        for plan in plans[-1]:
            for requests, _ in plan:
                for r in requests:
                    unique.setdefault(r, len(unique))
            groups.append([unique[requests[0]] for requests, _ in plan])  # one question's options
    sums, greedy = scorer.score(list(unique), groups=groups)
    return [NotApplicable(NOT_APPLICABLE_LM) if task_plans is None else
            [_result(ex, kind, plan, unique, sums, greedy) for ex, plan in zip(examples, task_plans)]
            for (examples, kind), task_plans in zip(tasks, plans)]


def _result(ex: Example, kind: str, plan: list, unique: dict[Request, int], sums: np.ndarray,
            greedy: np.ndarray) -> ExampleResult:
    scores, counts, matched = [], [], True
    for requests, n in plan:
        scores.append(float(sums[unique[requests[0]]] - sum(sums[unique[r]] for r in requests[1:])))
        counts.append(n)
        matched = matched and bool(greedy[unique[requests[0]]])
    if kind == "language_modeling":
        return ExampleResult(None, matched, scores, counts)
    means = [s / n if n > 0 else -np.inf for s, n in zip(scores, counts)]
    pred = int(np.argmax(means))
    return ExampleResult(pred, pred == ex.gold, scores, counts)
