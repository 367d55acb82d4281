"""``wedlm``: WeDLM's sliding-window decoding (Liu et al., 2025, "WeDLM: Reconciling Diffusion Language
Models with Standard Causal Attention for Fast Inference", arXiv 2512.22737; Tencent/WeDLM
``wedlm_decoder.py``).

A row's window is ``window`` columns (16) from its first mask. Each forward sees the filled tokens not yet
pruned into the KV cache and the window reordered, filled tokens first and masks after, each at its
original position (a :class:`~dlm.messages.Reorder` window), so causal attention lets every mask see every
filled token. The leading run of filled columns is computed in position order, so its K/V are final:
``cache: append`` keeps them (the reference's pruning) and the window slides to the next mask. The fill
rule is the ``wedlm`` decoding strategy (entropy plus a distance penalty, under a threshold).

Differences from the reference, on purpose: the prompt prefill is the first decoding forward (the reference
runs a separate prefill forward whose logits it drops), and a row ends once everything up to its end token
(or the region's end) is committed, without the reference's last forward that only prunes. The window is cut
at the end of the generation region, as the reference's KV budget cuts it at ``max_tokens``.

Each row's window follows its own first mask, so a row that joined a running generation decodes exactly as
it does alone (per-row geometry: :mod:`dlm.iteration.sliding`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dlm.iteration.sliding import SlidingWindowManager, first_pending, sliding_window
from dlm.messages import Window
from dlm.state import GenerationState


class WeDLMIterationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(128, gt=0, description="tokens to generate per prompt (at most)")
    window: int = Field(16, gt=0, description="columns of a row's sliding window (WeDLM's wedlm_window_size)")
    reorder: bool = Field(True, description="filled tokens before masks in each forward (original positions)")
    early_stop: bool = Field(True, description="end a row once it committed an end token")


class WeDLMIteration(SlidingWindowManager):
    Config = WeDLMIterationConfig

    def window(self, state: GenerationState) -> Window:
        return sliding_window(state, first_pending(state), self.config.window, reorder=self.config.reorder)
