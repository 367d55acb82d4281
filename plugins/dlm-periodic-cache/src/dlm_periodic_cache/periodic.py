"""``periodic``: refresh the whole canvas every ``r`` steps of a block, otherwise compute only the window.

The variant of Fast-dLLM used for LLaDA-V (Wu et al., 2025, arXiv 2505.22618, §4 and Table 10: block
length 96, cache refreshed every r ∈ {2, …, 32} steps instead of once per block). At step ``s`` of a row's
block (``window.step``, one entry per row) the row's forward is:

- ``s % r == 0`` (always at the block's first step): a refresh, a full forward over the whole canvas that
  writes every column's K/V into the preallocated buffer and decodes from exact logits;
- otherwise: the row's own window only (dual-cache style), whose fresh K/V overwrite their own slots,
  attending to the prefix and suffix K/V of the last refresh. A model with shifted logits (Dream) reads
  the window's predictions one column earlier, so that column is computed too.

Rows at different steps or blocks (a row that joined a running generation starts at its block 0, step 0)
share one range forward in which each row stores only its own columns (per-row write bounds,
:func:`dlm.cache.prefix.row_range_plan`); the other columns it computes are peeks. So each row gives
exactly what it gives alone (``joinable``). The run memory (the KV store, the logit shift) is the ``prefix``
cache's, kept on the generation's state.

Exactness, relative to ``none`` (the no-cache computation):

- ``refresh_every = 1``: every step is a refresh, so tokens and NFE are identical to ``none``;
- a 1-layer model: exact for any ``r`` — layer-0 K/V depend only on a column's token and position, and the
  columns outside the window do not change during a block;
- a block completed in its refresh step (e.g. one step per block): identical to ``none``;
- ``refresh_every`` above the number of steps a block takes: identical to Fast-dLLM's ``dual``;
- otherwise approximate: with ≥ 2 layers the cached K/V go stale as the window fills, and a smaller ``r``
  trades speed for staleness.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from dlm.cache import KVMemory, PrefixCache, row_range_plan
from dlm.cache.columns import own_span
from dlm.messages import ForwardPlan, Window
from dlm.state import GenerationState


class PeriodicCacheConfig(BaseModel):
    """``cache:`` section for ``name: periodic``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    refresh_every: int = Field(
        4, ge=1, description="r: full-canvas refresh at block steps 0, r, 2r, …; 1 = no reuse (exact)"
    )


class PeriodicCache(PrefixCache):
    """Buffer allocation (the run memory ``start`` returns), composition check and logit-shift handling come
    from dlm's ``prefix`` cache; only the plan (when to refresh, what to compute in between) differs."""

    Config = PeriodicCacheConfig
    joinable = True

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        m: KVMemory = self.memory(state)
        refresh = window.step % self.config.refresh_every == 0  # [b] host, per row
        own_lo, own_hi = own_span(window, widened=False)  # a widened span's other columns are peeks
        lo = torch.where(refresh, 0, own_lo - m.shift)
        hi = torch.where(refresh, state.length, own_hi)
        return row_range_plan(state, window, m.kv, lo, hi, shift=m.shift, refresh=bool(refresh.all()))
