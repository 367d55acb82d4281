"""``vicinity``: dInfer's vicinity refresh (Ma et al. 2025, "dInfer: An Efficient Inference Framework for
Diffusion Language Models", arXiv 2510.08666; code inclusionAI/dInfer, ``VicinityCacheIteration``).

A dual cache whose cached steps compute the block *and its vicinity*: columns ``[block_start − prefix_look,
block_end + after_look)`` (clipped to the canvas) are recomputed every step against the K/V cached at the last
refresh, so the columns next to the block, which the block's changes disturb most, never go stale. The first
``warmup_steps`` forwards of each row are full forwards, the one after them refreshes, and so does the first
step of every block; a refresh is a full forward that rewrites every column's K/V.

Warm-up and refresh are decided per row (from the forwards the row took part in, counted in the run memory,
and from its own step in its own block), so a row gives in a batch, and when it joins a running generation,
what it gives alone: one range forward serves every row, each storing only its own columns (per-row write
bounds, :func:`~dlm.cache.prefix.row_range_plan`; a refreshing row stores the whole canvas).

Exactness: ``warmup_steps: 0`` with ``prefix_look: 0, after_look: 0`` is ``dual``; a vicinity that covers
the canvas is ``none``; on a 1-layer model every step is exact (cached K/V depend only on their own token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.cache.prefix import KVMemory, PrefixCache, row_range_plan
from dlm.messages import CacheEnv, ForwardPlan, Window
from dlm.state import GenerationState


class VicinityCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix_look: int = Field(16, ge=0, description="columns before the block recomputed at every cached step")
    after_look: int = Field(16, ge=0, description="columns after the block recomputed at every cached step")
    warmup_steps: int = Field(4, ge=0, description="full uncached-equivalent forwards at the start of each row")


@dataclass
class VicinityMemory(KVMemory):
    """The KV store and, per row, the forwards the row took part in (host: the warm-up is decided on it)."""

    forwards: Tensor | None = None  # [B] long (host)


class VicinityCache(PrefixCache):
    Config = VicinityCacheConfig
    joinable = True

    def start(self, state: GenerationState, env: CacheEnv) -> VicinityMemory:
        return VicinityMemory(env.new_kv(state.batch_size, state.length), shift=env.capabilities.logit_shift,
                              forwards=torch.zeros(state.batch_size, dtype=torch.long))

    def vicinity(self, state: GenerationState, window: Window) -> tuple[Tensor, Tensor]:
        """[b] host each: the columns a cached step computes per row, its block with the look-behind and
        look-ahead (and the column before its window, for shifted models)."""
        start = torch.clamp(torch.minimum(self.cached_start(state, window),
                                          window.block_start - self.config.prefix_look), min=0)
        return start, torch.clamp(window.block_end + self.config.after_look, max=state.length)

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: VicinityMemory = self.memory(state)
        host_rows = window.rows.cpu()
        refresh = (m.forwards[host_rows] <= self.config.warmup_steps) | window.first_step  # [b] host
        m.forwards[host_rows] += 1
        start, end = self.vicinity(state, window)
        lo = torch.where(refresh, 0, start)
        hi = torch.where(refresh, state.length, end)
        return row_range_plan(state, window, m.kv, lo, hi, shift=m.shift, refresh=bool(refresh.all()))
