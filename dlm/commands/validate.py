"""Validate a pipeline YAML file without loading the model, and print the resolved configuration."""

from __future__ import annotations

import argparse

import yaml

from dlm.config import load_config

HELP = "check a pipeline YAML file and print it with defaults filled in"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="pipeline YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.overrides)
    print(f"{args.file}: valid")
    print(yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip())
    return 0
