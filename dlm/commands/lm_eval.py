"""Run lm-evaluation-harness with the ``dlm`` model and dlm's offline tasks available.

Every argument goes to lm-eval's own command line (``lm-eval --help`` lists them); ``--model`` defaults to
``dlm``. Example: ``dlm lm-eval --model_args config=my.yaml,decoding.threshold=0.9 --tasks gsm8k``.
Needs the ``[eval]`` extra. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse

HELP = "run lm-evaluation-harness with the dlm model (arguments go to lm-eval)"
PASSTHROUGH = True  # dlm's parser leaves every argument to lm-eval's


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from dlm.tools.lm_eval.launcher import main

    return main(args.passthrough)
