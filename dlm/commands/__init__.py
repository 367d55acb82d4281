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
    parent = path if directory and path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: {parent} is a file, so nothing can be created under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: directory {parent} is not writable")


def check_positive(**values) -> None:
    """Refuse a command-line number that is not positive and finite: ``check_positive(**{"--steps": 0})``."""
    from dlm.errors import InputError

    for flag, value in values.items():
        if value is not None and not (value > 0 and value != float("inf")):
            raise InputError(f"{flag} must be a positive finite number, got {value}")
