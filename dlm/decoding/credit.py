"""``credit``: dInfer's credit decoding (inclusionAI, 2025, arXiv 2510.08666; github.com/inclusionAI/dInfer,
``CreditThresholdParallelDecoder``).

Each row keeps, for its current block, a float32 credit table over the vocabulary at every window position.
At every step of the block but its first the table decays by ``decay``; then each still-masked position adds
``p ** power`` at its argmax token, ``p`` being the top-1 probability of the raw float32 softmax (argmax over
the whole vocabulary). The step is then Fast-dLLM's threshold rule (:func:`threshold_select`, ``≥ threshold``
plus the most confident) applied to the fused logits ``logits + alpha · log(1 + credit)``: tokens that kept
winning earlier steps cross the threshold sooner. ``alpha: 0`` is exactly ``threshold``. A window's
:class:`~dlm.messages.ThresholdFloor` raises the threshold for the step, as dInfer's ``iter_threshold`` does.

The table is run memory on the state (:class:`CreditMemory`), one per batch row, over the row's own window:
rows at different blocks (a row that joined later) each keep and reset their own, as alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import propose, row_spans, step_threshold, threshold_select
from dlm.memory import RowMemory, column_index_field
from dlm.messages import Commit, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


def add_credit(table: Tensor, logits: Tensor, masked: Tensor, power: float) -> None:
    """Add ``p ** power`` at each masked position's raw argmax token, in place. table [b, W, V] float32,
    logits [b, W, V], masked [b, W]."""
    top, idx = torch.softmax(logits.to(torch.float32), dim=-1).max(dim=-1)  # [b, W]
    table.scatter_add_(2, idx[..., None], (top.pow(power) * masked.to(top.dtype))[..., None])


def fuse(logits: Tensor, table: Tensor, alpha: float) -> Tensor:
    """Logits boosted by their credit: ``logits + alpha · log(1 + table)`` ([b, W, V])."""
    return logits + alpha * torch.log(table + 1)


class CreditConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.9, ge=0.0, le=1.0, description="commit positions with fused confidence >= threshold")
    alpha: float = Field(0.7, ge=0.0, description="weight of log(1 + credit) added to the logits; 0 = threshold")
    power: float = Field(0.2, gt=0.0, description="credit added per step: top-1 probability ** power")
    decay: float = Field(0.8, ge=0.0, le=1.0, description="factor the credit decays by at each later step of a block")
    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")


@dataclass
class CreditMemory(RowMemory):
    """Per batch row: the credit table of the row's own window and what it is of.

    The table is of the row's own window (:func:`~dlm.decoding.proposal.row_spans`): its block, its first
    column and its width; slot ``j`` holds column ``first + j``. A row whose window changes (a new block, a
    moved window) starts a fresh table. The table is allocated at the first step (it needs the vocabulary)
    and grows to the widest window seen; slots past a row's width stay 0. ``movable``: the first column
    follows the canvas when it grows or shrinks on the left (the slots are relative to it).
    """

    movable = True

    block: Tensor  # [B] long (host): block of the row's table (-1: none yet)
    first: Tensor = column_index_field()  # [B] long (host): canvas column of slot 0
    width: Tensor = field(default=None)  # [B] long (host): columns of the row's window
    decisions: Tensor = field(default=None)  # [B] long (host): steps the row took with that table
    table: Tensor | None = None  # [B, T, V] float32 credit (None until the first step)

    @staticmethod
    def fresh(batch: int) -> "CreditMemory":
        none = lambda: torch.full((batch,), -1, dtype=torch.long)  # noqa: E731
        return CreditMemory(block=none(), first=none(), width=none(), decisions=torch.zeros(batch, dtype=torch.long))

    def key(self, rows: Tensor) -> Tensor:
        """[b, 3] (block, first column, width) of ``rows``' tables."""
        return torch.stack((self.block[rows], self.first[rows], self.width[rows]), dim=1)

    def cat(self, other: "CreditMemory") -> "CreditMemory":
        a, b = self.table, other.table
        if a is not None or b is not None:  # bring both tables to one shape: missing rows and slots hold no credit
            ref = a if a is not None else b
            width = max(t.shape[1] for t in (a, b) if t is not None)
            a, b = (_padded(t, len(m.block), width, ref) for t, m in ((a, self), (b, other)))
        return RowMemory.cat(replace(self, table=a), replace(other, table=b))


def _padded(table: Tensor | None, rows: int, width: int, like: Tensor) -> Tensor:
    """``table`` with ``width`` slots (zeros added), or a zero table of ``rows`` rows when there is none."""
    if table is None:
        return like.new_zeros((rows, width, like.shape[2]))
    if table.shape[2] != like.shape[2]:
        raise ValueError(f"cannot join credit tables over {table.shape[2]} and {like.shape[2]} tokens")
    return torch.nn.functional.pad(table, (0, 0, 0, width - table.shape[1]))


class Credit(DecodingStrategy):
    Config = CreditConfig
    joinable = True
    provides = frozenset({"threshold_floor"})

    def start(self, state: GenerationState) -> CreditMemory:
        return CreditMemory.fresh(state.batch_size)

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        m: CreditMemory = self.memory(state)
        rows, dev = window.rows.cpu(), logits.device
        lo, hi = row_spans(window)  # [b] host: each row's own window, in window columns
        whole = not bool(lo.any()) and bool((hi == window.width).all())
        key = torch.stack((window.block, window.start + lo, hi - lo), dim=1)
        stale = (m.key(rows) != key).any(dim=1)  # rows entering a new block (or window) start a fresh table
        m.block[rows], m.first[rows], m.width[rows] = key.unbind(dim=1)
        m.decisions[rows[stale]] = 0
        width, vocab = int((hi - lo).max()), logits.shape[-1]
        if m.table is None or m.table.shape[2] != vocab:
            m.table = torch.zeros(len(m.block), width, vocab, dtype=torch.float32, device=dev)
        elif m.table.shape[1] < width:
            m.table = _padded(m.table, len(m.block), width, m.table)
        if whole:  # every row's own window is the window (one row, or rows in one block)
            own_logits, own_masked = logits, window.eligible
        else:  # each row's own columns, from slot 0 (what the row has alone)
            slot = torch.arange(width)[None, :]
            cols = (lo[:, None] + slot).clamp(max=window.width - 1).to(dev)  # [b, width] window column of each slot
            own_logits = logits.gather(1, cols[..., None].expand(-1, -1, vocab))
            own_masked = window.eligible.gather(1, cols) & (slot < (hi - lo)[:, None]).to(dev)
        table = m.table[window.rows, :width]  # [b, width, V]
        table[stale.to(dev)] = 0
        later = (m.decisions[rows] > 0).to(dev)
        table.mul_(torch.where(later, c.decay, 1.0).to(table.dtype)[:, None, None])
        add_credit(table, own_logits, own_masked, c.power)
        m.table[window.rows, :width] = table
        m.decisions[rows] += 1
        if not whole:  # the table back in window columns, none outside the row's own window
            slot = torch.arange(window.width)[None, :] - lo[:, None]  # [b, W]
            inside = ((slot >= 0) & (slot < (hi - lo)[:, None])).to(dev)
            index = slot.clamp(0, width - 1).to(dev)[..., None].expand(-1, -1, vocab)
            table = table.gather(1, index) * inside[..., None]
        tokens, confidence = propose(fuse(logits, table, c.alpha), mask_id=window.mask_id,
                                     temperature=c.temperature, generator=generator, rows=window.rows,
                                     spans=(lo, hi))
        tau = step_threshold(window, c.threshold, confidence.device)
        return Commit(threshold_select(confidence, window.eligible, tau), tokens)
