"""``periodic``: refresh the whole canvas every ``r`` steps of a block, otherwise compute only the window.

The variant of Fast-dLLM used for LLaDA-V (Wu et al., 2025, arXiv 2505.22618, §4 and Table 10: block
length 96, cache refreshed every r ∈ {2, …, 32} steps instead of once per block). At step ``s`` of a block
(``window.step``) the forward is:

- ``s % r == 0`` (always at the block's first step): a refresh, a full forward over the whole canvas that
  writes every column's K/V into the preallocated buffer and decodes from exact logits;
- otherwise: the window's columns only (dual-cache style), whose fresh K/V overwrite their own slots,
  attending to the prefix and suffix K/V of the last refresh. A model with shifted logits (Dream) reads
  the window's predictions one column earlier, so that column is computed too.

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

from pydantic import BaseModel, ConfigDict, Field

from dlm.cache import ForwardPlan, PrefixCache, Window
from dlm.state import GenerationState


class PeriodicCacheConfig(BaseModel):
    """``cache:`` section for ``name: periodic``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    refresh_every: int = Field(
        4, ge=1, description="r: full-canvas refresh at block steps 0, r, 2r, …; 1 = no reuse (exact)"
    )


class PeriodicCache(PrefixCache):
    """Buffer allocation, composition check and logit-shift handling come from dlm's ``prefix`` cache;
    only the plan (when to refresh, what to compute in between) differs."""

    Config = PeriodicCacheConfig

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        refresh = window.step % self.config.refresh_every == 0
        return self.peek(ForwardPlan(
            rows=window.rows,
            all_rows=len(window.rows) == state.batch_size,
            start=0 if refresh else window.start - self.shift,
            end=state.length if refresh else window.end,
            kv=self.kv,
            key_end=state.length,
            refresh=refresh,
        ), window)
