"""The ``dlm`` console script. Each subcommand lives in its own module under :mod:`dlm.commands`.

Exit codes: 0 success; 2 bad input (a :class:`~dlm.errors.DlmError`, or a command line argparse refuses),
each problem printed as one line ``dlm COMMAND: error: ...`` on stderr, no traceback; 1 an operating-system
error (disk full, permission denied) or a component breaking the loop's invariants (``DecodingError``),
also one line; 130 interrupted. Anything else is a bug and keeps its traceback (docs/errors.md).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dlm.errors import DecodingError, DlmError

# subcommand name -> module defining ``add_arguments(parser)`` and ``run(args) -> int``; a module with
# ``PASSTHROUGH = True`` gets every argument after its name, unparsed, as ``args.passthrough``
COMMANDS = {
    "generate": "dlm.commands.generate",
    "list": "dlm.commands.list_components",
    "validate": "dlm.commands.validate",
    "bench": "dlm.commands.bench",
    "train-demo": "dlm.commands.train_demo",
    "eval": "dlm.commands.eval",
    "lm-eval": "dlm.commands.lm_eval",
    "serve": "dlm.commands.serve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlm", description="Fast inference of diffusion language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        passthrough = getattr(module, "PASSTHROUGH", False)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__, add_help=not passthrough)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _passthrough=passthrough)
    return parser


def report(command: str, err: DlmError) -> None:
    """Print each line of ``err`` (a config error may list several problems) as ``dlm CMD: error: ...``."""
    for line in str(err).splitlines() or [type(err).__name__]:
        print(f"dlm {command}: error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "_passthrough", False):
        args.passthrough = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except DlmError as err:
        report(args.command, err)
        return 1 if isinstance(err, DecodingError) else 2  # a component's fault, not the input's
    except OSError as err:  # the environment, not the input: disk full, permission denied, ...
        if isinstance(err, BrokenPipeError):
            sys.stdout = open(os.devnull, "w")
            return 0
        where = f": {err.filename}" if err.filename else ""
        print(f"dlm {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
