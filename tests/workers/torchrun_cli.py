"""Run several ``dlm`` command lines in one torchrun launch (one process group, one start-up cost).

Usage: ``torchrun --nproc-per-node N tests/workers/torchrun_cli.py OUT_DIR 'generate ...' 'eval ...'``; the
standard output of command ``i`` (first process only) goes to ``OUT_DIR/i.out``.
"""

import contextlib
import os
import shlex
import sys
from pathlib import Path

import torch

from dlm.cli import main

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    first = int(os.environ.get("RANK", "0")) == 0
    for i, line in enumerate(sys.argv[2:]):
        with open(out / f"{i}.out" if first else os.devnull, "w") as f, contextlib.redirect_stdout(f):
            code = main(shlex.split(line))
        if code:
            sys.exit(code)
