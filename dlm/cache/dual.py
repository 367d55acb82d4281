"""``dual``: Fast-dLLM's dual KV cache (Wu et al., 2025, arXiv 2505.22618, §3.2).

Each block starts with a full forward over the whole canvas (the refresh, also decoding step 0), which
writes every column's K/V. Later steps compute only the current block: its fresh K/V overwrite the block's
own slots in place, and attention reads the prefix *and* suffix K/V cached at the refresh.

Exactness: as for ``prefix``, exact for a 1-layer model and when each block completes in its refresh step;
approximate otherwise (both the prefix and the still-masked suffix K/V go stale while the block fills).
Rows at different blocks or steps store only their own columns (see :mod:`dlm.cache.prefix`).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from dlm.cache.prefix import KVMemory, PrefixCache, row_range_plan
from dlm.messages import ForwardPlan, Window
from dlm.state import GenerationState


class DualCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DualCache(PrefixCache):
    Config = DualCacheConfig

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: KVMemory = self.memory(state)
        refresh = window.first_step
        lo = torch.where(refresh, 0, self.cached_start(state, window))
        hi = torch.where(refresh, state.length, window.block_end)
        return row_range_plan(state, window, m.kv, lo, hi, shift=m.shift, refresh=refresh)
