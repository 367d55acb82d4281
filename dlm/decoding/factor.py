"""``factor``: Fast-dLLM's factor-based parallel decoding (Wu et al., 2025, arXiv 2505.22618, §3.3).

Sort the m eligible confidences c(1) ≥ … ≥ c(m). The k-th passes when c(k) ≥ 1 − f/(k+1) (the first always
passes); the commit set is the prefix before the first failing rank. This follows the reference code, not
the paper's strict ``<``, including its quirk: when the first failure is the last eligible rank (k = m), all
m positions are committed anyway, so a row with exactly two eligible positions always commits both.
Default f = 1.0 (the reference scripts' value).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import draw_spans, propose
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.messages import Commit, Window


class FactorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    factor: float = Field(1.0, gt=0.0, description="f in the rule c(k) >= 1 - f/(k+1)")
    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")


def factor_count(sorted_conf: Tensor, eligible_count: Tensor, factor: float) -> Tensor:
    """[b] number of positions to commit, from confidences sorted descending [b, W] (ineligible = -inf)."""
    width = sorted_conf.shape[1]
    rank = torch.arange(1, width + 1, device=sorted_conf.device, dtype=torch.float64)  # k = 1..W
    tau = 1.0 - factor / (rank + 1.0)
    tau[0] = -1.0
    m = eligible_count[:, None]
    fail = (sorted_conf < tau[None, :]) & (rank[None, :] <= m)  # [b, W]
    first_fail = torch.where(fail.any(dim=1), fail.int().argmax(dim=1) + 1, width + 1)  # 1-based
    n = torch.where(first_fail > eligible_count, eligible_count, first_fail - 1)
    return torch.where(first_fail == eligible_count, eligible_count, n)  # the reference's k* = m quirk


def factor_select(confidence: Tensor, eligible: Tensor, factor: float) -> Tensor:
    """[b, W] bool: the positions the factor rule commits."""
    score = confidence.to(torch.float64).masked_fill(~eligible, -torch.inf)
    sorted_conf, order = score.sort(dim=1, descending=True, stable=True)
    n = factor_count(sorted_conf, eligible.sum(dim=1), factor)
    ranks = torch.arange(score.shape[1], device=score.device)[None, :]
    select = torch.zeros_like(eligible)
    select.scatter_(1, order, ranks < n[:, None])
    return select & eligible


class Factor(DecodingStrategy):
    Config = FactorConfig
    reads_eligible_only = True
    joinable = True

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(
            logits, mask_id=window.mask_id, temperature=self.config.temperature, generator=generator,
            rows=window.rows, spans=draw_spans(window, self.config.temperature),
            read=window.eligible,
        )
        return Commit(factor_select(confidence, window.eligible, self.config.factor), tokens)
