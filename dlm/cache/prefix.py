"""``prefix``: Fast-dLLM's prefix KV cache (Wu et al., 2025, arXiv 2505.22618, §3.2; §3.2).

Each block starts with a full forward over the whole canvas (the refresh, also decoding step 0 of the
block), which writes every column's K/V into the buffer. Later steps of the block compute the current block
and everything after it, and attend to the prefix K/V (columns before the block) as cached at the refresh.

Exactness: the cached prefix K/V are those of the block's first step. They equal the no-cache values
whenever the tokens they depend on have not changed since: always for a 1-layer model (layer-0 K/V depend
only on the token itself), and trivially when each block is completed in its refresh step. With deeper
models the prefix K/V drift as the block fills, so outputs can differ from ``none``.

Shifted models (Dream, ``logit_shift = 1``): a window starting at column ``w`` needs the output of column
``w - 1``, so cached steps compute from ``min(block_start, window.start - shift)``. With ``dream_blockwise``
(whose cached windows start at ``block_start + 1``) that is exactly the block start, as in Fast-dLLM's Dream
block path; with plain ``blockwise`` it is one column earlier, recomputed in place.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import BaseModel, ConfigDict

from dlm.cache.base import CacheManager
from dlm.cache.fast_dllm import block_cache_problem
from dlm.messages import ForwardPlan, KVStore, ModelCapabilities, Window
from dlm.models.base import ModelAdapter
from dlm.state import GenerationState


class PrefixCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PrefixCache(CacheManager):
    Config = PrefixCacheConfig
    kv: KVStore | None = None
    shift: int = 0  # the model's logit shift, read at start()

    def check(self, capabilities: ModelCapabilities) -> str | None:
        return block_cache_problem(capabilities)

    def start(self, state: GenerationState, model: ModelAdapter) -> None:
        self.kv = model.new_kv(state.batch_size, state.length)
        self.shift = model.capabilities.logit_shift

    def cached_start(self, window: Window) -> int:
        """First column a cached (non-refresh) step stores: the block, or the column the window needs."""
        return min(window.block_start, window.start - self.shift)

    def finish(self) -> None:
        self.kv = None

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        refresh = window.first_step
        start = 0 if refresh else self.cached_start(window)
        return self.peek(ForwardPlan(
            rows=window.rows,
            all_rows=len(window.rows) == state.batch_size,
            start=start,
            end=state.length,
            kv=self.kv,
            key_end=state.length,
            refresh=refresh,
        ), window)

    def peek(self, plan: ForwardPlan, window: Window) -> ForwardPlan:
        """``plan``, also computing what a widened logits span needs, without storing those columns' K/V (so
        a strategy that reads logits beyond the window leaves the cache's approximation unchanged)."""
        lo, hi = window.logits_start - self.shift, window.logits_end - self.shift
        if lo >= plan.start and hi <= plan.end:
            return plan
        return replace(plan, start=min(plan.start, lo), end=max(plan.end, hi), write_start=plan.start,
                       write_end=plan.end)
