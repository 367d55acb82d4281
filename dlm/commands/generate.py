"""Generate text (or token ids) for one or more prompts with a pipeline, or ``--unconditional -n N`` samples with no
prompt (MDLM, DiDi-Instruct: the whole canvas generated).

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
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text (several: one batch)")
    p.add_argument("--unconditional", action="store_true",
                   help="generate with no prompt (the whole canvas, iteration.gen_length tokens), -n samples")
    p.add_argument("-n", type=int, default=None, metavar="N", help="with --unconditional: the number of samples "
                   "(default 1)")
    p.add_argument("--json", action="store_true", help="print text, token ids and NFE per prompt as JSON")
    p.add_argument("--show", action="store_true",
                   help="show the canvas being denoised, step by step (on stderr when --json is given)")


def _inputs(args: argparse.Namespace) -> dict:
    """``generate``'s keyword for the prompts, or for ``--unconditional -n N``; bad combinations refused."""
    from dlm.errors import InputError

    if args.unconditional:
        if args.prompts:
            raise InputError(f"--unconditional generates with no prompt, but {len(args.prompts)} prompt(s) were given; "
                             "drop them or drop --unconditional")
        n = 1 if args.n is None else args.n
        if n < 1:
            raise InputError(f"-n {n}: the number of unconditional samples must be at least 1")
        return {"n": n}
    if args.n is not None:
        raise InputError("-n counts unconditional samples; add --unconditional (prompts make one sample each)")
    if not args.prompts:
        raise InputError("give at least one PROMPT, or --unconditional -n N for samples with no prompt")
    return {"prompts": args.prompts}


def run(args: argparse.Namespace) -> int:
    from dlm.distributed import world
    from dlm.pipeline import Pipeline
    from dlm.tools.show import CanvasPrinter

    inputs = _inputs(args)  # refused before the model loads
    pipeline = Pipeline.from_yaml(args.config or default_config_path(), overrides=args.overrides)
    main = world(pipeline.config.run.tensor_parallel, pipeline.config.run.expert_parallel).main
    # with --json, stdout is one JSON document: the canvas goes to stderr so `dlm generate --json --show ... |
    # jq` still parses
    trace = CanvasPrinter(pipeline, sys.stderr if args.json else sys.stdout) if args.show and main else None
    out = pipeline.generate(**inputs, trace=trace)
    if not main:
        return 0  # under torchrun every process generates the same tokens; the first one prints them
    prompts = args.prompts or [""] * len(out.generated)  # unconditional: an empty prompt per sample
    if args.json:
        rows = [
            {
                "prompt": prompt,
                "text": None if out.texts is None else out.texts[i],
                "token_ids": out.generated[i].tolist(),
                "nfe": out.nfe[i],
            }
            for i, prompt in enumerate(prompts)
        ]
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
    else:
        for i, prompt in enumerate(prompts):
            text = out.texts[i] if out.texts is not None else " ".join(map(str, out.generated[i].tolist()))
            if len(prompts) == 1:
                print(text)
            else:
                print(f"[{i}] {text!r}  (NFE {out.nfe[i]})" if args.unconditional
                      else f"[{i}] {prompt!r} -> {text!r}  (NFE {out.nfe[i]})")
    return 0
