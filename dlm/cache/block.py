"""``block``: Fast-dLLM v2's hierarchical cache for block-causal models (Wu et al., 2025, arXiv 2509.26328).

**Block-level cache (exact).** With block-causal attention a completed block's K/V never change: its
queries never see later blocks. The manager keeps, per row, ``valid_end``: the canvas column up to which
the buffer holds final K/V (whole blocks, in the row's own positions, whose tokens were all committed when
last computed). A row's step computes from ``valid_end`` (or the column before its first eligible position,
for shifted logits) to the end of the last block an output its eligible positions read lies in (the
window's logits span on a side a strategy widened), and attends to slots ``[0, end)``. Every query the row
needs therefore sees exactly the keys it sees without cache: the result equals ``none`` up to float
rounding, for any iteration manager and any batch (proved token for token by the tests).

**Sub-block cache (approximate, ``sub_block_cache: true``).** As the reference's ``use_block_cache``: inside
the current block, a step whose sub-block's first position is already committed, and whose block has had a
full forward, computes only its sub-block and attends to the rest of the block as cached at that last full
forward (stale for the other sub-blocks, like Fast-dLLM's dual cache). A step refreshes (full block) when
the sub-block's first position is still masked, or the block has had no full forward yet. The first
position's own shifted logit is never needed, since that position is committed. Exact for a 1-layer model
and when the iteration's ``sub_block_size`` equals the block size. The sub-blocks are the iteration
manager's, read from the window (:class:`~dlm.messages.SubBlocks`), so the two cannot disagree.

**Edited tokens** (an editing strategy's :class:`~dlm.messages.Edits`, recorded in ``state.edited``): a block
holding an edited column is no longer final, so a row's ``valid_end`` falls back to that block's start, and a
sub-block step after an edit refreshes the whole block.

**Blocks from the prompt's end** (D2F's mask, ``capabilities.blocks_from == "prompt"``): the prompt is one
block and the blocks of ``block_size`` start at the generation region; the same rule holds block by block.

**Rows at different places.** Everything above is decided per row (its own ``valid_end``, eligible
positions, sub-block and last full forward, kept in the run memory), and one range forward serves every
row with per-row write bounds: a sub-block row stores only its sub-block, a full row from its ``valid_end``.
A full row also stores up to the end of the step's widest block: columns past its own last block are
garbage that the block-causal mask hides from its earlier blocks, and that its later steps recompute (a
block's first step is always a full forward) before they become valid; columns before its ``valid_end``
computed for another row are peeks that read its final K/V. So a row gives in a batch, and when it joins a
running generation at any step, what it gives alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.cache.base import CacheManager
from dlm.cache.prefix import KVMemory
from dlm.memory import shared_field
from dlm.messages import CacheEnv, ForwardPlan, ModelCapabilities, SubBlocks, Window
from dlm.state import GenerationState


class BlockCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sub_block_cache: bool = Field(
        False, description="also reuse the current block's K/V between sub-block steps (sub-blocks: the window's)"
    )


@dataclass
class BlockMemory(KVMemory):
    """The KV store and, per row (host), how far it holds final K/V and where its last full block forward was."""

    block_size: int = shared_field(default=0)  # the model's attention block size
    from_prompt: bool = shared_field(default=False)  # blocks counted from the prompt's end (D2F's mask), not position 0
    valid_end: Tensor | None = None  # [B] long (host): slots before it hold final K/V
    full_at: Tensor | None = None  # [B] long (host): the block start of the row's last full forward over a block


class BlockCache(CacheManager):
    Config = BlockCacheConfig
    joinable = True
    provides = frozenset({"edit_aware"})  # an edited column's block is recomputed (see the module doc)

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if not capabilities.kv_cache:
            return "the model adapter cannot run through a KV buffer"
        if capabilities.attention != "block_causal" or not capabilities.block_size:
            return (
                "the block-level cache is exact only for block-causal attention; the model's attention is "
                f"{capabilities.attention} (use prefix or dual for bidirectional models)"
            )
        return None

    def start(self, state: GenerationState, env: CacheEnv) -> BlockMemory:
        b = state.batch_size
        return BlockMemory(env.new_kv(b, state.length), shift=env.capabilities.logit_shift,
                           block_size=int(env.capabilities.block_size),
                           from_prompt=env.capabilities.blocks_from == "prompt",
                           valid_end=torch.zeros(b, dtype=torch.long), full_at=torch.full((b,), -1, dtype=torch.long))

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: BlockMemory = self.memory(state)
        bs, shift, length = m.block_size, m.shift, state.length
        rows = window.rows
        masked = state.masked()[rows]
        eligible = window.eligible.int()
        reads = [
            rows,
            torch.where(masked.any(dim=1), masked.int().argmax(dim=1), length),  # first masked column
            window.start + eligible.argmax(dim=1),  # first eligible column
            window.end - 1 - eligible.flip(1).argmax(dim=1),  # last eligible column
            state.pad[rows],
        ]
        sub = window.get(SubBlocks) if self.config.sub_block_cache else None
        edited = state.edited[rows] if state.edited is not None else None
        if edited is not None:  # the first column each row's last commit edited (length: none)
            reads.append(torch.where(edited.any(dim=1), edited.int().argmax(dim=1), length))
        if sub is not None:  # is each row's sub-block's first position committed?
            first_col = torch.as_tensor(sub.start).to(state.device).clamp(max=length - 1)
            reads.append((state.canvas[rows, first_col] != state.mask_id).long())
        host = torch.stack(reads).cpu()  # one read of the device
        hrows, first_mask, first, last, pad = host[:5]
        first_edit = host[5] if edited is not None else torch.full_like(pad, length)

        def floor(cols: Tensor) -> Tensor:  # start of the attention block holding ``cols``, in each row's positions
            if m.from_prompt:  # the prompt is one block (from the row's padding on), then blocks from gen_start
                g = state.gen_start
                return torch.where(cols < g, pad, g + torch.div(cols - g, bs, rounding_mode="floor") * bs)
            return pad + torch.div(cols - pad, bs, rounding_mode="floor") * bs

        # the outputs each row's decisions read (its eligible positions; a widened side of the span for all)
        need_lo, need_hi = first - shift, last + 1 - shift
        if window.logits_start < window.start:
            need_lo = torch.full_like(need_lo, window.logits_start - shift)
        if window.logits_end > window.end:
            need_hi = torch.full_like(need_hi, window.logits_end - shift)
        valid, full_at = m.valid_end[hrows], m.full_at[hrows]
        has_edit = first_edit < length
        valid = torch.where(has_edit, torch.minimum(valid, floor(first_edit)), valid)  # its block is not final
        end = torch.clamp(floor(need_hi - 1) + bs, max=length)  # a full forward: up to its last needed block
        lo, hi, key = torch.minimum(valid, need_lo), end, end
        block_start = floor(first)
        cached = torch.zeros(len(hrows), dtype=torch.bool)
        if sub is not None:
            sub_start, sub_end = torch.as_tensor(sub.start).cpu(), torch.as_tensor(sub.end).cpu()
            committed = host[6 if edited is not None else 5].bool()
            cached = (first > block_start) & committed & (full_at == block_start) & (valid >= block_start) & ~has_edit
            block_end = torch.clamp(block_start + bs, max=length)
            sub_hi = torch.maximum(torch.minimum(sub_end, block_end), need_hi)
            lo = torch.where(cached, torch.minimum(sub_start, need_lo), lo)
            hi = torch.where(cached, sub_hi, hi)
            key = torch.where(cached, torch.maximum(sub_hi, block_end), key)
        full = ~cached
        if bool(full.any()):
            # after this forward, whole blocks whose tokens are all committed now hold final K/V
            limit = torch.minimum(first_mask, end)
            m.valid_end[hrows] = torch.where(full, torch.maximum(valid, floor(limit).clamp(min=0)), valid)
            if self.config.sub_block_cache:
                covered = (block_start >= lo) & (torch.clamp(block_start + bs, max=length) <= end)
                m.full_at[hrows] = torch.where(full & (first > block_start) & covered, block_start, full_at)
            # full rows store up to the widest block of the step (see the module doc), so every output of the
            # logits span they return is exact
            span_end = torch.clamp(floor(torch.full_like(pad, window.logits_end - shift - 1)) + bs, max=length)
            top = int(torch.maximum(end, span_end)[full].max())
            hi = torch.where(full, top, hi)
            key = torch.where(full, top, key)
        start = min(int(lo.min()), window.logits_start - shift)
        stop = max(int(hi.max()), window.logits_end - shift)
        key_end = max(int(key.max()), stop)
        if bool((lo == lo[0]).all()) and bool((hi == hi[0]).all()):
            write_start, write_end = int(lo[0]), int(hi[0])
        else:
            write_start, write_end = lo.to(state.device), hi.to(state.device)
        return ForwardPlan(rows=rows, all_rows=len(rows) == state.batch_size, start=start, end=stop, kv=m.kv,
                           key_end=key_end, refresh=not bool(cached.any()), write_start=write_start,
                           write_end=write_end)
