"""``block``: Fast-dLLM v2's hierarchical cache for block-causal models (Wu et al., 2025, arXiv 2509.26328).

**Block-level cache (exact).** With block-causal attention a completed block's K/V never change: its
queries never see later blocks. The manager keeps, per row, ``valid_end``: the canvas column up to which
the buffer holds final K/V (whole blocks, in the row's own positions, whose tokens were all committed when
last computed). Each step computes from ``min(valid_end)`` (or the column before the window, for shifted
logits) to the end of the last block a needed output lies in, and attends to slots ``[0, end)``. Every
query the window needs therefore sees exactly the keys it sees without cache: the result equals
``none`` up to float rounding, for any iteration manager and any batch (proved token for token by the tests).
Columns computed past a row's current block are garbage that the block-causal mask hides from earlier
blocks and that the row's later steps recompute before they become valid.

**Sub-block cache (approximate, ``sub_block_cache: true``).** As the reference's ``use_block_cache``: inside
the current block, a step whose sub-block's first position is already committed, and whose block has had a
full forward, computes only its sub-block and attends to the rest of the block as cached at that last full
forward (stale for the other sub-blocks, like Fast-dLLM's dual cache). A step refreshes (full block) when
the sub-block's first position is still masked, or the block has had no full forward yet. The first
position's own shifted logit is never needed, since that position is committed. Exact for a 1-layer model
and when the iteration's ``sub_block_size`` equals the block size. The sub-blocks are the iteration
manager's, read from the window (``Window.sub_start``/``sub_end``), so the two cannot disagree. In a batch the cached forward computes the union of the
rows' sub-blocks, and it runs only when every row of the step may use the cache; a row may therefore get
fresher K/V than alone (never staler), so batched sub-block-cache runs can differ from single ones.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from dlm.cache.base import CacheManager
from dlm.messages import ForwardPlan, KVStore, ModelCapabilities, Window
from dlm.models.base import ModelAdapter
from dlm.state import GenerationState


class BlockCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sub_block_cache: bool = Field(
        False, description="also reuse the current block's K/V between sub-block steps (sub-blocks: the window's)"
    )


class BlockCache(CacheManager):
    Config = BlockCacheConfig
    kv: KVStore | None = None

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if not capabilities.kv_cache:
            return "the model adapter cannot run through a KV buffer"
        if capabilities.attention != "block_causal" or not capabilities.block_size:
            return (
                "the block-level cache is exact only for block-causal attention; the model's attention is "
                f"{capabilities.attention} (use prefix or dual for bidirectional models)"
            )
        return None

    def start(self, state: GenerationState, model: ModelAdapter) -> None:
        self.kv = model.new_kv(state.batch_size, state.length)
        self.bs = int(model.capabilities.block_size)
        self.shift = model.capabilities.logit_shift
        self.valid_end = torch.zeros(state.batch_size, dtype=torch.long, device=state.device)
        self.full_at = torch.full((state.batch_size,), -1, dtype=torch.long, device=state.device)

    def finish(self) -> None:
        self.kv = None

    def _block_floor(self, cols, pad):
        return pad + torch.div(cols - pad, self.bs, rounding_mode="floor") * self.bs

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        rows, length = window.rows, state.length
        pad = state.pad[rows]
        need_lo, need_hi = window.logits_start - self.shift, window.logits_end - self.shift  # outputs the logits read
        if self.config.sub_block_cache:
            cached = self._sub_block_plan(state, window, rows, pad, need_lo, need_hi)
            if cached is not None:
                return cached
        last_block_end = self._block_floor(torch.full_like(pad, need_hi - 1), pad) + self.bs
        end = min(length, int(last_block_end.max()))
        start = min(int(self.valid_end[rows].min()), need_lo)
        # after this forward, whole blocks whose tokens are all committed now hold final K/V
        masked = state.masked()[rows]
        first_mask = torch.where(masked.any(dim=1), masked.int().argmax(dim=1), length)
        limit = torch.clamp(first_mask, max=end)
        self.valid_end[rows] = torch.maximum(self.valid_end[rows], self._block_floor(limit, pad).clamp(min=0))
        if self.config.sub_block_cache:
            first = window.start + window.eligible.int().argmax(dim=1)
            block_start = self._block_floor(first, pad)
            covered = (block_start >= start) & (torch.clamp(block_start + self.bs, max=length) <= end)
            self.full_at[rows] = torch.where((first > block_start) & covered, block_start, self.full_at[rows])
        return ForwardPlan(
            rows=rows, all_rows=len(rows) == state.batch_size, start=start, end=end, kv=self.kv, key_end=end,
            refresh=True,
        )

    def _sub_block_plan(self, state, window, rows, pad, need_lo, need_hi) -> ForwardPlan | None:
        first = window.start + window.eligible.int().argmax(dim=1)  # first eligible column per row
        block_start = self._block_floor(first, pad)
        if window.sub_start is None:  # the iteration manager has no sub-blocks: the sub-block is the block
            return None
        sub_start, sub_end = window.sub_start, window.sub_end  # [b] each row's sub-block (the iteration's)
        ok = (
            (first > block_start)
            & (state.canvas[rows, sub_start] != state.mask_id)
            & (self.full_at[rows] == block_start)
            & (self.valid_end[rows] >= block_start)
        )
        if not bool(ok.all()):
            return None
        length = state.length
        start = min(int(sub_start.min()), need_lo)
        end = max(int(torch.clamp(torch.minimum(sub_end, block_start + self.bs), max=length).max()), need_hi)
        key_end = max(end, min(length, int((block_start + self.bs).max())))
        return ForwardPlan(
            rows=rows, all_rows=len(rows) == state.batch_size, start=start, end=end, kv=self.kv, key_end=key_end,
            refresh=False,
        )
