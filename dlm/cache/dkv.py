"""``dkv``: dKV-Cache's delayed decode cache (Ma et al. 2025, "dKV-Cache: The Cache for Diffusion Language
Models", arXiv 2505.15781; code horseee/dKV-Cache, ``llada_dkv_cache_decode.py``).

A committed token's K/V are cached one step after its commit: each cached step computes and stores, per row,
the still-pending columns and the columns committed since the row's last forward, reading every other
column's K/V from the cache. The other columns whose logits the step returns (the window's committed
columns) are computed as peeks: their slots keep the K/V cached at their commit, as in the authors' code,
which computes no query for them. Steps 0 and 1 of each row's block, and every step whose in-block index is
a multiple of ``refresh_every``, are refreshes (a full forward rewriting every column's K/V), as in the
authors' code.

Everything is decided per row (its own step in its own block, its own columns), so rows at different places
share one forward (a column-set plan, :func:`~dlm.cache.columns.column_plan`) and each gives what it gives
alone, also when it joined a running generation.

Exactness: on a 1-layer model every step is exact (a column's layer-0 K/V depend only on its own token, and
every changed token is recomputed: committed ones, and placed ones an editing strategy rewrote, ``state.edited``);
``refresh_every: 1`` refreshes every step, which is ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.cache.columns import candidate_plan, column_plan
from dlm.cache.prefix import KVMemory, PrefixCache
from dlm.messages import CacheEnv, ForwardPlan, Window
from dlm.state import GenerationState


class DKVCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    refresh_every: int = Field(8, ge=1, description="refresh (full forward) at in-block steps that are multiples of this")


@dataclass
class DKVMemory(KVMemory):
    """The KV store and, per row, which columns were pending at the row's last forward."""

    seen: Tensor | None = None  # [B, L] bool


class DKVCache(PrefixCache):
    Config = DKVCacheConfig
    joinable = True

    def start(self, state: GenerationState, env: CacheEnv) -> DKVMemory:
        return DKVMemory(env.new_kv(state.batch_size, state.length), shift=env.capabilities.logit_shift,
                         seen=state.pending().clone())

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: DKVMemory = self.memory(state)
        rows = window.rows
        pending = state.pending()[rows]  # [b, L]
        store = pending | (m.seen[rows] & ~pending)  # pending, or committed since the row's last forward
        if state.edited is not None:  # or rewritten by an editing strategy's last commit
            store |= state.edited[rows]
        m.seen[rows] = pending
        step = window.step
        refresh = (step < 2) | (step % self.config.refresh_every == 0)  # [b] host
        if bool(refresh.all()):
            return ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=0, end=state.length,
                               kv=m.kv, key_end=state.length, refresh=True)
        store[refresh.to(state.device)] = True  # refreshing rows store every column
        return column_plan(state, window, m.kv, store, shift=m.shift, refresh=False)

    def plan_candidates(self, state: GenerationState, plan: ForwardPlan, window: Window) -> ForwardPlan:
        return candidate_plan(state, plan, window)
