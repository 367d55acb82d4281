"""``dkv``: dKV-Cache's delayed decode cache (Ma et al. 2025, "dKV-Cache: The Cache for Diffusion Language
Models", arXiv 2505.15781; code horseee/dKV-Cache, ``llada_dkv_cache_decode.py``).

A committed token's K/V are cached one step after its commit: each cached step computes, per row, the
still-pending columns and the columns committed since the row's last forward, reading every other column's
K/V from the cache. Steps 0 and 1 of each block, and every step whose in-block index is a multiple of
``refresh_every``, are refreshes (a full forward rewriting every column's K/V), as in the authors' code.

Exactness: on a 1-layer model every step is exact (a column's layer-0 K/V depend only on its own token, and
every changed token is recomputed); ``refresh_every: 1`` refreshes every step, which is ``none``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dlm.cache.columns import column_plan
from dlm.cache.prefix import PrefixCache
from dlm.messages import ForwardPlan, Window
from dlm.models.base import ModelAdapter
from dlm.state import GenerationState


class DKVCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    refresh_every: int = Field(8, ge=1, description="refresh (full forward) at in-block steps that are multiples of this")


class DKVCache(PrefixCache):
    Config = DKVCacheConfig

    def start(self, state: GenerationState, model: ModelAdapter) -> None:
        super().start(state, model)
        self.seen = state.pending().clone()  # [B, L] pending as of each row's last forward

    def finish(self) -> None:
        super().finish()
        self.seen = None

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        rows = window.rows
        pending = state.pending()[rows]  # [b, L]
        need = pending | (self.seen[rows] & ~pending)  # pending, or committed since the row's last forward
        self.seen[rows] = pending
        if window.step < 2 or window.step % self.config.refresh_every == 0:
            return self.peek(ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=0,
                                         end=state.length, kv=self.kv, key_end=state.length, refresh=True), window)
        need[:, window.logits_start - self.shift : window.logits_end - self.shift] = True
        return column_plan(state, rows, need, self.kv, refresh=False)
