"""Synthetic tasks of the demo model: seeded generators with exact scorers (see :mod:`dlm.tools.tasks.base`).

Deterministic tasks (one valid answer): ``add``, ``rev``, ``sort``. Many-answers tasks, where parallel
commits can break consistency: ``pair``, ``perm``. These five are the ``demo`` group (:data:`TASKS`, 8-token
answers). The ``long`` group (:data:`LONG_TASKS`: ``addw``, ``shift``, 64-71-token answers over five blocks)
is the testbed of the caches, see :mod:`dlm.tools.tasks.long`. The ``fewshot`` group (:data:`FEWSHOT_TASKS`:
``runsum``, worked examples then a question, 290-500 tokens in all, 128-token answers over four blocks of 32)
is the testbed where caches matter under parallel decoding, see :mod:`dlm.tools.tasks.fewshot`.
"""

from __future__ import annotations

from typing import Iterable

from dlm.tools.tasks.arithmetic import Addition, PairSum
from dlm.tools.tasks.base import ANSWER_LENGTH, MAX_PROMPT_LENGTH, Example, Task, held_out
from dlm.tools.tasks.fewshot import FEWSHOT_ANSWER_LENGTH, FEWSHOT_PROMPT_LENGTH, RunningSum
from dlm.tools.tasks.long import LONG_ANSWER_LENGTH, LONG_PROMPT_LENGTH, LongAddition, ShiftCopy
from dlm.tools.tasks.strings import Permutation, Reverse, Sort

TASKS: dict[str, Task] = {t.name: t for t in (Addition(), Reverse(), Sort(), PairSum(), Permutation())}
LONG_TASKS: dict[str, Task] = {t.name: t for t in (LongAddition(), ShiftCopy())}
FEWSHOT_TASKS: dict[str, Task] = {t.name: t for t in (RunningSum(),)}
ALL_TASKS: dict[str, Task] = {**TASKS, **LONG_TASKS, **FEWSHOT_TASKS}
GROUPS: dict[str, tuple[str, ...]] = {"demo": tuple(TASKS), "long": tuple(LONG_TASKS), "fewshot": tuple(FEWSHOT_TASKS)}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name raises a ``KeyError`` listing the known ones."""
    try:
        return ALL_TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(ALL_TASKS)}") from None


def select_tasks(names: Iterable[str]) -> list[str]:
    """Task names with groups expanded (``["long"]`` -> ``["addw", "shift"]``), duplicates dropped, order
    kept; an unknown name raises a ``KeyError`` listing the groups and tasks."""
    chosen: list[str] = []
    for name in names:
        if name in GROUPS:
            chosen.extend(GROUPS[name])
        elif name in ALL_TASKS:
            chosen.append(name)
        else:
            raise KeyError(
                f"unknown task {name!r}; groups: {', '.join(GROUPS)}; tasks: {', '.join(ALL_TASKS)}"
            )
    return list(dict.fromkeys(chosen))


def task_for_prompt(prompt: str) -> Task | None:
    """The task whose prompt format ``prompt`` has (e.g. ``pair:57=`` -> pair-sum), or None."""
    for prefix, name in (("pair:", "pair"), ("perm:", "perm"), ("rev:", "rev"), ("sort:", "sort")):
        if prompt.startswith(prefix):
            return TASKS[name]
    return TASKS["add"] if "+" in prompt else None


__all__ = [
    "ALL_TASKS", "ANSWER_LENGTH", "FEWSHOT_ANSWER_LENGTH", "FEWSHOT_PROMPT_LENGTH", "FEWSHOT_TASKS", "GROUPS", "LONG_ANSWER_LENGTH", "LONG_PROMPT_LENGTH", "LONG_TASKS",
    "MAX_PROMPT_LENGTH", "TASKS", "Example", "Task", "get_task", "held_out", "select_tasks", "task_for_prompt",
]
