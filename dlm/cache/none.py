"""``none``: no cache, a full forward over every active row's whole canvas at every step.

The exact computation every cache policy is compared with. A window asking for WeDLM's reordering
(a :class:`~dlm.messages.Reorder` window, causal models) gets the whole canvas as an ordered column plan, committed columns first.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from dlm.cache.base import CacheManager
from dlm.cache.reorder import committed_first
from dlm.messages import ForwardPlan, Ordered, Reorder, Window
from dlm.state import GenerationState


class NoCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoCache(CacheManager):
    Config = NoCacheConfig
    joinable = True
    provides = frozenset({"edit_aware"})  # nothing is reused

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        if window.has(Reorder):
            rows = window.rows
            start = torch.zeros(len(rows), dtype=torch.long, device=state.device)
            columns = committed_first(state.pending()[rows], start, state.length)
            return ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=0, end=state.length,
                               kv=None, key_end=state.length, refresh=False, columns=columns).extend(Ordered())
        return ForwardPlan(
            rows=window.rows,
            all_rows=len(window.rows) == state.batch_size,
            start=0,
            end=state.length,
            kv=None,
            key_end=state.length,
            refresh=False,
        )
