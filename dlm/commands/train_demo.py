"""Train a tiny masked-diffusion model on a group of synthetic tasks and save it as a LLaDA checkpoint.

The objective is LLaDA's SFT loss (Nie et al., 2025): the prompt stays clean, answer tokens (EOS-padded to a
fixed length) are masked with probability t ~ U(eps, 1), cross-entropy on masked tokens weighted by 1/t; by
default it is estimated in its lower-variance exact-count form (k ~ U{1..A} tokens masked, weight A/k; see
:mod:`dlm.tools.train.objective`).
``--tasks demo`` (default) reproduces the checkpoint shipped in ``dlm/assets/demo`` (docs/demo.md);
``--tasks long`` the long-answer model of ``dlm/assets/long`` (docs/long.md); ``--tasks fewshot`` the few-shot
model of ``dlm/assets/fewshot`` (docs/fewshot.md). Each group has its own
defaults (size, steps, batch, lr, seed); a flag overrides them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "train an embedded model (demo, long or fewshot: --tasks) on its synthetic tasks (CPU, minutes)"


def _recipes() -> dict:
    from dlm.tools.train.loop import FewshotTrainConfig, LongTrainConfig, TrainConfig

    return {"demo": TrainConfig, "long": LongTrainConfig, "fewshot": FewshotTrainConfig}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dlm.tools.train.loop import FewshotTrainConfig, LongTrainConfig, TrainConfig
    from dlm.tools.train.objective import MASKINGS

    d, long, few = TrainConfig(), LongTrainConfig(), FewshotTrainConfig()

    def both(field: str) -> str:
        return (f"(default {getattr(d, field)}; --tasks long: {getattr(long, field)}; "
                f"--tasks fewshot: {getattr(few, field)})")

    p.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    p.add_argument("--tasks", choices=("demo", "long", "fewshot"), default="demo",
                   help="task group and recipe: demo (dlm/assets/demo, default), long (dlm/assets/long) or fewshot "
                   "(dlm/assets/fewshot)")
    p.add_argument("--steps", type=int, default=None, help=f"optimiser steps {both('steps')}")
    p.add_argument("--minutes", type=float, default=None, help="stop early after this many minutes")
    p.add_argument("--seed", type=int, default=None, help=f"seed of weights, data and masking noise {both('seed')}")
    p.add_argument("--batch-size", type=int, default=None, help=both("batch_size"))
    p.add_argument("--lr", type=float, default=None, help=both("lr"))
    p.add_argument("--warmup", type=int, default=None, help=both("warmup"))
    p.add_argument("--masking", choices=MASKINGS, default=None,
                   help="estimator of the SFT loss: exactly k of A answer tokens masked, weight A/k (default), "
                   "or each masked with probability t, weight 1/t (LLaDA Eq. 5 literally)")
    p.add_argument("--dim", type=int, default=None, help=f"model width {both('dim')}")
    p.add_argument("--layers", type=int, default=None, help=both("n_layers"))
    p.add_argument("--heads", type=int, default=None, help=both("n_heads"))
    p.add_argument("--ffn", type=int, default=None, help=f"SwiGLU hidden size {both('ffn_dim')}")
    p.add_argument("--init", type=Path, default=None, help="continue from this checkpoint's weights (sizes ignored)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 instead of bf16 autocast")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slower steps, no compile wait)")
    p.add_argument("--save-every", type=int, default=500, metavar="STEPS",
                   help="write the run's state to OUT/train-state every STEPS steps (and when --minutes stops it), "
                   "so --resume can continue it; 0: only at a --minutes stop (default 500)")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run whose state is in OUT/train-state (same options); without a "
                   "state there, start afresh")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dlm.commands import check_output, check_positive, check_seed
    from dlm.errors import InputError
    from dlm.tools.train.loop import train_and_save

    recipe = _recipes()[args.tasks]
    given = {
        "dim": args.dim, "n_layers": args.layers, "n_heads": args.heads, "ffn_dim": args.ffn, "steps": args.steps,
        "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
        "masking": args.masking,
    }
    fields = {k: v for k, v in given.items() if v is not None}
    flags = {"--steps": args.steps, "--batch-size": args.batch_size, "--lr": args.lr, "--dim": args.dim,
             "--layers": args.layers, "--heads": args.heads, "--ffn": args.ffn, "--threads": args.threads,
             "--minutes": args.minutes}
    check_positive(**{flag: value for flag, value in flags.items() if value is not None})
    check_seed(**{"--seed": args.seed})
    if args.save_every < 0:
        raise InputError(f"--save-every must be 0 or more, got {args.save_every}")
    if args.warmup is not None and args.warmup < 0:
        raise InputError(f"--warmup must be 0 or more, got {args.warmup}")
    base = recipe()
    dim, heads = fields.get("dim", base.dim), fields.get("n_heads", base.n_heads)
    if dim % heads:
        raise InputError(f"--dim {dim} must be a multiple of --heads {heads}")
    fields["warmup"] = min(fields.get("warmup", base.warmup), fields.get("steps", base.steps))
    check_output(args.out, "--out", directory=True)
    if args.init is not None:
        from dlm.models.checkpoint import read_config
        from dlm.models.llada import llada_spec

        llada_spec(read_config(args.init), args.init)  # a bad --init fails now, not after the data is built
    cfg = recipe(
        **fields, bf16=not args.no_bf16, compile=not args.no_compile, threads=args.threads,
        max_minutes=args.minutes, init=None if args.init is None else str(args.init),
    )
    result = train_and_save(cfg, args.out, progress=not args.quiet, save_every=args.save_every, resume=args.resume)
    params = sum(p.numel() for p in result.net.parameters())
    final = sum(result.losses[-100:]) / max(1, len(result.losses[-100:]))
    print(json.dumps({
        "out": str(args.out), "tasks": args.tasks, "params": params, "steps": result.steps,
        "seconds": round(result.seconds, 1), "final_loss": round(final, 5), "stopped_early": result.stopped_early,
    }))
    if result.stopped_early:
        print(f"warning: stopped after {result.steps} of {cfg.steps} steps (--minutes {args.minutes}); the same "
              "command with --resume continues it")
    return 0
