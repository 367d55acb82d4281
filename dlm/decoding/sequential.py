"""``sequential``: left-to-right remasking, SDAR's ``sequential`` strategy (Cheng et al., 2025, arXiv
2510.06303; ``block_diffusion_generate`` in JetAstra/SDAR's ``generate.py``).

Each step commits the window's quota of eligible positions from the left (SDAR: ``num_transfer_tokens[step]``
positions starting at the block's first mask; a block fills left to right, so its masks are contiguous and
these are the leftmost masked positions), whatever the model's confidence. Tokens are drawn as SDAR draws
them (:mod:`dlm.decoding.sampling`: argmax at temperature 0; else the temperature-scaled distribution,
top-k then top-p filtered), never MASK.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import draw_spans
from dlm.decoding.sampling import draw, filtered_probs
from dlm.messages import Commit, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


class SequentialConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.0, ge=0.0, description="sampling temperature; 0 = greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus filter when sampling")
    top_k: int | None = Field(None, gt=0, description="top-k filter when sampling, applied before top_p")


def leftmost_select(eligible: Tensor, quota: Tensor) -> Tensor:
    """[b, W] bool: the first ``quota[r]`` eligible positions of each row (all of them if fewer)."""
    rank = eligible.long().cumsum(dim=1)  # 1 at the first eligible position
    return eligible & (rank <= quota[:, None])


class Sequential(DecodingStrategy):
    Config = SequentialConfig
    joinable = True

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        sampling = c.temperature > 0
        probs = filtered_probs(logits, temperature=c.temperature, top_p=c.top_p if sampling else None,
                               top_k=c.top_k if sampling else None, top_k_first=True)
        tokens, _ = draw(probs, mask_id=window.mask_id, temperature=c.temperature, generator=generator,
                         rows=window.rows, spans=draw_spans(window, c.temperature))
        return Commit(leftmost_select(window.eligible, window.quota.clamp(min=1).to(torch.long)), tokens)
