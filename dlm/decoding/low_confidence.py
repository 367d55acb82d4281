"""``low_confidence``: LLaDA's schedule-driven remasking (commit the top-k most confident positions).

Nie et al., "Large Language Diffusion Models" (2025), Algorithm 5 (low-confidence remasking): each step
commits the ``k`` eligible positions whose proposed token has the highest probability, ``k`` being the
iteration manager's quota for this step.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import draw_spans, propose, top_k_select
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.messages import Commit, Window


class LowConfidenceConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")


class LowConfidence(DecodingStrategy):
    Config = LowConfidenceConfig
    reads_eligible_only = True
    joinable = True

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        tokens, confidence = propose(
            logits, mask_id=window.mask_id, temperature=self.config.temperature, generator=generator,
            rows=window.rows, spans=draw_spans(window, self.config.temperature),
            read=window.eligible,
        )
        quota = window.quota.clamp(min=1)
        return Commit(top_k_select(confidence, window.eligible, quota), tokens)
