"""Hugging Face Hub ids as ``model.path``: ``GSAI-ML/LLaDA-8B-Instruct`` resolves from the local cache.

A ``model.path`` that is not a local file or directory and has the form ``ORG/NAME`` is looked up in the
Hugging Face cache, in its standard layout (``models--ORG--NAME/snapshots/<revision>/`` with ``refs/main``
naming the revision), through ``huggingface_hub``'s own offline look-up (``snapshot_download(...,
local_files_only=True)``), so whatever ``huggingface-cli download`` or transformers put there loads. The cache
is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``, read when the model is
loaded (not when Python started).

dlm never downloads on its own: an id that is not cached is a :class:`~dlm.errors.CheckpointError` saying
how to get it. With ``DLM_ALLOW_DOWNLOAD=1`` in the environment it is downloaded into that cache instead
(weights as safetensors, the JSON and tokenizer files; huggingface_hub shows the progress).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dlm.errors import CheckpointError

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
ALLOW_ENV = "DLM_ALLOW_DOWNLOAD"
PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]  # never pickles (*.bin, *.pt)


def hub_cache() -> Path:
    """The Hugging Face hub cache directory this process uses (environment read now)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def is_hub_id(path: str | os.PathLike) -> bool:
    """True when ``path`` could be a hub id (``ORG/NAME``) and names nothing on the local disk."""
    text = str(path)
    if not HUB_ID.fullmatch(text) or ".." in text or text.startswith("."):
        return False
    return not (os.path.lexists(text))


def downloads_allowed() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def resolve_checkpoint(path: Path) -> Path:
    """``path`` itself when it exists locally (or is no hub id); else the cached snapshot of hub id ``path``."""
    if not is_hub_id(path):
        return Path(path)
    repo_id = str(path)
    cache = hub_cache()
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover (transformers depends on huggingface_hub)
        raise CheckpointError(
            f"model.path {repo_id!r} is not a local directory, and huggingface_hub (needed to read the Hugging "
            "Face cache) is not installed; pip install huggingface_hub or give a checkpoint directory"
        ) from None
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except (OSError, ValueError) as err:
        raise CheckpointError(f"model.path {repo_id!r}: cannot read the Hugging Face cache {cache}: {err}") from None
    if not downloads_allowed():
        raise CheckpointError(
            f"model.path {repo_id!r} is neither a local directory nor in the Hugging Face cache {cache} "
            f"(looked for {cache / ('models--' + repo_id.replace('/', '--'))}); download it first "
            f"(`huggingface-cli download {repo_id}`), set HF_HUB_CACHE or HF_HOME to the cache that holds it, "
            f"set {ALLOW_ENV}=1 to let dlm download it, or give a local checkpoint directory"
        )
    saved = os.environ.pop("HF_HUB_OFFLINE", None)
    try:
        print(f"dlm: downloading {repo_id} into {cache} ({ALLOW_ENV}=1)", flush=True)
        return Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=PATTERNS))
    except Exception as err:  # network and hub errors of every kind
        raise CheckpointError(f"model.path {repo_id!r}: download failed: {err}") from None
    finally:
        if saved is not None:
            os.environ["HF_HUB_OFFLINE"] = saved
