"""What a task is: a random-access list of reading-order conversations that may name its grader.

A conversation is a dict ``{"messages": [{"role": ..., "content": ...}, ...], ...}`` in exactly the format
:meth:`revjax.tokenizer.Tokenizer.render_conversation` accepts; assistant content may be a list of parts
``{"type": "text" | "python" | "python_output", "text": str}``. Extra keys carry what a grader needs
(``letters``/``answer`` for multiple choice, ``entry_point``/``test`` for code).

:class:`Mixture` shuffles several tasks together by a seed (nanochat's rule: ``random.Random(seed).shuffle`` of the
flattened index list), :class:`Sequence` concatenates them; both refuse evaluation-only tasks when built for
training.
"""

from __future__ import annotations

import bisect
import copy
import random
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from revjax.errors import RevjaxError

Conversation = dict[str, Any]
EvalType = Literal["categorical", "generative"]


class TaskError(RevjaxError, ValueError):
    """A task could not be built or read: bad arguments, missing data, or a split that may not be trained on."""


def render_mc(question: str, letters: tuple[str, ...] | list[str], choices: list[str]) -> str:
    """nanochat's multiple-choice prompt: each choice followed by ``=LETTER`` (no space), then the instruction."""
    lines = "".join(f"- {choice}={letter}\n" for letter, choice in zip(letters, choices))
    return f"Multiple Choice question: {question}\n{lines}\nRespond only with the letter of the correct answer."


def check_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    """Return ``messages`` if they are an optional system message then user/assistant turns ending with the
    assistant, user and system content being strings; else raise :class:`TaskError` naming ``where``."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise TaskError(f"{where}: messages must be a list of {{'role', 'content'}} objects")
    turns = messages[1:] if messages and messages[0].get("role") == "system" else messages
    if len(turns) < 2 or len(turns) % 2:
        raise TaskError(f"{where}: a conversation needs user/assistant pairs, got {len(turns)} turn(s)")
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise TaskError(f"{where}: message {i} is from {message.get('role')!r} but should be from {expected!r}")
        content = message.get("content")
        if not isinstance(content, str) and not (expected == "assistant" and isinstance(content, list)):
            raise TaskError(f"{where}: message {i} content must be a string, got {type(content).__name__}")
    if turns is not messages and not isinstance(messages[0].get("content"), str):
        raise TaskError(f"{where}: the system message content must be a string")
    return messages


class Task:
    """Base class: subclasses set ``name`` and implement ``_size()`` and ``_get(index)``.

    Evaluated tasks set ``eval_type`` and override :meth:`evaluate`; ``eval_only`` marks data that must never be
    trained on (test splits, benchmark copies).
    """

    name: str = "task"
    eval_type: EvalType | None = None
    eval_only: bool = False

    def _size(self) -> int:
        raise NotImplementedError

    def _get(self, index: int) -> Conversation:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._size()

    def __getitem__(self, index: int | slice) -> Conversation | Task:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step < 1:
                raise TaskError(f"slices of {self.name} need a positive step, got {step}")
            return TaskSlice(self, start, max(start, stop), step)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"task indices must be integers or slices, not {type(index).__name__}")
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for {self.name} with {n} conversations")
        return self._get(i)

    def __iter__(self) -> Iterator[Conversation]:
        for i in range(len(self)):
            yield self._get(i)

    def slice(self, start: int = 0, stop: int | None = None, step: int = 1) -> Task:
        """A view of conversations ``start, start+step, ...`` below ``stop`` (capped at the task's length)."""
        return TaskSlice(self, start, stop, step)

    def evaluate(self, conversation: Conversation, reply: str) -> bool | float:
        """Grade ``reply`` (the assistant's reply text in reading order) against ``conversation``."""
        raise TaskError(f"task {self.name} has no grader; it is training data only")

    def reward(self, conversation: Conversation, reply: str) -> float:
        """RL reward: the grade as a float."""
        return float(self.evaluate(conversation, reply))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, len={len(self)})"


class ListTask(Task):
    """A task over an in-memory list of conversations (each access returns a deep copy)."""

    def __init__(self, conversations: list[Conversation], name: str = "list", **attrs: Any) -> None:
        self._rows = list(conversations)
        self.name = name
        for key, value in attrs.items():
            setattr(self, key, value)

    def _size(self) -> int:
        return len(self._rows)

    def _get(self, index: int) -> Conversation:
        return copy.deepcopy(self._rows[index])


TEST_SEED_OFFSET = 10_000_000  # generated test items are drawn from seeds past every train item's


class GeneratedTask(Task):
    """A task that draws item ``i`` from its own seeded generator: ``size`` items of split train or test (test items
    come from seeds ``TEST_SEED_OFFSET + i``; a nonzero ``seed`` mixes in as ``"seed:base"``); test is evaluation-only."""

    def __init__(self, kind: str, size: int, split: str, seed: int) -> None:
        if split not in ("train", "test") or size < 0:
            raise TaskError(f"{kind} needs split train/test and size >= 0, got {split!r} and {size}")
        self.size, self.split, self.seed = size, split, seed
        self.name = f"{kind}/{split}"
        self.eval_only = split == "test"

    def _size(self) -> int:
        return self.size

    def _rng(self, index: int) -> random.Random:
        base = index if self.split == "train" else TEST_SEED_OFFSET + index
        return random.Random(base if self.seed == 0 else f"{self.seed}:{base}")


class TaskSlice(Task):
    """A logical ``start:stop:step`` view of another task; grading is delegated to it."""

    def __init__(self, task: Task, start: int = 0, stop: int | None = None, step: int = 1) -> None:
        if start < 0 or step < 1 or (stop is not None and stop < start):
            raise TaskError(
                f"slice start={start}, stop={stop}, step={step} of {task.name} is invalid; "
                "use start >= 0, stop >= start (or none) and step >= 1"
            )
        self.task, self.start, self.stop, self.step = task, start, stop, step
        self.name = task.name
        self.eval_type = task.eval_type
        self.eval_only = task.eval_only

    def _size(self) -> int:
        n = len(self.task)
        stop = n if self.stop is None else min(self.stop, n)
        return max(0, -(-(stop - self.start) // self.step))

    def _get(self, index: int) -> Conversation:
        return self.task[self.start + index * self.step]

    def evaluate(self, conversation: Conversation, reply: str) -> bool | float:
        return self.task.evaluate(conversation, reply)

    def reward(self, conversation: Conversation, reply: str) -> float:
        return self.task.reward(conversation, reply)


def require_trainable(tasks: list[Task], what: str = "a training mixture") -> None:
    """Raise :class:`TaskError` if any task is evaluation-only."""
    held_out = sorted({t.name for t in tasks if t.eval_only})
    if held_out:
        raise TaskError(
            f"{', '.join(held_out)} is evaluation data and may not go into {what}; use a train split "
            "(or build the mixture with training=False for validation)"
        )


class _Composite(Task):
    """Several tasks behind one index; grading goes to the task a conversation came from."""

    def __init__(self, tasks: list[Task], name: str, training: bool) -> None:
        if not tasks:
            raise TaskError(f"{name} needs at least one task")
        if training:
            require_trainable(tasks, f"a training {name}")
        self.tasks = list(tasks)
        self.lengths = [len(t) for t in self.tasks]
        self._offsets = np.cumsum([0, *self.lengths]).tolist()
        self.name = name
        self.eval_only = any(t.eval_only for t in self.tasks)
        types = {t.eval_type for t in self.tasks}
        self.eval_type = types.pop() if len(types) == 1 else None

    def _size(self) -> int:
        return self._offsets[-1]

    def locate(self, flat: int) -> tuple[int, int]:
        """``(task number, index in that task)`` of position ``flat`` in the concatenation."""
        t = bisect.bisect_right(self._offsets, flat) - 1
        return t, flat - self._offsets[t]

    def _get_flat(self, flat: int) -> Conversation:
        t, i = self.locate(flat)
        conversation = self.tasks[t][i]
        conversation["route"] = [t, *conversation.get("route", [])]
        conversation.setdefault("task", self.tasks[t].name)
        return conversation

    def evaluate(self, conversation: Conversation, reply: str) -> bool | float:
        route = conversation.get("route")
        if not route:
            raise TaskError(f"the conversation has no 'route' saying which task of this {self.name} it came from")
        return self.tasks[route[0]].evaluate({**conversation, "route": route[1:]}, reply)


class Sequence(_Composite):
    """The tasks one after the other."""

    def __init__(self, tasks: list[Task], *, training: bool = True) -> None:
        super().__init__(tasks, "sequence", training)

    def _get(self, index: int) -> Conversation:
        return self._get_flat(index)


class Mixture(_Composite):
    """All conversations of ``tasks`` in one order fixed by ``seed`` alone (repeat a task to oversample it).

    The order is nanochat's: the flattened ``(task, index)`` list shuffled with ``random.Random(seed)``. Each
    conversation gets ``"task"`` (its task's name) and ``"route"`` (task numbers, outermost first) so
    :meth:`evaluate` can hand it to its grader.
    """

    def __init__(self, tasks: list[Task], seed: int = 42, *, training: bool = True) -> None:
        super().__init__(tasks, "mixture", training)
        self.seed = seed
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        self._order = np.asarray(order, dtype=np.int64)

    def _get(self, index: int) -> Conversation:
        return self._get_flat(int(self._order[index]))


class Repeat(Task):
    """``task`` ``times`` times in a row; keeps its name, evaluation marks and grader."""

    def __init__(self, task: Task, times: int) -> None:
        if times < 1:
            raise TaskError(f"repeat must be at least 1, got {times} for {task.name}")
        self.task, self.times = task, times
        self.name, self.eval_type, self.eval_only = task.name, task.eval_type, task.eval_only

    def _size(self) -> int:
        return len(self.task) * self.times

    def _get(self, index: int) -> Conversation:
        return self.task[index % len(self.task)]

    def evaluate(self, conversation: Conversation, reply: str) -> bool | float:
        return self.task.evaluate(conversation, reply)

    def reward(self, conversation: Conversation, reply: str) -> float:
        return self.task.reward(conversation, reply)
