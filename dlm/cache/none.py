"""``none``: no cache, a full forward over every active row's whole canvas at every step.

The exact computation every cache policy is compared with.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from dlm.cache.base import CacheManager
from dlm.messages import ForwardPlan, Window
from dlm.models.base import ModelAdapter
from dlm.state import GenerationState


class NoCacheConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoCache(CacheManager):
    Config = NoCacheConfig

    def start(self, state: GenerationState, model: ModelAdapter) -> None:
        pass

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        return ForwardPlan(
            rows=window.rows,
            all_rows=len(window.rows) == state.batch_size,
            start=0,
            end=state.length,
            kv=None,
            key_end=state.length,
            refresh=False,
        )
