"""``klass``: KL-Adaptive Stability Sampling (Kim et al., 2025, "KLASS: KL-Guided Fast Inference in Masked
Diffusion Models", NeurIPS 2025, arXiv 2511.05664; github.com/shkim0116/KLASS).

A position is *ready* when its proposal's confidence is above ``confidence`` and the KL divergence between
its predictive distributions at consecutive forwards, ``KL(p_t ‖ p_{t-1})``, stayed below ``kl`` for the last
``history`` forwards (checked from the block's step ``history − 1`` on, each row at its own step). A step
commits every ready eligible position; when none is ready, the schedule's top-k (LLaDA's low-confidence rule
with the step's quota).

Memory, per row: the previous forward's float64 distribution of every position from the window to the end
of the canvas, and the KL history, carried across blocks as in the authors' code; so each step asks for the
logits of that whole span (:meth:`prepare` widens the window), not only the window's. Before a row's first
forward the previous distribution is all zeros, as in the authors' code (the first KL is then very large).
This memory is on the state (:class:`KlassMemory`); a row in a batch whose rows are at different blocks
updates it from its own window on, as it does alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import propose, row_spans, top_k_select
from dlm.errors import DecodingError
from dlm.memory import RowMemory, column_index_field
from dlm.messages import Commit, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState

EPS = 1e-12  # inside both logs of the KL, as in the authors' code


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """[..] ``Σ p·(log(p + ε) − log(q + ε))`` over the last dimension of float64 distributions."""
    return (p * (torch.log(p + EPS) - torch.log(q + EPS))).sum(dim=-1)


def klass_select(confidence: Tensor, kl_history: Tensor, eligible: Tensor, quota: Tensor, *, conf: float,
                 kl: float, check_stability: bool | Tensor) -> Tensor:
    """[b, W] bool: the ready positions (confidence > ``conf``, every KL of the history [b, W, H] < ``kl``),
    or, in a row with none ready, its ``quota`` most confident eligible positions. ``check_stability``: one
    answer, or one per row ([b] bool, each row at its own step)."""
    if isinstance(check_stability, Tensor):
        stable = (kl_history < kl).all(dim=-1) & check_stability.to(eligible.device)[:, None]
    else:
        stable = (kl_history < kl).all(dim=-1) if check_stability else torch.zeros_like(eligible)
    ready = stable & (confidence > conf) & eligible
    fallback = top_k_select(confidence, eligible, quota.clamp(min=1))
    return torch.where(ready.any(dim=1, keepdim=True), ready, fallback)


class KlassConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    confidence: float = Field(0.9, ge=0.0, le=1.0, description="ready needs confidence > this")
    kl: float = Field(0.01, gt=0.0, description="ready needs KL(p_t || p_t-1) < this for `history` steps")
    history: int = Field(2, ge=1, description="consecutive forwards whose KL must stay below `kl`")


@dataclass
class KlassMemory(RowMemory):
    """Per batch row: the KL history and the last forward's distribution of each generation-region column.

    ``previous`` is allocated (zeros, the authors' value before a first forward) at the first step, which
    brings the vocabulary; rows joined before and after that get zeros too (:meth:`cat`). ``movable``: slots are
    counted from ``first``, which follows the canvas when it grows or shrinks on the left.
    """

    movable = True

    kl_history: Tensor  # [B, L - first, history] float64, newest last
    previous: Tensor | None = None  # [B, L - first, V] float64 distribution at the row's last forward
    first: int = column_index_field(default=0)  # canvas column of slot 0 (the generation region's start; the
    # same in joined states)

    def cat(self, other: "KlassMemory") -> "KlassMemory":
        a, b = self.previous, other.previous
        if (a is None) != (b is None):  # one side has not run a forward yet: its previous distributions are zeros
            ref = a if a is not None else b
            zeros = lambda m: ref.new_zeros((len(m.kl_history), *ref.shape[1:]))  # noqa: E731
            a, b = (a if a is not None else zeros(self)), (b if b is not None else zeros(other))
        return RowMemory.cat(replace(self, previous=a), replace(other, previous=b))


class Klass(DecodingStrategy):
    Config = KlassConfig
    joinable = True

    def start(self, state: GenerationState) -> KlassMemory:
        shape = (state.batch_size, state.length - state.gen_start, self.config.history)
        return KlassMemory(torch.zeros(shape, dtype=torch.float64, device=state.device), first=state.gen_start)

    def prepare(self, state: GenerationState, window: Window) -> Window:
        if window.start < state.gen_start:
            raise DecodingError(f"klass needs windows inside the generation region (columns >= {state.gen_start}); "
                                f"this one starts at column {window.start}")
        return window.widen(window.start, state.length)

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        m: KlassMemory = self.memory(state)
        p = torch.softmax(logits.to(torch.float64), dim=-1)  # [b, S, V] over [logits_start, logits_end)
        if m.previous is None:
            m.previous = torch.zeros(*m.kl_history.shape[:2], p.shape[-1], dtype=torch.float64, device=p.device)
        rows, span = window.rows, slice(window.logits_start - m.first, window.logits_end - m.first)
        old_history, old_previous = m.kl_history[rows, span], m.previous[rows, span]
        history = old_history.roll(-1, dims=-1)  # [b, S, H]
        history[..., -1] = kl_divergence(p, old_previous)
        lo, _ = row_spans(window)
        own = window.start - window.logits_start + lo  # [b] host: span column where each row's own window starts
        if bool(own.any()):  # rows at different blocks: a row's memory moves from its own window on, as alone
            mine = (torch.arange(p.shape[1])[None, :] >= own[:, None]).to(p.device)[..., None]  # [b, S, 1]
            history = torch.where(mine, history, old_history)
            m.previous[rows, span] = torch.where(mine, p, old_previous)
        else:
            m.previous[rows, span] = p
        m.kl_history[rows, span] = history
        tokens, confidence = propose(window.window_logits(logits), mask_id=window.mask_id, temperature=0.0,
                                     generator=generator, rows=rows)
        at = window.start - window.logits_start
        select = klass_select(confidence, history[:, at : at + window.width], window.eligible, window.quota,
                              conf=c.confidence, kl=c.kl, check_stability=window.step >= c.history - 1)
        return Commit(select, tokens)
