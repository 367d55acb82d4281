"""Synthetic tasks of the demo model: seeded generators with exact scorers (see :mod:`dlm.tools.tasks.base`).

Deterministic tasks (one valid answer): ``add``, ``rev``, ``sort``. Many-answers tasks, where parallel
commits can break consistency: ``pair``, ``perm``.
"""

from __future__ import annotations

from dlm.tools.tasks.arithmetic import Addition, PairSum
from dlm.tools.tasks.base import ANSWER_LENGTH, MAX_PROMPT_LENGTH, Example, Task, held_out
from dlm.tools.tasks.strings import Permutation, Reverse, Sort

TASKS: dict[str, Task] = {t.name: t for t in (Addition(), Reverse(), Sort(), PairSum(), Permutation())}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name raises a ``KeyError`` listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def task_for_prompt(prompt: str) -> Task | None:
    """The task whose prompt format ``prompt`` has (e.g. ``pair:57=`` -> pair-sum), or None."""
    for prefix, name in (("pair:", "pair"), ("perm:", "perm"), ("rev:", "rev"), ("sort:", "sort")):
        if prompt.startswith(prefix):
            return TASKS[name]
    return TASKS["add"] if "+" in prompt else None


__all__ = [
    "ANSWER_LENGTH", "MAX_PROMPT_LENGTH", "TASKS", "Example", "Task", "get_task", "held_out", "task_for_prompt",
]
