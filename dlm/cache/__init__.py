"""KV-cache managers: what each forward computes and what it reuses.

The public API for plugin authors:

- :class:`CacheManager`: the interface (``start`` returning the run memory, ``plan``, ``check``; candidate
  steps through ``plan_candidates`` and ``keep``);
- the messages (:class:`~dlm.messages.ForwardPlan`, :class:`~dlm.messages.Window`,
  :class:`~dlm.messages.KVStore`, :class:`~dlm.messages.CacheEnv`) come from :mod:`dlm.messages`;
- :class:`PrefixCache`, a base class that allocates the buffer (:class:`KVMemory`), checks the model and
  handles shifted logits (``cached_start``): a new block-wise policy overrides only ``plan``, usually with
  :func:`row_range_plan` (see docs/writing-plugins.md); :class:`DualCache` is one such policy;
  :func:`block_cache_problem` is their composition check;
- :class:`AppendCache` (causal models) and :func:`committed_first` (WeDLM's reordered column order).
"""

from dlm._compat import moved
from dlm.cache.append import AppendCache
from dlm.cache.base import CacheManager
from dlm.cache.candidates import keep_candidate, plan_candidates
from dlm.cache.dual import DualCache
from dlm.cache.fast_dllm import block_cache_problem
from dlm.cache.none import NoCache
from dlm.cache.prefix import KVMemory, PrefixCache, row_range_plan
from dlm.cache.reorder import committed_first

__all__ = ["CacheManager", "PrefixCache", "DualCache", "NoCache", "KVMemory", "row_range_plan",
           "block_cache_problem", "AppendCache", "committed_first", "plan_candidates", "keep_candidate"]
__getattr__ = moved("dlm.cache", {n: f"dlm.messages:{n}" for n in ("ForwardPlan", "Window", "KVStore")})
