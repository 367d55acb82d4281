"""Generate text (or token ids) for one or more prompts with a pipeline.

With ``tensor_parallel: T`` and/or ``expert_parallel: N`` launch it as ``torchrun --nproc-per-node T*N $(which dlm)
generate ...``: the processes share the model's heads and MLP (T) and its routed experts (N); the first prints.
"""

from __future__ import annotations

import argparse
import json
import sys

from dlm.commands import add_config_arguments, default_config_path

HELP = "generate from prompts with a pipeline config"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt text (several: one batch)")
    p.add_argument("--json", action="store_true", help="print text, token ids and NFE per prompt as JSON")
    p.add_argument("--show", action="store_true",
                   help="show the canvas being denoised, step by step (on stderr when --json is given)")


def run(args: argparse.Namespace) -> int:
    from dlm.distributed import world
    from dlm.pipeline import Pipeline
    from dlm.tools.show import CanvasPrinter

    pipeline = Pipeline.from_yaml(args.config or default_config_path(), overrides=args.overrides)
    main = world(pipeline.config.run.tensor_parallel, pipeline.config.run.expert_parallel).main
    # with --json, stdout is one JSON document: the canvas goes to stderr so `dlm generate --json --show ... |
    # jq` still parses
    trace = CanvasPrinter(pipeline, sys.stderr if args.json else sys.stdout) if args.show and main else None
    out = pipeline.generate(args.prompts, trace=trace)
    if not main:
        return 0  # under torchrun every process generates the same tokens; the first one prints them
    if args.json:
        rows = [
            {
                "prompt": prompt,
                "text": None if out.texts is None else out.texts[i],
                "token_ids": out.generated[i].tolist(),
                "nfe": out.nfe[i],
            }
            for i, prompt in enumerate(args.prompts)
        ]
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
    else:
        for i, prompt in enumerate(args.prompts):
            text = out.texts[i] if out.texts is not None else " ".join(map(str, out.generated[i].tolist()))
            print(text if len(args.prompts) == 1 else f"[{i}] {prompt!r} -> {text!r}  (NFE {out.nfe[i]})")
    return 0
