"""Evaluate decoding policies side by side on the synthetic tasks: accuracy, NFE, tokens per forward, time,
speed-up over the first policy.

Without config files, compares built-in policies: on the demo tasks (default), the embedded demo model with
one token per step (low_confidence), threshold 0.9 (Fast-dLLM, when installed) and a fixed 4 tokens per
step; with ``--tasks long``, the embedded long model under every cache {none, prefix, dual} x decoding {one
token per step, threshold 0.9} (docs/long.md); with ``--tasks fewshot``, the embedded few-shot model under
the same six plus dual + factor, also printed in Fast-dLLM's Table 1 layout (docs/fewshot.md). Writes
results.json, results.md, accuracy_vs_nfe.png and accuracy_vs_speedup.png to --out. Under ``torchrun
--nproc-per-node N`` the prompts are shared out between the N processes and the first one writes the merged
results.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

MAX_PROMPTS = 1_000_000  # held-out prompts per task: 1000 gives +-0.5 points; the prompts are built in memory
MAX_BATCH = 65_536  # prompts per generate call; the canvas is batch x (prompt + answer) ids

HELP = "compare pipeline configs on held-out prompts of the synthetic tasks (demo, long or fewshot)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="*", metavar="CONFIG", help="pipeline YAML files (default: built-in policies)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated task names or groups: demo (add,rev,sort,pair,perm; the default), long "
                   "(addw,shift: 64-71-token answers for the long model) or fewshot (runsum: worked examples, then "
                   "a 128-token answer, for the few-shot model)")
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
    from dlm.commands import check_at_most, check_output, check_positive, check_seed
    from dlm.errors import InputError
    from dlm.tools.evaluation import (
        builtin_policies, evaluate, fewshot_policies, load_policies, long_policies, markdown_table, table1,
        write_report,
    )
    from dlm.tools.tasks import ALL_TASKS, GROUPS, select_tasks

    names = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks is not None else ["demo"]
    if not names:
        raise InputError(f"--tasks names no task; known tasks: {', '.join(ALL_TASKS)}; groups: {', '.join(GROUPS)}")
    unknown = [t for t in names if t not in ALL_TASKS and t not in GROUPS]
    if unknown:
        raise InputError(
            f"unknown task {unknown[0]!r}; known tasks: {', '.join(ALL_TASKS)}; groups: {', '.join(GROUPS)}"
        )
    tasks = select_tasks(names)
    check_positive(**{"-n": args.n, "--batch-size": args.batch_size})
    check_at_most(**{"-n": (args.n, MAX_PROMPTS), "--batch-size": (args.batch_size, MAX_BATCH)})
    check_seed(**{"--seed": args.seed})
    check_output(args.out, "--out", directory=True)
    groups = {next(g for g, members in GROUPS.items() if t in members) for t in tasks}
    if args.configs:
        policies = load_policies(args.configs, args.overrides)
    elif len(groups) > 1:
        raise InputError(
            "the built-in policies run one embedded model: the demo model (demo tasks), the long model (long "
            f"tasks) or the few-shot model (fewshot tasks), not several; evaluate the groups separately or pass "
            f"configs (got tasks {', '.join(tasks)})"
        )
    else:
        grid = {"demo": builtin_policies, "long": long_policies, "fewshot": fewshot_policies}
        policies = grid[groups.pop()](args.overrides)
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise InputError(f"two configs have the same file name ({', '.join(names)}); rename one")
    import torch

    from dlm.distributed import init, world
    from dlm.provenance import provenance

    run_settings = policies[0].config.run
    w = world(run_settings.tensor_parallel, run_settings.expert_parallel)
    if w.size > 1:
        init(torch.device(run_settings.device))
    results = evaluate(policies, tasks, n=args.n, seed=args.seed, batch_size=args.batch_size,
                       progress=not args.quiet and w.main, world=w)
    if not w.main:
        return 0  # the first process writes the merged results

    meta = {
        "command": "dlm eval " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["eval"] else None,
        "configs": {p.name: p.config.to_dict() for p in policies},
        "n": args.n, "seed": args.seed, "tasks": tasks,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "provenance": provenance(device=policies[0].config.run.device,
                                 dtype=", ".join(sorted({p.config.run.dtype for p in policies}))),
        "torch": torch.__version__,
        "processes": w.size, "data_parallel": w.dp_size,
    }
    paths = write_report(results, args.out, meta=meta)
    print(markdown_table(results))
    if all(t in GROUPS["fewshot"] for t in tasks):
        print("\n" + table1(results))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0
