"""``threshold``: Fast-dLLM's confidence-aware parallel decoding (Wu et al., 2025, Algorithm 1).

Commit every eligible position whose proposed token has confidence ≥ τ, and always the single most
confident eligible position, so each step commits at least one token. The schedule's quota is ignored.
Default τ = 0.9 (the paper's setting). A window's :class:`~dlm.messages.ThresholdFloor` raises τ for the step
(dInfer's iteration smoothing lowers its floor from 1 step by step).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import draw_spans, propose, step_threshold, threshold_select
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.messages import Commit, Window


class ThresholdConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.9, ge=0.0, le=1.0, description="commit positions with confidence >= threshold")
    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")


class Threshold(DecodingStrategy):
    Config = ThresholdConfig
    reads_eligible_only = True
    joinable = True
    provides = frozenset({"threshold_floor"})

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(
            logits, mask_id=window.mask_id, temperature=self.config.temperature, generator=generator,
            rows=window.rows, spans=draw_spans(window, self.config.temperature),
            read=window.eligible,
        )
        tau = step_threshold(window, self.config.threshold, confidence.device)
        return Commit(threshold_select(confidence, window.eligible, tau), tokens)
