"""Validate a pipeline YAML file without loading the model, and print it with every default filled in.

Without a file, prints the built-in default pipeline (``dlm/configs/default.yaml``, the embedded demo model)
fully expanded, so ``dlm validate > mine.yaml`` starts a config from it. The output is YAML either way (the
status line is a comment), so it validates again.

A valid config may still be unable to run on this machine: its checkpoint is missing (a directory that does
not exist, a Hugging Face id not in the local cache), it asks for a GPU this machine lacks, or its generation
is longer than the model's context. Those are checked too, cheaply (config.json only, no weights): each is a
``dlm validate: cannot run here: ...`` line on stderr and exit code 3, so a script can tell "invalid" (2)
from "valid, but not here" (3).
"""

from __future__ import annotations

import argparse
import sys

import yaml

from dlm import compat
from dlm.config import PipelineConfig, default_config, load_config
from dlm.errors import CompositionError

HELP = "check a pipeline YAML file (default: the built-in pipeline) and print it with defaults filled in"
CANNOT_RUN_HERE = 3


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


def context_of(config: PipelineConfig) -> int:
    """The model's context in tokens from its config.json (no weights read); a CheckpointError if unusable."""
    from pathlib import Path

    from dlm.models.checkpoint import read_config
    from dlm.models.hub import resolve_checkpoint
    from dlm.models.llada import LLaDAModel, embedded_path, llada_spec
    from dlm.models.qwen2 import Qwen2Family, qwen2_spec

    model = config.model.config
    path = getattr(model, "path", None)
    if path is None:
        directory = embedded_path(getattr(model, "embedded", "demo"))
    else:
        directory = resolve_checkpoint(Path(path))
    cfg = read_config(directory)
    if issubclass(config.model.cls, LLaDAModel):
        return llada_spec(cfg, directory).max_length
    if issubclass(config.model.cls, Qwen2Family):
        return qwen2_spec(cfg, directory).max_length
    return 0  # a plugin's adapter: its context is known only once it loads


def cannot_run_here(config: PipelineConfig) -> list[str]:
    """Why this valid config cannot run on this machine (empty: nothing found)."""
    import torch

    from dlm.errors import DlmError

    problems = []
    device = torch.device(config.run.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            problems.append(f"device {config.run.device!r}: this machine has no CUDA GPU; use --set device=cpu")
        elif device.index is not None and device.index >= torch.cuda.device_count():
            problems.append(f"device {config.run.device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    try:
        context = context_of(config)
    except DlmError as err:
        problems.append(str(err) if str(err).startswith("model.path") else f"model.path: {err}")
        return problems
    gen = getattr(config.iteration.config, "gen_length", None)
    if context and isinstance(gen, int) and gen > context:  # equal: only unconditional generation fits (MDLM's use)
        problems.append(
            f"iteration.gen_length {gen} exceeds the model's context of {context} tokens; set iteration.gen_length "
            f"below {context} (minus the prompt length; {context} for unconditional generation, with no prompt), or "
            "model.path to a model with a longer context"
        )
    return problems


def run(args: argparse.Namespace) -> int:
    config = default_config(args.overrides) if args.file is None else load_config(args.file, args.overrides)
    check_composition(config)
    if args.file is None:
        status = "# the built-in default pipeline (dlm/configs/default.yaml), every default filled in"
    else:
        status = f"# {args.file}: valid"
    problems = cannot_run_here(config)
    if problems:
        status += ", but cannot run on this machine (see stderr)"
    print(status)
    print(yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip())
    for line in problems:
        print(f"dlm validate: cannot run here: {line}", file=sys.stderr)
    return CANNOT_RUN_HERE if problems else 0
