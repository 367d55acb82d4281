"""``jacobi``: Jacobi decoding of a causal model (Hu et al., 2025, "Fast and Accurate Causal Parallel
Decoding using Jacobi Forcing", arXiv 2512.14681; hao-ai-lab/JacobiForcing ``jacobi_decoding.py``).

Each row drafts ``n`` tokens after its committed text; one causal forward over [committed | draft] gives
``n + 1`` greedy predictions, so the window is the row's first ``n + 1`` pending columns. The ``jacobi``
decoding strategy accepts the longest draft prefix equal to the greedy predictions plus one token and writes
the other predictions as the next draft (provisional tokens, the commit's :class:`~dlm.messages.Drafts`): a
Jacobi fixed-point iteration. Positions entering the window hold the MASK placeholder until their first prediction. With
``cache: append`` accepted drafts keep the K/V they were computed with.

Multi-block drafting (``blocks = K > 1``, the paper's multiblock decoding; hao-ai-lab/JacobiForcing
``jacobi_forward_greedy_multiblock``): the generation region is cut into blocks of ``n`` tokens. A row's
window runs from its first pending column to the end of its current (real-active) block, plus the one
column predicted after it; once the row has committed at least ``ceil(r · n)`` tokens of the block, the
window also covers the next ``K − 1`` blocks (pseudo-active blocks), whose drafts are iterated on the
unverified draft before them and verified when the blocks before them are committed.

Greedy Jacobi decoding gives exactly the greedy autoregressive output, in at most as many forwards: every
accepted token was predicted from a context equal to the committed one, whatever the window covers.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from dlm.iteration.sliding import SlidingWindowManager, first_pending, sliding_window
from dlm.messages import Window
from dlm.state import GenerationState


class JacobiConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(128, gt=0, description="tokens to generate per prompt (at most)")
    n: int = Field(16, gt=0, description="draft tokens per forward (n + 1 predictions are read); block size")
    blocks: int = Field(1, ge=1, description="blocks in flight (K); 1: one sliding window of n drafts")
    r: float = Field(0.85, gt=0, le=1, description="with blocks > 1: fraction of a block committed before the "
                                                   "next blocks are drafted")
    early_stop: bool = Field(True, description="end a row once it committed an end token")


class Jacobi(SlidingWindowManager):
    Config = JacobiConfig

    def window(self, state: GenerationState) -> Window:
        starts = first_pending(state)  # [B]
        c = self.config
        if c.blocks == 1:
            return sliding_window(state, starts, c.n + 1)
        done_in_block = (starts - state.gen_start) % c.n  # [B] tokens of the current block committed
        to_block_end = c.n - done_in_block  # [B]
        spawned = done_in_block >= math.ceil(c.r * c.n)  # [B] pseudo-active blocks drafted too
        width = to_block_end + torch.where(spawned, (c.blocks - 1) * c.n, 0) + 1  # [B]
        return sliding_window(state, starts, width)
