"""In-context examples as nanochat's CORE evaluation builds them: few-shot prompts and the token span to score.

A task is a list of items of one of three kinds (the eval bundle's ``icl_task_type``):

* ``multiple_choice``: ``{"query", "choices", "gold"}``; one prompt per choice, ``query + delimiter + choice``;
  the choices share a context, so the scored span starts at the tokens' common prefix.
* ``schema``: ``{"context_options", "continuation", "gold"}``; one prompt per context option,
  ``option + delimiter + continuation``; the options share a continuation, the scored span is the common suffix.
* ``language_modeling``: ``{"context", "continuation"}``; the prompt without and with the continuation (contexts
  trimmed of surrounding whitespace); the span is what the continuation adds.

Few-shot blocks come first, each ``example + "\\n\\n"`` rendered with its gold answer. Items are shuffled with
``random.Random(1337)`` before cropping to ``max_per_task``, and item ``i`` draws its ``num_fewshot`` examples from
the others with ``random.Random(1234 + i)`` (both exactly as nanochat). Prompts are tokenized with BOS prepended.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from revjax.errors import RevjaxError

Kind = Literal["multiple_choice", "schema", "language_modeling"]
KINDS: tuple[str, ...] = ("multiple_choice", "schema", "language_modeling")
SHUFFLE_SEED = 1337
FEWSHOT_SEED = 1234


class EvalError(RevjaxError, ValueError):
    """An evaluation that cannot run: bad task data, a missing bundle, an unknown suite."""


@dataclass
class TaskSpec:
    """One in-context task: its label, kind, shots, continuation delimiter, random baseline (a fraction) and items."""

    label: str
    kind: Kind
    num_fewshot: int
    delimiter: str
    baseline: float
    items: list[dict[str, Any]] = field(repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EvalError(f"task {self.label} has type {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not 0 <= self.baseline < 1:
            raise EvalError(f"task {self.label} has random baseline {self.baseline}; it must be in [0, 1)")
        if self.num_fewshot < 0 or (self.num_fewshot and self.num_fewshot >= len(self.items)):
            raise EvalError(f"task {self.label} asks for {self.num_fewshot} shots but has {len(self.items)} items")


@dataclass
class Example:
    """One item's tokenized prompts (reading order, BOS first) and nanochat's span ``[start, end)`` in each."""

    sequences: list[list[int]]
    starts: list[int]
    ends: list[int]
    gold: int | None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _block(item: dict, kind: str, delimiter: str, answer: int | None) -> str:
    """One rendered item; ``answer`` picks the choice / context option (``None``: the language-modeling context)."""
    if kind == "multiple_choice":
        return f"{_text(item['query'])}{delimiter}{_text(item['choices'][answer])}"
    if kind == "schema":
        return f"{_text(item['context_options'][answer])}{delimiter}{_text(item['continuation'])}"
    return f"{_text(item['context']).strip()}{delimiter}{_text(item['continuation'])}"


def render_prompts(item: dict, kind: str, delimiter: str, fewshot: Sequence[dict] = ()) -> list[str]:
    """The prompts of ``item``: one per choice (MC), one per context option (schema), or [without, with] (LM)."""
    head = "".join(_block(ex, kind, delimiter, ex.get("gold")) + "\n\n" for ex in fewshot)
    if kind == "multiple_choice":
        return [head + _block(item, kind, delimiter, i) for i in range(len(item["choices"]))]
    if kind == "schema":
        return [head + _block(item, kind, delimiter, i) for i in range(len(item["context_options"]))]
    without = (head + f"{_text(item['context']).strip()}{delimiter}").strip()
    return [without, head + _block(item, kind, delimiter, None)]


def common_length(sequences: Sequence[Sequence[int]], side: Literal["left", "right"]) -> int:
    """Length of the common prefix (``left``) or suffix (``right``) of ``sequences``."""
    shortest = min(len(s) for s in sequences)
    for i in range(shortest):
        at = i if side == "left" else -1 - i
        if any(s[at] != sequences[0][at] for s in sequences[1:]):
            return i
    return shortest


def spans(kind: str, tokens: list[list[int]]) -> tuple[list[list[int]], list[int], list[int]]:
    """``(sequences, starts, ends)``: the scored span of each tokenized prompt (BOS first), as nanochat finds it."""
    if kind == "multiple_choice":
        start = common_length(tokens, "left")
        return tokens, [start] * len(tokens), [len(t) for t in tokens]
    if kind == "schema":
        suffix = common_length(tokens, "right")
        return tokens, [len(t) - suffix for t in tokens], [len(t) for t in tokens]
    without, with_ = tokens
    if not (len(without) < len(with_) and with_[: len(without)] == without):
        raise EvalError("the prompt without the continuation does not tokenize to a prefix of the prompt with it")
    return [with_], [len(without)], [len(with_)]


def select_items(items: Sequence[dict], max_per_task: int | None) -> list[dict]:
    """The items shuffled with ``random.Random(1337)`` and cropped to ``max_per_task`` (None or ≤ 0: all)."""
    items = list(items)
    random.Random(SHUFFLE_SEED).shuffle(items)
    return items[:max_per_task] if max_per_task and max_per_task > 0 else items


def fewshot_examples(items: Sequence[dict], index: int, count: int) -> list[dict]:
    """``count`` items other than ``index``, drawn with ``random.Random(1234 + index)``."""
    if count <= 0:
        return []
    others = [i for i in range(len(items)) if i != index]
    return [items[i] for i in random.Random(FEWSHOT_SEED + index).sample(others, count)]


def _gold(item: dict, kind: str, label: str, index: int) -> int | None:
    if kind == "language_modeling":
        return None
    options = item["choices"] if kind == "multiple_choice" else item["context_options"]
    gold = item.get("gold")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(options):
        raise EvalError(f"item {index} of {label} has gold {gold!r} for {len(options)} options")
    return gold


def build_examples(spec: TaskSpec, tokenizer: Any, max_per_task: int | None = None) -> list[Example]:
    """The tokenized examples of ``spec`` (shuffled and cropped as nanochat; few-shot drawn from the cropped items,
    or, when the crop has no more items than shots, from as many of the shuffled items as the shots need).

    ``tokenizer`` needs ``encode(list[str], prepend=id)`` and ``bos_id``.
    """
    required = {"multiple_choice": ("query", "choices"), "schema": ("context_options", "continuation"),
                "language_modeling": ("context", "continuation")}[spec.kind]
    shuffled = select_items(spec.items, None)
    items = select_items(spec.items, max_per_task)
    pool = shuffled[: max(len(items), spec.num_fewshot + 1)]  # the crop itself unless it is too small for the shots
    prompts, counts, golds = [], [], []
    for i, item in enumerate(items):
        missing = [key for key in required if key not in item]
        if missing:
            raise EvalError(f"item {i} of {spec.label} ({spec.kind}) lacks {', '.join(missing)}")
        rendered = render_prompts(item, spec.kind, spec.delimiter, fewshot_examples(pool, i, spec.num_fewshot))
        prompts += rendered
        counts.append(len(rendered))
        golds.append(_gold(item, spec.kind, spec.label, i))
    tokens = tokenizer.encode(prompts, prepend=tokenizer.bos_id) if prompts else []
    examples, at = [], 0
    for i, (count, gold) in enumerate(zip(counts, golds)):
        try:
            sequences, starts, ends = spans(spec.kind, tokens[at: at + count])
        except EvalError as err:
            raise EvalError(f"item {i} of {spec.label}: {err}") from None
        examples.append(Example(sequences, starts, ends, gold))
        at += count
    return examples


def centered(accuracy: float, baseline: float) -> float:
    """Accuracy rescaled so the random baseline is 0 and a perfect score 1: ``(acc − b) / (1 − b)``."""
    return (accuracy - baseline) / (1.0 - baseline)
