"""Arithmetic generated from a seed: word problems answered GSM8K-style with calculator calls, and small sums.

Word problems (``arithmetic``): each step of the answer is text, a ``python`` part with the expression, a
``python_output`` part with what Python prints for it (``84/4`` → ``21.0``), then text that goes on with the value;
the answer ends with ``#### N``. Problem ``i`` of split train comes from ``random.Random(i)``, of split test from
``random.Random(10_000_000 + i)`` (a nonzero ``seed`` mixes in as ``"seed:base"``), so the splits never share a draw
(sums draw the same way).

Sums (``sums``): "What is 3 plus 5?" answered "3 + 5 = 8. #### 8", operands 0..``max_operand``, no calculator; a
model of a few hundred thousand parameters reaches some right answers, so RL's reward has somewhere to rise from.
With ``max_operand=9`` there are 100 distinct problems, so the test split repeats train problems (it draws other
seeds, not other sums).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from revjax.tasks.base import Conversation, GeneratedTask, TaskError
from revjax.tasks.graders import calculate, grade_numeric, last_text
from revjax.tasks.registry import register

NAMES = ("Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemi", "Liam", "Maya",
         "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yara", "Zoe")
ITEMS = ("apple", "pencil", "notebook", "sticker", "marble", "cookie", "balloon", "candle", "card", "shell",
         "stamp", "button", "cupcake", "orange", "badge")
VEHICLES = ("train", "bus", "truck", "boat", "cyclist", "car")

Parts = list[dict[str, str]]
Problem = tuple[str, Parts, int]


def _value(expr: str) -> str:
    """The expression's value as the text that follows the call (``21.0`` → ``21``)."""
    out = calculate(expr)
    return out[:-2] if out.endswith(".0") else out


def _call(parts: Parts, before: str, expr: str) -> str:
    parts.append({"type": "text", "text": before})
    parts.append({"type": "python", "text": expr})
    parts.append({"type": "python_output", "text": calculate(expr)})
    return _value(expr)


def _change(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    count, price = rng.randint(2, 9), rng.randint(1, 12)
    cost = count * price
    bill = next(b for b in (10, 20, 50, 100, 200) if b >= cost)
    question = (f"{name} buys {count} {item}s at ${price} each and pays with a ${bill} bill. "
                f"How much change does {name} get?")
    parts: Parts = []
    c = _call(parts, f"The {item}s cost {count} * ${price} = $", f"{count}*{price}")
    r = _call(parts, f"{c}.\nThe change is ${bill} - ${c} = $", f"{bill}-{c}")
    parts.append({"type": "text", "text": f"{r}.\n#### {r}"})
    return question, parts, bill - cost


def _share(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each = rng.randint(2, 9), rng.randint(2, 15)
    total = friends * each
    question = (f"{name} has {total} {item}s and shares them equally among {friends} friends. "
                f"How many {item}s does each friend get?")
    parts: Parts = []
    r = _call(parts, f"Each friend gets {total} / {friends} = ", f"{total}/{friends}")
    parts.append({"type": "text", "text": f"{r} {item}s.\n#### {r}"})
    return question, parts, each


def _distance(rng: random.Random) -> Problem:
    vehicle, speed, hours = rng.choice(VEHICLES), rng.randint(3, 12) * 5, rng.randint(2, 8)
    question = f"A {vehicle} travels at {speed} km per hour for {hours} hours. How many km does it travel?"
    parts: Parts = []
    r = _call(parts, f"It travels {speed} * {hours} = ", f"{speed}*{hours}")
    parts.append({"type": "text", "text": f"{r} km.\n#### {r}"})
    return question, parts, speed * hours


def _savings(rng: random.Random) -> Problem:
    name, weekly, weeks = rng.choice(NAMES), rng.randint(3, 25), rng.randint(3, 12)
    spent = rng.randint(1, weekly * weeks - 1)
    question = (f"{name} saves ${weekly} every week for {weeks} weeks and then spends ${spent} on a gift. "
                f"How many dollars does {name} have left?")
    parts: Parts = []
    s = _call(parts, f"{name} saves {weekly} * {weeks} = $", f"{weekly}*{weeks}")
    r = _call(parts, f"{s}.\nAfter the gift {name} has ${s} - ${spent} = $", f"{s}-{spent}")
    parts.append({"type": "text", "text": f"{r} left.\n#### {r}"})
    return question, parts, weekly * weeks - spent


def _boxes(rng: random.Random) -> Problem:
    item, boxes, per_box = rng.choice(ITEMS), rng.randint(2, 12), rng.randint(4, 24)
    broken, extra = rng.randint(1, boxes * per_box - 1), rng.randint(0, 30)
    question = (f"A shop has {boxes} boxes with {per_box} {item}s in each box and {extra} loose {item}s. "
                f"{broken} {item}s are damaged and thrown away. How many {item}s are left?")
    parts: Parts = []
    t = _call(parts, f"The boxes hold {boxes} * {per_box} = ", f"{boxes}*{per_box}")
    r = _call(parts, f"{t} {item}s.\nWith the loose ones and without the damaged ones there are "
                     f"{t} + {extra} - {broken} = ", f"{t}+{extra}-{broken}")
    parts.append({"type": "text", "text": f"{r} {item}s left.\n#### {r}"})
    return question, parts, boxes * per_box + extra - broken


KINDS: tuple[Callable[[random.Random], Problem], ...] = (_change, _share, _distance, _savings, _boxes)


@register("arithmetic")
class Arithmetic(GeneratedTask):
    """Generated word problems (change, sharing, distance, savings, stock) with ``#### N`` answers."""

    eval_type = "generative"

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 0) -> None:
        super().__init__("arithmetic", size, split, seed)

    def _get(self, index: int) -> Conversation:
        rng = self._rng(index)
        question, parts, answer = rng.choice(KINDS)(rng)
        return {
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}],
            "answer": str(answer),
        }

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        return grade_numeric(last_text(conversation), reply)


@register("sums")
class Sums(GeneratedTask):
    """Sums of two numbers in 0..``max_operand`` with ``#### N`` answers, written out without a calculator."""

    eval_type = "generative"

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 0, max_operand: int = 9) -> None:
        if max_operand < 1:
            raise TaskError(f"sums needs max_operand >= 1, got {max_operand}")
        super().__init__("sums", size, split, seed)
        self.max_operand = max_operand

    def _get(self, index: int) -> Conversation:
        rng = self._rng(index)
        a, b = rng.randint(0, self.max_operand), rng.randint(0, self.max_operand)
        return {
            "messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                         {"role": "assistant", "content": f"{a} + {b} = {a + b}. #### {a + b}"}],
            "answer": str(a + b),
        }

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        return grade_numeric(last_text(conversation), reply)
