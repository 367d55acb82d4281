"""Helpers of the bad-input tests: run the CLI (in a subprocess or in-process) and check its refusals."""

from __future__ import annotations

import os
import subprocess
import sys

from dlm.cli import main
from dlm.errors import DlmError


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m dlm ARGS`` in a fresh interpreter, single-threaded and offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dlm", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def error_lines(stderr: str, command: str) -> list[str]:
    """The ``dlm COMMAND: error: ...`` lines of ``stderr``; fails if any other line is there."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    prefix = f"dlm {command}: error: "
    assert lines, "nothing on stderr"
    assert all(line.startswith(prefix) for line in lines), stderr
    return [line.removeprefix(prefix) for line in lines]


def assert_refused(proc: subprocess.CompletedProcess, command: str, *needles: str, lines: int = 1) -> list[str]:
    """Exit code 2, ``lines`` one-line errors naming every needle, no traceback anywhere."""
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    found = error_lines(proc.stderr, command)
    assert len(found) == lines, found
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    return found


def cli_refuses(capsys, *args: str, needles: tuple[str, ...] = (), lines: int = 1) -> list[str]:
    """In-process ``dlm ARGS`` (same code as the console script): exit code 2 and one-line errors."""
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert rc == 2, (rc, captured.err)
    found = error_lines(captured.err, args[0])
    assert len(found) == lines, found
    for needle in needles:
        assert needle in captured.err, (needle, captured.err)
    return found


def one_line(err: DlmError, *needles: str) -> str:
    """The message of ``err``: a single line naming every needle."""
    msg = str(err)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg
