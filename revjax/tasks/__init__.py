"""Tasks are data: each yields reading-order conversations and, when it is evaluated, names its grader.

``get_task(name, **options)`` builds a registered task, ``build_mixture(spec, seed, cache_dir)`` a config's mixture;
see :mod:`revjax.tasks.base` for the conversation format and :mod:`revjax.tasks.graders` for the graders.
"""

from revjax.tasks.base import (
    Conversation,
    ListTask,
    Mixture,
    Repeat,
    Sequence,
    Task,
    TaskError,
    TaskSlice,
    check_messages,
    render_mc,
    require_trainable,
)
from revjax.tasks.registry import build_mixture, build_task, get_task, register, task_names

# Importing the task modules registers their names.
from revjax.tasks import arithmetic, chat, exams, facts, gsm8k, humaneval, identity, spelling  # noqa: E402,F401  isort: skip

__all__ = [
    "Conversation",
    "ListTask",
    "Mixture",
    "Repeat",
    "Sequence",
    "Task",
    "TaskError",
    "TaskSlice",
    "build_mixture",
    "build_task",
    "check_messages",
    "get_task",
    "register",
    "render_mc",
    "require_trainable",
    "task_names",
]
