"""Periodic-refresh KV cache for dlm, registered as the cache policy ``periodic``."""

from dlm_periodic_cache.periodic import PeriodicCache, PeriodicCacheConfig

__all__ = ["PeriodicCache", "PeriodicCacheConfig"]
