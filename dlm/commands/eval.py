"""Evaluate decoding policies side by side on the demo tasks: accuracy, NFE, tokens per forward, time.

Without config files, compares built-in policies on the embedded demo model: one token per step
(low_confidence), threshold 0.9 (Fast-dLLM, when installed) and a fixed 4 tokens per step. Writes
results.json, results.md and accuracy_vs_nfe.png to --out. Under ``torchrun --nproc-per-node N`` the
prompts are shared out between the N processes and the first one writes the merged results.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

HELP = "compare pipeline configs on held-out prompts of the demo tasks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="*", metavar="CONFIG", help="pipeline YAML files (default: built-in policies)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    p.add_argument("-n", "--n", type=int, default=1000, help="held-out prompts per task (default 1000: ±0.5 points near 97 %%)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out prompts")
    p.add_argument("--batch-size", type=int, default=100, help="prompts per generate call")
    p.add_argument("--out", type=Path, default=Path("eval-results"), help="directory for JSON, markdown and PNG")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting in every config, e.g. --set dtype=float64 (repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dlm.commands import check_output
    from dlm.errors import InputError
    from dlm.tools.evaluation import builtin_policies, evaluate, load_policies, markdown_table, write_report
    from dlm.tools.tasks import TASKS

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(TASKS)
    if not tasks:
        raise InputError(f"--tasks names no task; known tasks: {', '.join(TASKS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise InputError(f"unknown task {unknown[0]!r}; known tasks: {', '.join(TASKS)}")
    if args.n <= 0 or args.batch_size <= 0:
        raise InputError("--n and --batch-size must be positive")
    check_output(args.out, "--out", directory=True)
    policies = load_policies(args.configs, args.overrides) if args.configs else builtin_policies(args.overrides)
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise InputError(f"two configs have the same file name ({', '.join(names)}); rename one")
    import torch

    from dlm.distributed import init, world

    w = world(policies[0].config.run.tensor_parallel)
    if w.size > 1:
        init(torch.device(policies[0].config.run.device))
    results = evaluate(policies, tasks, n=args.n, seed=args.seed, batch_size=args.batch_size,
                       progress=not args.quiet and w.main, world=w)
    if not w.main:
        return 0  # the first process writes the merged results

    meta = {
        "command": "dlm eval " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["eval"] else None,
        "configs": {p.name: p.config.to_dict() for p in policies},
        "n": args.n, "seed": args.seed, "tasks": tasks,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "processes": w.size, "data_parallel": w.dp_size,
    }
    paths = write_report(results, args.out, meta=meta)
    print(markdown_table(results))
    print(f"\nwrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0
