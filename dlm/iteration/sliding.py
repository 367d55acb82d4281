"""Sliding windows for causal decoders: each row's window starts at a column of its own and moves right.

Causal decoders (``autoregressive``, ``jacobi``, ``wedlm``) have no blocks: a row's window is the ``width``
columns from its first pending column, so rows of a batch drift apart (and a row that joined a running
generation starts at its own first column, whatever the others' places). The step's
:class:`~dlm.messages.Window` is the union of the rows' windows; its :class:`~dlm.messages.Geometry` gives
each row's own window as its ``block_start``/``block_end`` (block 0, the row's own step count), and
``eligible`` marks each row's pending columns inside its own window only. A row's logits depend only on its
own canvas, so it decides exactly what it decides alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dlm.errors import DecodingError
from dlm.iteration.base import IterationManager, left_padded_canvas, stop_at_eos
from dlm.memory import RowMemory
from dlm.messages import Geometry, ModelCapabilities, Reorder, Window
from dlm.state import GenerationState


@dataclass
class SlidingProgress(RowMemory):
    """Per-row progress of a sliding-window manager, kept in ``state.progress``."""

    step: Tensor  # [B] long (host): steps each row took part in

    @staticmethod
    def fresh(batch: int) -> "SlidingProgress":
        return SlidingProgress(step=torch.zeros(batch, dtype=torch.long))


def first_pending(state: GenerationState) -> Tensor:
    """[B] first pending column of each row's generation region (the canvas length when none)."""
    gen = state.pending()[:, state.gen_start :]
    return torch.where(gen.any(dim=1), state.gen_start + gen.int().argmax(dim=1), state.length)


def sliding_window(state: GenerationState, starts: Tensor, width: int | Tensor, *, reorder: bool = False) -> Window:
    """The union window of the live rows with a pending column, row ``r``'s own window being columns
    ``[starts[r], starts[r] + width)`` (cut at the canvas end); ``starts`` is [B], ``width`` one int or [B].
    Each row's own window is its geometry's ``block_start``/``block_end``; ``reorder`` attaches
    :class:`~dlm.messages.Reorder`."""
    p: SlidingProgress = state.progress
    pending = state.pending()
    host_rows = (~state.done & pending[:, state.gen_start :].any(dim=1)).cpu().nonzero()[:, 0]
    rows = host_rows.to(state.device)
    lo = starts[rows]  # [b]
    hi = torch.clamp(lo + (width[rows] if isinstance(width, Tensor) else width), max=state.length)  # [b]
    lo_host, hi_host = torch.stack((lo, hi)).cpu()  # one read of the device
    start, end = int(lo_host.min()), int(hi_host.max())
    cols = torch.arange(start, end, device=state.device)[None, :]
    inside = (cols >= lo[:, None]) & (cols < hi[:, None])
    eligible = pending[rows, start:end] & inside  # [b, W]
    geometry = Geometry(step=p.step[host_rows], block=torch.zeros(len(host_rows), dtype=torch.long),
                        block_start=lo_host, block_end=hi_host)
    return Window(
        rows=rows, start=start, end=end, eligible=eligible,
        quota=torch.ones(len(rows), dtype=torch.long, device=state.device), mask_id=state.mask_id,
        geometry=geometry, extensions=(Reorder(),) if reorder else (),
    )


class SlidingWindowManager(IterationManager):
    """Shared part of the causal decoders: the canvas, EOS early stop, the end of a row, a step bound."""

    joinable = True

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if capabilities.attention != "causal":
            return (
                f"it decodes left to right with a causal model (attention 'causal'); the model's attention is "
                f"{capabilities.attention}, so later positions would change earlier predictions"
            )
        return None

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device, gen_start=gen_start)
        state.progress = SlidingProgress.fresh(state.batch_size)
        return state

    def advance(self, state: GenerationState) -> None:
        p: SlidingProgress = state.progress
        if state.last_window is not None:
            p.step[state.last_window.rows.cpu()] += 1
        if self.config.early_stop:
            stop_at_eos(state)
        state.done |= ~state.pending()[:, state.gen_start :].any(dim=1)
        if bool((p.step > self.config.gen_length).any()):
            over = (p.step > self.config.gen_length) & ~state.done.cpu()
            if bool(over.any()):
                row = int(over.nonzero()[0, 0])
                raise DecodingError(f"the generation region of row {row} still has pending positions after "
                                    f"{int(p.step[row])} steps")
