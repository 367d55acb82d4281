"""Subcommands of the ``dlm`` console script (one module each, listed in :data:`dlm.cli.COMMANDS`)."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

DEFAULT_CONFIG = "default.yaml"


def default_config_path() -> Path:
    """The pipeline config used when ``--config`` is not given: the embedded demo model."""
    return Path(str(resources.files("dlm") / "configs" / DEFAULT_CONFIG))


def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--config", "-c", required=required, help="pipeline YAML file (default: the embedded demo pipeline)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting, e.g. --set decoding.threshold=0.8 (repeatable)",
    )
