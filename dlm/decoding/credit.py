"""``credit``: dInfer's credit decoding (inclusionAI, 2025, arXiv 2510.08666; github.com/inclusionAI/dInfer,
``CreditThresholdParallelDecoder``).

Each row keeps, for its current block, a float32 credit table over the vocabulary at every window position.
At every step of the block but its first the table decays by ``decay``; then each still-masked position adds
``p ** power`` at its argmax token, ``p`` being the top-1 probability of the raw float32 softmax (argmax over
the whole vocabulary). The step is then Fast-dLLM's threshold rule (:func:`threshold_select`, ``≥ threshold``
plus the most confident) applied to the fused logits ``logits + alpha · log(1 + credit)``: tokens that kept
winning earlier steps cross the threshold sooner. ``alpha: 0`` is exactly ``threshold``.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import propose, threshold_select
from dlm.messages import Commit, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


def add_credit(table: Tensor, logits: Tensor, masked: Tensor, power: float) -> None:
    """Add ``p ** power`` at each masked position's raw argmax token, in place. table [b, W, V] float32,
    logits [b, W, V], masked [b, W]."""
    top, idx = torch.softmax(logits.to(torch.float32), dim=-1).max(dim=-1)  # [b, W]
    table.scatter_add_(2, idx[..., None], (top.pow(power) * masked.to(top.dtype))[..., None])


def fuse(logits: Tensor, table: Tensor, alpha: float) -> Tensor:
    """Logits boosted by their credit: ``logits + alpha · log(1 + table)`` ([b, W, V])."""
    return logits + alpha * torch.log(table + 1)


class CreditConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.9, ge=0.0, le=1.0, description="commit positions with fused confidence >= threshold")
    alpha: float = Field(0.7, ge=0.0, description="weight of log(1 + credit) added to the logits; 0 = threshold")
    power: float = Field(0.2, gt=0.0, description="credit added per step: top-1 probability ** power")
    decay: float = Field(0.8, ge=0.0, le=1.0, description="factor the credit decays by at each later step of a block")
    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")


class Credit(DecodingStrategy):
    Config = CreditConfig

    def start(self, state: GenerationState) -> None:
        b = state.batch_size
        self.table: Tensor | None = None  # [B, W, V] float32 credit of each row's current block
        self.key = torch.full((b, 2), -1, dtype=torch.long)  # [B] (block, window start) the table is of
        self.decisions = torch.zeros(b, dtype=torch.long)  # [B] steps taken in that block

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        rows = window.rows.cpu()
        shape = (len(self.key), *logits.shape[1:])
        if self.table is None or self.table.shape != shape:
            self.table = torch.zeros(shape, dtype=torch.float32, device=logits.device)
            self.key[:] = -1
        key = torch.tensor([window.block, window.start])
        stale = (self.key[rows] != key).any(dim=1)  # rows entering a new block start a fresh table
        self.key[rows] = key
        self.decisions[rows[stale]] = 0
        table = self.table[window.rows]  # [b, W, V]
        table[stale.to(table.device)] = 0
        later = (self.decisions[rows] > 0).to(table.device)
        table.mul_(torch.where(later, c.decay, 1.0).to(table.dtype)[:, None, None])
        add_credit(table, logits, window.eligible, c.power)
        self.table[window.rows] = table
        self.decisions[rows] += 1
        tokens, confidence = propose(fuse(logits, table, c.alpha), mask_id=window.mask_id,
                                     temperature=c.temperature, generator=generator, rows=window.rows)
        return Commit(threshold_select(confidence, window.eligible, c.threshold), tokens)

    def finish(self) -> None:
        self.table = None
        del self.key, self.decisions
