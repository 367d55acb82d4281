"""``klass``: KL-Adaptive Stability Sampling (Kim et al., 2025, "KLASS: KL-Guided Fast Inference in Masked
Diffusion Models", NeurIPS 2025, arXiv 2511.05664; github.com/shkim0116/KLASS).

A position is *ready* when its proposal's confidence is above ``confidence`` and the KL divergence between
its predictive distributions at consecutive forwards, ``KL(p_t ‖ p_{t-1})``, stayed below ``kl`` for the last
``history`` forwards (checked from the block's step ``history − 1`` on). A step commits every ready eligible
position; when none is ready, the schedule's top-k (LLaDA's low-confidence rule with the step's quota).

Memory, per row: the previous forward's float64 distribution of every position from the window to the end
of the canvas, and the KL history, carried across blocks as in the authors' code; so each step asks for the
logits of that whole span (:meth:`prepare` widens the window), not only the window's. Before a row's first
forward the previous distribution is all zeros, as in the authors' code (the first KL is then very large).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import propose, top_k_select
from dlm.errors import DecodingError
from dlm.messages import Commit, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState

EPS = 1e-12  # inside both logs of the KL, as in the authors' code


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """[..] ``Σ p·(log(p + ε) − log(q + ε))`` over the last dimension of float64 distributions."""
    return (p * (torch.log(p + EPS) - torch.log(q + EPS))).sum(dim=-1)


def klass_select(confidence: Tensor, kl_history: Tensor, eligible: Tensor, quota: Tensor, *, conf: float,
                 kl: float, check_stability: bool) -> Tensor:
    """[b, W] bool: the ready positions (confidence > ``conf``, every KL of the history [b, W, H] < ``kl``),
    or, in a row with none ready, its ``quota`` most confident eligible positions."""
    stable = (kl_history < kl).all(dim=-1) if check_stability else torch.zeros_like(eligible)
    ready = stable & (confidence > conf) & eligible
    fallback = top_k_select(confidence, eligible, quota.clamp(min=1))
    return torch.where(ready.any(dim=1, keepdim=True), ready, fallback)


class KlassConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    confidence: float = Field(0.9, ge=0.0, le=1.0, description="ready needs confidence > this")
    kl: float = Field(0.01, gt=0.0, description="ready needs KL(p_t || p_t-1) < this for `history` steps")
    history: int = Field(2, ge=1, description="consecutive forwards whose KL must stay below `kl`")


class Klass(DecodingStrategy):
    Config = KlassConfig

    def start(self, state: GenerationState) -> None:
        self.first = state.gen_start  # memory covers canvas columns [gen_start, length)
        self.shape = (state.batch_size, state.length - state.gen_start)
        self.previous: Tensor | None = None  # [B, L - gen_start, V] float64 distribution at the last forward
        self.kl_history: Tensor | None = None  # [B, L - gen_start, history] float64, newest last

    def prepare(self, state: GenerationState, window: Window) -> Window:
        if window.start < state.gen_start:
            raise DecodingError(f"klass needs windows inside the generation region (columns >= {state.gen_start}); "
                                f"this one starts at column {window.start}")
        return window.widen(window.start, state.length)

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        p = torch.softmax(logits.to(torch.float64), dim=-1)  # [b, S, V] over [logits_start, logits_end)
        if self.previous is None:
            self.previous = torch.zeros(*self.shape, p.shape[-1], dtype=torch.float64, device=p.device)
            self.kl_history = torch.zeros(*self.shape, c.history, dtype=torch.float64, device=p.device)
        rows, span = window.rows, slice(window.logits_start - self.first, window.logits_end - self.first)
        history = self.kl_history[rows, span].roll(-1, dims=-1)  # [b, S, H]
        history[..., -1] = kl_divergence(p, self.previous[rows, span])
        self.kl_history[rows, span] = history
        self.previous[rows, span] = p
        tokens, confidence = propose(window.window_logits(logits), mask_id=window.mask_id, temperature=0.0,
                                     generator=generator, rows=rows)
        lo = window.start - window.logits_start
        select = klass_select(confidence, history[:, lo : lo + window.width], window.eligible, window.quota,
                              conf=c.confidence, kl=c.kl, check_stability=window.step >= c.history - 1)
        return Commit(select, tokens)

    def finish(self) -> None:
        self.previous = self.kl_history = None
