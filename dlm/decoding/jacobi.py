"""``jacobi``: Jacobi decoding's acceptance rule (Hu et al., 2025, "Fast and Accurate Causal Parallel Decoding
using Jacobi Forcing", arXiv 2512.14681; hao-ai-lab/JacobiForcing ``_accept_lengths``).

The row's eligible positions hold its draft (provisional tokens, or MASK where nothing was drafted yet).
With greedy predictions ``g`` (argmax, never MASK) of those positions, the longest run of leading eligible
positions whose draft equals ``g`` is accepted, plus the first position after it (its prediction was made
from an all-correct context): those are committed with ``g``. Every other eligible position gets ``g`` as its
next draft (``Commit.drafts``), which the next forward verifies. On a causal model driven left to right
(``iteration: jacobi``) the committed tokens are exactly the greedy autoregressive ones.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import propose
from dlm.messages import Commit, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


class JacobiDecodingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JacobiDecoding(DecodingStrategy):
    Config = JacobiDecodingConfig
    current: Tensor | None = None  # [b, W] the window's tokens before the forward (drafts, MASK, committed)

    def prepare(self, state: GenerationState, window: Window) -> Window:
        self.current = state.canvas[window.rows, window.start : window.end].clone()  # [b, W] the drafts verified
        return window

    def select(self, logits: Tensor, window: Window, generator: RowRNG) -> Commit:
        greedy, _ = propose(window.window_logits(logits), mask_id=window.mask_id, temperature=0.0,
                            generator=generator, rows=window.rows)  # [b, W]
        eligible = window.eligible
        wrong = eligible & (self.current != greedy)
        wrong_before = wrong.long().cumsum(dim=1) - wrong.long()  # mismatches strictly before each position
        accept = eligible & (wrong_before == 0)  # matching run + the first position after it
        return Commit(accept, greedy, drafts=eligible & ~accept)

    def finish(self) -> None:
        self.current = None
