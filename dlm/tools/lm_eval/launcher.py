"""lm-eval's own command line with the ``dlm`` model registered and dlm's tasks on the task path.

lm-eval 0.4 finds no models outside its package by itself: a model must be imported before its command line
runs (this is what Fast-dLLM's and dInfer's evaluation scripts do). The launcher imports
:mod:`dlm.tools.lm_eval.model`, adds the shipped ``tasks/`` directory to every task manager lm-eval builds
(next to any ``--include_path``; when every ``--tasks`` name is a shipped task, lm-eval's own task files are
not indexed), defaults ``--model`` to ``dlm``, then runs lm-eval's CLI on the arguments.
It runs under ``torchrun`` as well: ``torchrun --nproc-per-node 2 -m dlm lm-eval ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from dlm.tools.lm_eval import require_lm_eval, tasks_dir

SUBCOMMANDS_WITHOUT_MODEL = {"ls", "validate", "-h", "--help"}
_SETTINGS = {"include_defaults": True}
_KNOWN_TASKS = "`dlm lm-eval ls tasks` lists the known tasks (dlm's own offline tasks include dlm_demo and humaneval_local)"


def shipped_task_names() -> set[str]:
    """Tasks, groups and tags defined in dlm's ``tasks/`` directory."""
    from lm_eval.tasks import TaskManager

    return set(TaskManager(include_path=str(tasks_dir()), include_defaults=False).all_tasks)


def requested_tasks(argv: Sequence[str]) -> list[str]:
    """The names given to ``--tasks`` in ``argv`` (empty when none)."""
    value = option(argv, "--tasks")
    return [t.strip() for t in value.split(",") if t.strip()] if value else []


def option(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag VALUE`` or ``--flag=VALUE``), or None when absent."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def check_arguments(argv: Sequence[str]) -> None:
    """What dlm can check before lm-eval starts (and before a model loads): a ``--tasks`` that names no task
    (``--tasks ""`` would otherwise be an lm-eval traceback), an ``--output_path`` that cannot be written."""
    from dlm.commands import check_output
    from dlm.errors import InputError

    if argv and argv[0] in SUBCOMMANDS_WITHOUT_MODEL:
        return
    tasks = option(argv, "--tasks")
    if tasks is not None and not requested_tasks(argv):
        raise InputError(f"--tasks {tasks!r} names no task; give comma-separated task names (`dlm lm-eval ls tasks` "
                         "lists them; dlm_demo runs offline)")
    out = option(argv, "--output_path") or option(argv, "-o")
    if out:
        check_output(out, "--output_path", directory=not Path(out).suffix)


def add_shipped_tasks(*, include_defaults: bool = True) -> None:
    """Make every lm-eval ``TaskManager`` also index dlm's ``tasks/`` directory.

    ``include_defaults=False`` skips indexing lm-eval's own few thousand task files (about 10 s on a small
    machine), which only tasks defined elsewhere need.
    """
    from lm_eval.tasks import TaskManager

    _SETTINGS["include_defaults"] = include_defaults
    init = TaskManager.__init__
    if getattr(init, "_dlm_tasks", False):
        return

    def __init__(self, *args, include_path=None, **kwargs):
        if not _SETTINGS["include_defaults"]:
            kwargs["include_defaults"] = False
        if include_path is None:
            paths: list = []
        elif isinstance(include_path, (list, tuple)):
            paths = list(include_path)
        else:
            paths = [include_path]
        if not any(Path(p).resolve() == tasks_dir().resolve() for p in paths):
            paths.insert(0, str(tasks_dir()))  # user paths come later, so their tasks take precedence
        init(self, *args, include_path=paths, **kwargs)

    __init__._dlm_tasks = True
    TaskManager.__init__ = __init__


def unmentioned_tasks(tasks: Sequence[str], include_paths: Sequence[str] = ()) -> list[str]:
    """The names of ``tasks`` that no task file mentions: certainly unknown to lm-eval.

    lm-eval declares every task, group and tag by name in a YAML file (its own ``tasks/``, dlm's, and any
    ``--include_path``), so a name found in none of them cannot resolve. Reading the files as bytes takes about a
    second where building lm-eval's task index takes 10–50 s, so an unknown name is refused before the index is
    built. Names that are paths, or hold glob characters, are left to lm-eval.
    """
    import lm_eval

    wanted = [t for t in tasks if not Path(t).exists() and not set(t) & set("*?[")]
    if not wanted:
        return []
    roots = [Path(lm_eval.__file__).parent / "tasks", tasks_dir(), *map(Path, include_paths)]
    missing = {t: t.encode() for t in wanted}
    for root in roots:
        files = [root] if root.is_file() else root.rglob("*.y*ml") if root.is_dir() else []
        for f in files:
            text = f.read_bytes()
            for name in [n for n, b in missing.items() if b in text]:
                del missing[name]
            if not missing:
                return []
    return [t for t in wanted if t in missing]


def with_default_model(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--model dlm`` added when an evaluation names no model."""
    argv = list(argv)
    if not argv or argv[0] in SUBCOMMANDS_WITHOUT_MODEL:
        return argv
    if any(a == "--model" or a.startswith("--model=") for a in argv):
        return argv
    return [*argv, "--model", "dlm"]


def main(argv: Sequence[str]) -> int:
    """Run lm-eval's command line on ``argv`` (the arguments after ``dlm lm-eval``)."""
    require_lm_eval()
    import dlm.tools.lm_eval.model  # noqa: F401  (registers "dlm")
    from lm_eval.__main__ import cli_evaluate

    from dlm.errors import InputError

    check_arguments(argv)
    tasks = requested_tasks(argv)
    include = option(argv, "--include_path")
    unknown = unmentioned_tasks(tasks, include.split(",") if include else ())
    if unknown:
        raise InputError(f"--tasks: Tasks not found: {', '.join(unknown)}; {_KNOWN_TASKS}")
    add_shipped_tasks(include_defaults=not tasks or not set(tasks) <= shipped_task_names())
    saved = sys.argv
    sys.argv = ["lm-eval", *with_default_model(argv)]
    try:
        cli_evaluate()
    except ValueError as err:  # lm-eval reports unknown tasks as a bare ValueError
        message = str(err)
        if message.startswith(("Tasks not found", "No tasks specified")):
            raise InputError(f"--tasks: {message.rstrip('.')}; {_KNOWN_TASKS}") from None
        raise
    finally:
        sys.argv = saved
    return 0
