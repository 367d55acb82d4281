"""How a result was made: what every ``results.json``, ``dlm bench --json-out`` and serve-bench JSON records.

Versions of dlm, torch and transformers, Python and the platform, the device (type and name: the GPU's
name, or the processor), torch's thread count, the dtype, and the git commit of the dlm source when it runs
from a git checkout (with ``dirty`` when the tree has uncommitted changes), so a figure can be traced to the
code and the machine that gave it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(directory: Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding dlm's source, or None (not a checkout,
    no git, or git too slow: 5 s at most)."""
    root = Path(directory or Path(__file__).resolve().parent.parent)
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(status.strip())}


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device.index or 0)
    return platform.processor() or platform.machine()


def provenance(*, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> dict[str, Any]:
    """The record of versions, device, threads, dtype and commit for a result file."""
    return {
        "dlm": _version("dlm"),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "git": git_commit(),
    }
