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
