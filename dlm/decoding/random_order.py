"""``random``: LLaDA's random remasking (commit ``k`` uniformly random eligible positions).

Nie et al. (2025), Algorithm 4: same schedule as low-confidence remasking, but the positions to commit are
ranked by a uniform random score instead of the model's confidence.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import propose, row_rand, row_spans, top_k_select
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.messages import Commit, Window


class RandomConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")


class RandomRemasking(DecodingStrategy):
    Config = RandomConfig
    joinable = True

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        spans = row_spans(window)
        tokens, _ = propose(logits, mask_id=window.mask_id, temperature=self.config.temperature, generator=generator,
                            rows=window.rows, spans=spans)
        score = row_rand(generator, window.rows, (window.width,), spans)
        return Commit(top_k_select(score, window.eligible, window.quota.clamp(min=1)), tokens)
