"""KV-cache managers: what each forward computes and what it reuses.

The public API for plugin authors:

- :class:`CacheManager`: the interface (``start``, ``plan``, ``finish``, ``check``);
- the messages :class:`ForwardPlan` (a column range or per-row column sets, the KV store, ``key_end``,
  ``refresh``), :class:`Window` (block bounds, sub-blocks, step, logits span) and :class:`KVStore`;
- :class:`PrefixCache`, a base class that allocates the buffer, checks the model and handles shifted logits
  (``cached_start``): a new block-wise policy overrides only ``plan`` (see docs/writing-plugins.md);
  :class:`DualCache` adds ``cached_end``; :func:`block_cache_problem` is their composition check;
- :class:`AppendCache` (causal models) and :func:`committed_first` (WeDLM's reordered column order).
"""

from dlm.cache.append import AppendCache
from dlm.cache.base import CacheManager
from dlm.cache.dual import DualCache
from dlm.cache.fast_dllm import block_cache_problem
from dlm.cache.none import NoCache
from dlm.cache.prefix import PrefixCache
from dlm.cache.reorder import committed_first
from dlm.messages import ForwardPlan, KVStore, Window

__all__ = ["CacheManager", "ForwardPlan", "Window", "KVStore", "PrefixCache", "DualCache", "NoCache",
           "block_cache_problem", "AppendCache", "committed_first"]
