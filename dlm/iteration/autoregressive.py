"""``autoregressive``: one token per forward, left to right (the baseline causal decoders are measured by).

Each step's window is the row's first pending column; its logit comes from the output of the column before
it (the next-token prediction of a causal LM), so with ``cache: append`` a step computes one column. With a
greedy strategy (``low_confidence`` at temperature 0) this is greedy autoregressive decoding, token for token
what transformers' ``generate`` gives (with the MASK placeholder, which dlm never proposes, suppressed).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dlm.iteration.sliding import SlidingWindowManager, first_pending, sliding_window
from dlm.messages import Window
from dlm.state import GenerationState


class AutoregressiveConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(128, gt=0, description="tokens to generate per prompt (at most)")
    early_stop: bool = Field(True, description="end a row once it committed an end token")


class Autoregressive(SlidingWindowManager):
    Config = AutoregressiveConfig

    def window(self, state: GenerationState) -> Window:
        return sliding_window(state, first_pending(state), 1)
