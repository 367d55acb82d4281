"""``entropy_threshold``: dParallel's entropy-threshold parallel decoding (Chen et al., 2025, "dParallel:
Learnable Parallel Decoding for dLLMs", arXiv 2509.26488; github.com/czg1225/dParallel).

Each step commits every eligible position whose predictive entropy ``H = -Σ p·log(p + 1e-12)`` (nats,
float64 softmax over the full vocabulary) is at most ``threshold`` (``strict: true``: below it, Dream's
variant), and always the lowest-entropy eligible position, so every step commits at least one token. The
schedule's quota is ignored. With dParallel's certainty-forced distilled checkpoints this rule, run without
a cache, is their whole inference recipe (``examples/dparallel-llada.yaml``).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import draw_spans, propose
from dlm.messages import Commit, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


def entropy(logits: Tensor) -> Tensor:
    """[b, W] float64 entropy in nats of softmax(logits [b, W, V]), with dParallel's 1e-12 inside the log."""
    p = torch.softmax(logits.to(torch.float64), dim=-1)
    return -(p * torch.log(p + 1e-12)).sum(dim=-1)


def entropy_select(h: Tensor, eligible: Tensor, tau: float, *, strict: bool = False) -> Tensor:
    """[b, W] bool: eligible positions with entropy ``h`` ≤ ``tau`` (``< tau`` when ``strict``), plus each
    row's lowest-entropy eligible position (the first one on a tie)."""
    select = eligible & ((h < tau) if strict else (h <= tau))
    best = h.masked_fill(~eligible, torch.inf).argmin(dim=1)  # [b]
    select[torch.arange(len(best), device=best.device), best] = True
    return select & eligible


class EntropyThresholdConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.5, ge=0.0, description="commit positions whose entropy (nats) is <= threshold")
    strict: bool = Field(False, description="commit entropy < threshold instead (dParallel's Dream variant)")
    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")


class EntropyThreshold(DecodingStrategy):
    Config = EntropyThresholdConfig
    joinable = True

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        tokens, _ = propose(logits, mask_id=window.mask_id, temperature=c.temperature, generator=generator,
                            rows=window.rows, spans=draw_spans(window, c.temperature))
        return Commit(entropy_select(entropy(logits), window.eligible, c.threshold, strict=c.strict), tokens)
