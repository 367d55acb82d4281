"""``jacobi``: Jacobi decoding's acceptance rule (Hu et al., 2025, "Fast and Accurate Causal Parallel Decoding
using Jacobi Forcing", arXiv 2512.14681; hao-ai-lab/JacobiForcing ``_accept_lengths``).

The row's eligible positions hold its draft (provisional tokens, or MASK where nothing was drafted yet).
With greedy predictions ``g`` (argmax, never MASK) of those positions, the longest run of leading eligible
positions whose draft equals ``g`` is accepted, plus the first position after it (its prediction was made
from an all-correct context): those are committed with ``g``. Every other eligible position gets ``g`` as its
next draft (a :class:`~dlm.messages.Drafts` extension of the commit), which the next forward verifies. On a
causal model driven left to right (``iteration: jacobi``) the committed tokens are exactly the greedy
autoregressive ones.

Rejection recycling (``pool_size > 0``; the paper's n-gram pool, hao-ai-lab/JacobiForcing
``_build_candidates``) lives in :mod:`dlm.decoding.recycling`: rejected drafts are kept and, when they
continue the row's last committed token, verified next to the regular draft in the same forward. The drafts
verified are read from the canvas (the commit is written after ``select``); the pools are run memory on the
state, per batch row.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import propose
from dlm.decoding.recycling import RecyclingPools
from dlm.messages import Candidates, Commit, Drafts, Keep, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


class JacobiDecodingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pool_size: int = Field(0, ge=0, description="rejection recycling: n-grams kept per row (0: off; paper: 4)")


def accepted(drafts: Tensor, greedy: Tensor, eligible: Tensor) -> Tensor:
    """[b, W] positions accepted: the leading eligible drafts equal to ``greedy`` plus the one after them."""
    wrong = eligible & (drafts != greedy)
    wrong_before = wrong.long().cumsum(dim=-1) - wrong.long()  # mismatches strictly before each position
    return eligible & (wrong_before == 0)


class JacobiDecoding(DecodingStrategy):
    Config = JacobiDecodingConfig
    joinable = True

    def start(self, state: GenerationState) -> RecyclingPools | None:
        if self.config.pool_size > 0:
            return RecyclingPools.fresh(state.batch_size, self.config.pool_size)
        return None

    def prepare(self, state: GenerationState, window: Window) -> Window:
        pools: RecyclingPools | None = self.memory(state)
        return window if pools is None else pools.attach(state, window)

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        eligible = window.eligible
        current = state.canvas[window.rows, window.start : window.end]  # [b, W] the drafts verified (not yet committed)
        cand = window.get(Candidates)
        if cand is None:
            greedy = self._greedy(logits, window, generator)  # [b, W]
            accept = accepted(current, greedy, eligible)
            commit = Commit(accept, greedy, Drafts(eligible & ~accept))
        else:  # the regular draft (candidate 0) and recycled ones: keep the longest acceptance, first on ties
            drafts = torch.where(cand.select, cand.tokens, current[:, None, :])  # [b, K, W]
            greedy = torch.stack([self._greedy(logits[:, k], window, generator) for k in range(cand.count)], dim=1)
            accept = accepted(drafts, greedy, eligible[:, None, :])  # [b, K, W]
            keep = accept.sum(dim=-1).argmax(dim=1)  # [b] first maximum
            pick = torch.arange(len(keep), device=keep.device)
            accept, greedy = accept[pick, keep], greedy[pick, keep]  # [b, W]
            commit = Commit(accept, greedy, Drafts(eligible & ~accept), Keep(keep))
        pools: RecyclingPools | None = self.memory(state)
        if pools is not None:
            pools.record(state, window, commit)
        return commit

    @staticmethod
    def _greedy(logits: Tensor, window: Window, generator: RowRNG) -> Tensor:
        greedy, _ = propose(window.window_logits(logits), mask_id=window.mask_id, temperature=0.0,
                            generator=generator, rows=window.rows)
        return greedy  # [b, W]
