"""Validate a pipeline YAML file without loading the model, and print it with every default filled in.

Without a file, prints the built-in default pipeline (``dlm/configs/default.yaml``, the embedded demo model)
fully expanded, so ``dlm validate > mine.yaml`` starts a config from it. The output is YAML either way (the
status line is a comment), so it validates again.
"""

from __future__ import annotations

import argparse

import yaml

from dlm import compat
from dlm.config import PipelineConfig, default_config, load_config
from dlm.errors import CompositionError

HELP = "check a pipeline YAML file (default: the built-in pipeline) and print it with defaults filled in"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="pipeline YAML file (omitted: print the built-in default pipeline)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set decoding.threshold=0.8 (repeatable)")


def check_composition(config: PipelineConfig) -> None:
    """Refuse the iteration, decoding and cache sections that cannot work together (their declarations,
    :mod:`dlm.compat`); the model is not loaded, so its checks wait until the pipeline is built."""
    sections = {kind: getattr(config, kind) for kind in compat.KINDS}
    found = compat.problems({k: s.cls for k, s in sections.items()}, {k: s.name for k, s in sections.items()})
    if found:
        raise CompositionError("\n".join(f"{config.source}: {problem}" for problem in found))


def run(args: argparse.Namespace) -> int:
    config = default_config(args.overrides) if args.file is None else load_config(args.file, args.overrides)
    check_composition(config)
    if args.file is None:
        print("# the built-in default pipeline (dlm/configs/default.yaml), every default filled in")
    else:
        print(f"# {args.file}: valid")
    print(yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip())
    return 0
