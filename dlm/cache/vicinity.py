"""``vicinity``: dInfer's vicinity refresh (Ma et al. 2025, "dInfer: An Efficient Inference Framework for
Diffusion Language Models", arXiv 2510.08666; code inclusionAI/dInfer, ``VicinityCacheIteration``).

A dual cache whose cached steps compute the block *and its vicinity*: columns ``[block_start − prefix_look,
block_end + after_look)`` (clipped to the canvas) are recomputed every step against the K/V cached at the last
refresh, so the columns next to the block, which the block's changes disturb most, never go stale. The first
``warmup_steps`` forwards of each row are full forwards, the one after them refreshes, and so does the first
step of every block; a refresh is a full forward that rewrites every column's K/V.

Warm-up and refresh are decided per row (from its NFE), so a row gives in a batch what it gives alone; in a
step where some rows refresh and others do not, the plan names per-row column sets.

Exactness: ``warmup_steps: 0`` with ``prefix_look: 0, after_look: 0`` is ``dual``; a vicinity that covers
the canvas is ``none``; on a 1-layer model every step is exact (cached K/V depend only on their own token).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from dlm.cache.columns import column_plan
from dlm.cache.prefix import PrefixCache
from dlm.messages import ForwardPlan, Window
from dlm.state import GenerationState


class VicinityCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix_look: int = Field(16, ge=0, description="columns before the block recomputed at every cached step")
    after_look: int = Field(16, ge=0, description="columns after the block recomputed at every cached step")
    warmup_steps: int = Field(4, ge=0, description="full uncached-equivalent forwards at the start of each row")


class VicinityCache(PrefixCache):
    Config = VicinityCacheConfig

    def vicinity(self, state: GenerationState, window: Window) -> tuple[int, int]:
        """Columns a cached step computes: the block with its look-behind and look-ahead, and what the
        window's logits need (shifted models)."""
        start = max(0, min(self.cached_start(window), window.block_start - self.config.prefix_look))
        return start, min(state.length, window.block_end + self.config.after_look)

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        rows = window.rows
        refresh = state.nfe[rows] <= self.config.warmup_steps  # [b] warm-up, then the refresh after it
        if window.first_step:
            refresh[:] = True
        full = bool(refresh.all())
        if full or not bool(refresh.any()):
            start, end = (0, state.length) if full else self.vicinity(state, window)
            return self.peek(ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=start, end=end,
                                         kv=self.kv, key_end=state.length, refresh=full), window)
        start, end = self.vicinity(state, window)
        need = torch.zeros(len(rows), state.length, dtype=torch.bool, device=state.device)  # [b, L]
        need[:, start:end] = True
        need[:, window.logits_start - self.shift : window.logits_end - self.shift] = True
        need[refresh] = True
        return column_plan(state, rows, need, self.kv, refresh=False)
