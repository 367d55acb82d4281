"""``prefix``: Fast-dLLM's prefix KV cache (Wu et al., 2025, arXiv 2505.22618, §3.2).

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

Rows at different places of their schedules (a row that joined later, a row further on) share one range
forward: each row stores only its own columns (per-row write bounds), so its K/V are what they are alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from dlm.cache.base import CacheManager
from dlm.cache.fast_dllm import block_cache_problem
from dlm.memory import RowMemory, shared_field
from dlm.messages import CacheEnv, ForwardPlan, KVStore, ModelCapabilities, SubBlocks, Window
from dlm.state import GenerationState


class PrefixCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class KVMemory(RowMemory):
    """A block cache's run memory: the KV store of the batch's rows and the model's logit shift."""

    movable = True  # nothing in canvas columns but the store, which moves itself

    kv: KVStore
    shift: int = shared_field(default=0)


def row_range_plan(state: GenerationState, window: Window, kv: KVStore | None, lo: Tensor, hi: Tensor, *,
                   shift: int, refresh: bool | Tensor) -> ForwardPlan:
    """A range plan storing columns ``[lo[r], hi[r])`` of each window row ([b] host each), also computing
    (as a peek) whatever the window's logits span needs; one shared bound when the rows agree. ``refresh``:
    whether each row ([b] host bool) or every row refreshes."""
    if isinstance(refresh, Tensor):
        refresh = bool(refresh.all())
    need_lo, need_hi = window.logits_start - shift, window.logits_end - shift
    start, end = min(int(lo.min()), need_lo), max(int(hi.max()), need_hi)
    if bool((lo == lo[0]).all()) and bool((hi == hi[0]).all()):
        write_start, write_end = int(lo[0]), int(hi[0])
    else:
        write_start, write_end = lo.to(state.device), hi.to(state.device)
    return ForwardPlan(rows=window.rows, all_rows=len(window.rows) == state.batch_size, start=start, end=end,
                       kv=kv, key_end=state.length, refresh=refresh, write_start=write_start, write_end=write_end)


class PrefixCache(CacheManager):
    """Base of Fast-dLLM's block caches: the buffer, the model check, shifted logits (:meth:`cached_start`)."""

    Config = PrefixCacheConfig
    joinable = True
    # every plan computes each row's whole block, where edits happen (subclasses computing less must drop it)
    provides = frozenset({"edit_aware"})

    def check(self, capabilities: ModelCapabilities) -> str | None:
        return block_cache_problem(capabilities)

    def start(self, state: GenerationState, env: CacheEnv) -> KVMemory:
        return KVMemory(env.new_kv(state.batch_size, state.length), shift=env.capabilities.logit_shift)

    def cached_start(self, state: GenerationState, window: Window) -> Tensor:
        """[b] host: first column a cached (non-refresh) step stores per row: its block, or the column its
        window needs (one before the window for shifted models)."""
        shift = self.memory(state).shift
        sub = window.get(SubBlocks)  # a row's own span inside its block (dream_blockwise), when given
        own = sub.start if sub is not None else torch.clamp(window.block_start, min=window.start)
        return torch.minimum(window.block_start, own - shift)

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: KVMemory = self.memory(state)
        refresh = window.first_step
        lo = torch.where(refresh, 0, self.cached_start(state, window))
        hi = torch.full_like(lo, state.length)
        return row_range_plan(state, window, m.kv, lo, hi, shift=m.shift, refresh=refresh)
