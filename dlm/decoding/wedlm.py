"""``wedlm``: WeDLM's fill rule (Liu et al., 2025, arXiv 2512.22737; Tencent/WeDLM ``sampler.py``
``select_positions_to_fill``).

For each eligible (masked) position: the entropy ``H`` of its predicted distribution plus a penalty for its
distance from the row's first eligible position, ``H' = H + position_penalty · (column − first)``. Every
position with ``H' < threshold`` is filled; when none is (or ``threshold`` is null), the one with the
smallest ``H'``. Tokens: the argmax (temperature 0) or a Gumbel-max draw from ``softmax(logits / T)``;
MASK is never proposed (the reference's argmax may pick it). Entropies are float64 over the full vocabulary.
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


class WeDLMDecodingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float | None = Field(0.4, ge=0.0, description="fill positions with penalised entropy below this "
                                    "(nats); null: one position per step")
    position_penalty: float = Field(0.02, ge=0.0, description="entropy added per column of distance from the "
                                    "first eligible position")
    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")


def entropy(logits: Tensor) -> Tensor:
    """[..., V] logits -> [...] float64 entropy of softmax(logits), in nats (-inf logits contribute 0)."""
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return -(logp.exp() * logp.masked_fill(torch.isinf(logp), 0.0)).sum(dim=-1)


class WeDLMDecoding(DecodingStrategy):
    Config = WeDLMDecodingConfig
    joinable = True

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        logits = window.window_logits(logits)
        tokens, _ = propose(logits, mask_id=window.mask_id, temperature=c.temperature, generator=generator,
                            rows=window.rows, spans=draw_spans(window, c.temperature))  # [b, W]
        eligible = window.eligible
        cols = torch.arange(window.width, device=eligible.device)[None, :]
        first = torch.where(eligible, cols, window.width).min(dim=1, keepdim=True).values  # [b, 1]
        score = entropy(logits) + c.position_penalty * (cols - first)  # [b, W]
        score = score.masked_fill(~eligible, torch.inf)
        select = eligible & (score < c.threshold) if c.threshold is not None else torch.zeros_like(eligible)
        best = score.argmin(dim=1)
        fallback = ~select.any(dim=1) & eligible.any(dim=1)
        select[fallback, best[fallback]] = True
        return Commit(select, tokens)
