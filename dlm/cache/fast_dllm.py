"""Shared checks of Fast-dLLM's block-wise approximate caches (``prefix`` and ``dual``, and the caches built on
:class:`~dlm.cache.prefix.PrefixCache`: ``vicinity``, ``dkv``, the ``periodic`` plugin).

Shifted-logit models (Dream) are served: cached steps compute from the column before the window when the
window needs it (see :meth:`dlm.cache.prefix.PrefixCache.cached_start`).
"""

from __future__ import annotations

from dlm.messages import ModelCapabilities


def block_cache_problem(capabilities: ModelCapabilities) -> str | None:
    """Why a Fast-dLLM block cache cannot serve this model, or None."""
    if not capabilities.kv_cache:
        return "the model adapter cannot run through a KV buffer"
    if capabilities.attention != "bidirectional":
        return f"it is made for bidirectional attention, the model's attention is {capabilities.attention}"
    return None
