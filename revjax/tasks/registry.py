"""Task names, and mixtures named in configs.

``@register("gsm8k")`` names a task factory; ``get_task("gsm8k", split="test")`` builds it (names match ignoring
case, ``-`` and ``_``, so nanochat's ``GSM8K`` / ``ARC-Easy`` / ``SpellingBee`` work too). A config names a mixture as
a list whose entries are a task name or ``{"task": name, "split": ..., "repeat": N, "limit": N, "start": ...,
"stop": ..., "step": ..., **kwargs}``; :func:`build_mixture` turns it into a :class:`Mixture`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from revjax.tasks.base import Mixture, Repeat, Sequence, Task, TaskError

_REGISTRY: dict[str, tuple[str, Callable[..., Task]]] = {}
_VIEW_KEYS = ("repeat", "limit", "start", "stop", "step")


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: make a task class or factory available as ``name``."""

    def wrap(factory: Callable[..., Task]) -> Callable[..., Task]:
        key = _key(name)
        if key in _REGISTRY and _REGISTRY[key][1] is not factory:
            raise TaskError(f"task name {name!r} is already registered for {_REGISTRY[key][0]}")
        _REGISTRY[key] = (name, factory)
        return factory

    return wrap


def task_names() -> list[str]:
    """The registered task names."""
    return sorted(name for name, _ in _REGISTRY.values())


def get_task(name: str, **kwargs: Any) -> Task:
    """Build task ``name`` with ``kwargs``; ``cache_dir`` is passed on only to tasks that read data."""
    if _key(name) not in _REGISTRY:
        raise TaskError(f"unknown task {name!r}; the tasks are {', '.join(task_names())}")
    canonical, factory = _REGISTRY[_key(name)]
    params = inspect.signature(factory).parameters
    if "cache_dir" not in params:
        kwargs.pop("cache_dir", None)
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        accepted = [p for p in params if p not in ("self", "cache_dir")]
        raise TaskError(
            f"task {canonical} does not take {', '.join(unknown)}; it takes {', '.join(accepted) or 'no options'}"
            f" plus {', '.join(_VIEW_KEYS)}"
        )
    return factory(**kwargs)


def build_task(entry: str | Mapping[str, Any], cache_dir: str | os.PathLike[str] | None = None) -> Task:
    """One mixture entry: a name, or a mapping with ``task`` plus options and the view keys."""
    if isinstance(entry, str):
        entry = {"task": entry}
    if not isinstance(entry, Mapping) or "task" not in entry:
        raise TaskError(f"mixture entry {entry!r} must be a task name or a mapping with a 'task' key")
    options = {k: v for k, v in entry.items() if k != "task" and k not in _VIEW_KEYS}
    task = get_task(entry["task"], cache_dir=cache_dir, **options)
    start, stop, step = entry.get("start", 0), entry.get("stop"), entry.get("step", 1)
    if "limit" in entry:
        limit = int(entry["limit"])
        stop = start + limit * step if stop is None else min(stop, start + limit * step)
    if (start, stop, step) != (0, None, 1):
        task = task.slice(int(start), None if stop is None else int(stop), int(step))
    times = int(entry.get("repeat", 1))
    return Repeat(task, times) if times != 1 else task


def build_mixture(
    spec: list[str | Mapping[str, Any]],
    seed: int = 42,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    training: bool = True,
    shuffle: bool = True,
) -> Mixture | Sequence:
    """The tasks of ``spec`` shuffled together by ``seed`` (or in order with ``shuffle=False``).

    With ``training`` (the default) evaluation-only tasks are refused; validation mixtures pass ``training=False``.
    """
    if isinstance(spec, (str, Mapping)) or not spec:
        raise TaskError(f"a mixture is a non-empty list of task entries, got {spec!r}")
    tasks = [build_task(entry, cache_dir) for entry in spec]
    if shuffle:
        return Mixture(tasks, seed, training=training)
    return Sequence(tasks, training=training)
