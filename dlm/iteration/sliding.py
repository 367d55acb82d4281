"""Sliding windows for causal decoders: each row's window starts at a column of its own and moves right.

Causal decoders (``autoregressive``, ``jacobi``, ``wedlm``) have no blocks: a row's window is the ``width``
columns from its first pending column, so rows of a batch drift apart. The step's :class:`~dlm.messages.Window` is the union
of the rows' windows, and ``eligible`` marks each row's own pending columns inside its own window only; a
row's logits depend only on its own canvas, so it decides exactly what it decides alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dlm.errors import DecodingError
from dlm.iteration.base import IterationManager, left_padded_canvas, stop_at_eos
from dlm.messages import ModelCapabilities, Window
from dlm.state import GenerationState


@dataclass
class SlidingProgress:
    """Per-run progress of a sliding-window manager, kept in ``state.progress``."""

    step: int = 0  # steps taken


def first_pending(state: GenerationState) -> Tensor:
    """[B] first pending column of each row's generation region (the canvas length when none)."""
    gen = state.pending()[:, state.gen_start :]
    return torch.where(gen.any(dim=1), state.gen_start + gen.int().argmax(dim=1), state.length)


def sliding_window(state: GenerationState, starts: Tensor, width: int | Tensor, *, reorder: bool = False) -> Window:
    """The union window of the live rows with a pending column, row ``r``'s own window being columns
    ``[starts[r], starts[r] + width)`` (cut at the canvas end); ``starts`` is [B], ``width`` one int or [B]."""
    p: SlidingProgress = state.progress
    pending = state.pending()
    rows = (~state.done & pending[:, state.gen_start :].any(dim=1)).nonzero()[:, 0]
    lo = starts[rows]  # [b]
    hi = lo + (width[rows] if isinstance(width, Tensor) else width)  # [b] one past each row's window
    start, end = int(lo.min()), min(state.length, int(hi.max()))
    cols = torch.arange(start, end, device=state.device)[None, :]
    inside = (cols >= lo[:, None]) & (cols < hi[:, None])
    eligible = pending[rows, start:end] & inside  # [b, W]
    return Window(
        rows=rows, start=start, end=end, eligible=eligible,
        quota=torch.ones(len(rows), dtype=torch.long, device=state.device), step=p.step, mask_id=state.mask_id,
        block=0, block_start=start, block_end=end, reorder=reorder,
    )


class SlidingWindowManager(IterationManager):
    """Shared part of the causal decoders: the canvas, EOS early stop, the end of a row, a step bound."""

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if capabilities.attention != "causal":
            return (
                f"it decodes left to right with a causal model (attention 'causal'); the model's attention is "
                f"{capabilities.attention}, so later positions would change earlier predictions"
            )
        return None

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device)
        state.progress = SlidingProgress()
        return state

    def advance(self, state: GenerationState) -> None:
        p: SlidingProgress = state.progress
        p.step += 1
        if self.config.early_stop:
            stop_at_eos(state)
        state.done |= ~state.pending()[:, state.gen_start :].any(dim=1)
        if p.step > self.config.gen_length and not bool(state.done.all()):
            raise DecodingError(f"the generation region still has pending positions after {p.step} steps")
