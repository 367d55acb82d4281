"""Subcommands of the ``dlm`` console script (one module each, listed in :data:`dlm.cli.COMMANDS`)."""

from __future__ import annotations

import argparse

from dlm.config import default_config_path  # noqa: F401  (re-exported for the subcommands)

def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--config", "-c", required=required, help="pipeline YAML file (default: the embedded demo pipeline)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting, e.g. --set decoding.threshold=0.8 (repeatable)",
    )


def check_output(path, flag: str, *, directory: bool) -> None:
    """Refuse an output path that cannot be written, before any work is done (not after an hour of it).

    ``directory``: the path is a directory to create or fill (else a file to create or overwrite).
    """
    import os
    from pathlib import Path

    from dlm.errors import InputError

    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is an existing file; give a directory (it is created if missing)")
    if not directory and path.is_dir():
        raise InputError(f"{flag} {path} is a directory; give a file name")
    if not directory and path.exists() and not path.is_file():
        raise InputError(f"{flag} {path} is not a regular file (a device, pipe or socket); give a file name")
    parent = path if directory and path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: {parent} is a file, so nothing can be created under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: directory {parent} is not writable")
    # os.access says yes for root on a read-only file system, and knows nothing of quotas: try a real write
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".dlm-write-check-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"{flag} {path}: cannot write in {parent} ({err.strerror or err})") from None
    if not directory and path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{flag} {path} exists and is not writable")


def check_positive(**values) -> None:
    """Refuse a command-line number that is not positive and finite: ``check_positive(**{"--steps": 0})``."""
    from dlm.errors import InputError

    for flag, value in values.items():
        if value is not None and not (value > 0 and value != float("inf")):
            raise InputError(f"{flag} must be a positive finite number, got {value}")


def check_seed(**values) -> None:
    """Refuse a seed outside ``[0, MAX_SEED]``, the one seed rule of configs, the server and every command."""
    from dlm.config import MAX_SEED
    from dlm.errors import InputError

    for flag, value in values.items():
        if value is not None and not 0 <= value <= MAX_SEED:
            raise InputError(f"{flag} must be between 0 and {MAX_SEED} (2**63 - 1), got {value}")


def check_at_most(**values) -> None:
    """Refuse a count above its bound before anything is allocated or iterated:
    ``check_at_most(**{"-n": (n, MAX_PROMPTS)})``."""
    from dlm.errors import InputError

    for flag, (value, bound) in values.items():
        if value is not None and value > bound:
            raise InputError(f"{flag} {value} is beyond dlm's bound of {bound}; give at most {bound}")
