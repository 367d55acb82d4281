"""``strict_threshold``: Fast-dLLM v2's parallel decoding rule (Wu et al., 2025, arXiv 2509.26328).

Commit every eligible position whose drawn token has probability strictly greater than τ, plus each row's
most confident eligible position (so every step commits at least one token). Tokens and probabilities
follow v2's ``sample_with_top_p``: at temperature 0 the argmax of ``softmax(logits)``; otherwise the
temperature-scaled, top-p filtered distribution, the confidence being the drawn token's probability under
it (see :mod:`dlm.decoding.sampling`). τ = 1 (the reference ``generate`` default) commits one token per
step; the paper's evaluation uses 0.9.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import draw_spans, threshold_select
from dlm.decoding.sampling import draw, filtered_probs
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.messages import Commit, Window


class StrictThresholdConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.9, ge=0.0, le=1.0, description="commit positions with confidence > threshold")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature; 0 = greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus filter when sampling (v2 uses 0.95)")


class StrictThreshold(DecodingStrategy):
    Config = StrictThresholdConfig
    joinable = True

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        top_p = c.top_p if c.temperature > 0 else None  # v2 filters only when sampling
        probs = filtered_probs(logits, temperature=c.temperature, top_p=top_p, top_k=None)
        tokens, confidence = draw(
            probs, mask_id=window.mask_id, temperature=c.temperature, generator=generator, rows=window.rows,
            spans=draw_spans(window, c.temperature),
        )
        return Commit(threshold_select(confidence, window.eligible, c.threshold, strict=True), tokens)
