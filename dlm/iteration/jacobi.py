"""``jacobi``: Jacobi decoding of a causal model (Hu et al., 2025, "Fast and Accurate Causal Parallel
Decoding using Jacobi Forcing", arXiv 2512.14681; hao-ai-lab/JacobiForcing ``jacobi_decoding.py``).

Each row drafts ``n`` tokens after its committed text; one causal forward over [committed | draft] gives
``n + 1`` greedy predictions, so the window is the row's first ``n + 1`` pending columns. The ``jacobi``
decoding strategy accepts the longest draft prefix equal to the greedy predictions plus one token and writes
the other predictions as the next draft (provisional tokens, ``Commit.drafts``): a Jacobi fixed-point
iteration. Positions entering the window hold the MASK placeholder until their first prediction. With
``cache: append`` accepted drafts keep the K/V they were computed with.

Greedy Jacobi decoding gives exactly the greedy autoregressive output, in at most as many forwards: every
accepted token was predicted from a context equal to the committed one.

Not built: the paper's multi-block drafting and rejection recycling (``K = 2`` blocks, an n-gram pool of 4,
``r = 0.85``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dlm.iteration.sliding import SlidingWindowManager, first_pending, sliding_window
from dlm.messages import Window
from dlm.state import GenerationState


class JacobiConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(128, gt=0, description="tokens to generate per prompt (at most)")
    n: int = Field(16, gt=0, description="draft tokens per forward (n + 1 predictions are read)")
    early_stop: bool = Field(True, description="end a row once it committed an end token")


class Jacobi(SlidingWindowManager):
    Config = JacobiConfig

    def window(self, state: GenerationState) -> Window:
        return sliding_window(state, first_pending(state), self.config.n + 1)
