"""Shared by tests/test_readme.py and tests/test_docs_code.py: fenced blocks with their markers, and a scratch
directory where ``dlm`` and ``python`` are on PATH, as a user's shell has them."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# an optional ``<!-- marker: why -->`` line right before a fence, then the fence's language and body
FENCE = re.compile(r"(?:<!--\s*(?P<marker>[\w-]+)(?::\s*(?P<why>[^>]*?))?\s*-->\s*\n)?```(?P<lang>\w*)\n(?P<body>.*?)```",
                   re.S)


def blocks(path: Path) -> list[dict]:
    """Every fenced block of ``path``: ``marker``, ``why``, ``lang``, ``body``."""
    return [m.groupdict() for m in FENCE.finditer(path.read_text())]


def shell_env(tmp_path: Path) -> tuple[dict, Path]:
    """(environment, scratch directory) for running a page's commands: ``dlm`` and ``python`` of this
    interpreter on PATH, offline, one thread, this checkout importable."""
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    (bin_dir / "dlm").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dlm "$@"\n')
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return env, work
