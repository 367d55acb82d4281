"""The explicit generation state passed between the four components.

One :class:`GenerationState` holds the canvas and all per-row bookkeeping. Components read it; the only
place the canvas changes is :meth:`GenerationState.commit`, so every commit is checked in one spot.

Batches are **left-padded**: row ``r`` holds ``pad[r]`` padding columns, then its prompt, then the
generation region, which therefore starts at the same column ``gen_start`` in every row. A row's RoPE
position of column ``c`` is ``c - pad[r]`` and padding columns are masked out as keys, so a row computes what
it would compute alone. For ``blockwise`` the blocks are the same columns in every row; iteration managers
whose blocks follow each row's own positions (``block_diffusion``) keep their per-row block bookkeeping
themselves. Each iteration manager keeps its per-run progress (block, step, schedule) in a typed object of
its own in ``progress``, which no other component reads: they learn the geometry from the
:class:`~dlm.messages.Window`.

A position is *pending* while it holds MASK or a provisional (draft) token; committed tokens never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dlm.errors import DecodingError
from dlm.messages import Commit, Window

__all__ = ["GenerationState", "Window", "Commit"]


@dataclass
class GenerationState:
    """Canvas and per-row bookkeeping of one batched generation."""

    canvas: Tensor  # [B, L] long: pad | prompt | generation region
    pad: Tensor  # [B] long: left-padding columns of each row
    prompt_lengths: Tensor  # [B] long
    gen_start: int  # first column of the generation region (same for every row)
    gen_length: int
    mask_id: int
    eos_ids: tuple[int, ...]  # end tokens of the model, EOS first
    nfe: Tensor  # [B] long: forward passes each row took part in
    done: Tensor  # [B] bool: row finished (all blocks complete or stopped at EOS)
    tokens_per_step: list[Tensor] = field(default_factory=list)  # per step: [B] tokens committed
    provisional: Tensor | None = None  # [B, L] bool: positions holding a revisable draft token (None: none yet)
    progress: Any = None  # the iteration manager's own typed per-run data; no other component reads it
    last_window: Window | None = None  # the window of the step just taken (for traces)
    cancels: int = 0  # calls of cancel() so far: a manager caching its active rows recomputes them when it moves

    @property
    def batch_size(self) -> int:
        return self.canvas.shape[0]

    @property
    def length(self) -> int:
        return self.canvas.shape[1]

    @property
    def device(self) -> torch.device:
        return self.canvas.device

    @property
    def padded(self) -> bool:
        """True when some row has left padding (then attention needs a key mask).

        Read once per generation (``pad`` never changes), so the forwards do not wait for the device."""
        cached = self.__dict__.get("_padded")
        if cached is None:
            cached = self.__dict__["_padded"] = bool(self.pad.any())
        return cached

    def masked(self) -> Tensor:
        """[B, L] bool: positions still holding MASK."""
        return self.canvas == self.mask_id

    def count_forward(self, rows: Tensor) -> None:
        """Add one forward pass to the NFE of ``rows``."""
        self.nfe[rows] += 1

    def pending(self) -> Tensor:
        """[B, L] bool: positions not yet final (MASK or a provisional draft token)."""
        masked = self.masked()
        return masked if self.provisional is None else masked | self.provisional

    @property
    def block(self) -> int:
        """Block index of the step just taken (0 before the first step)."""
        return 0 if self.last_window is None else self.last_window.block

    def commit(self, window: Window, commit: Commit) -> None:
        """Write ``commit`` into the canvas, after checking the invariants every strategy must keep.

        Only eligible positions may be committed (or drafted), MASK is never written, and every row of the
        window with an eligible position commits at least one token (or finishes). This is the only writer
        of the canvas besides the iteration managers' own fill of ended rows (``stop_at_eos`` writes EOS
        after a row's first end token, which no component may read as a decision).
        """
        select = commit.select
        if select.shape != window.eligible.shape:
            raise DecodingError(
                f"commit has shape {tuple(select.shape)}, the window is {tuple(window.eligible.shape)}"
            )
        written = select if commit.drafts is None else select | commit.drafts
        counts = select.sum(dim=1)
        starved = (counts == 0) & window.eligible.any(dim=1)
        if commit.finish is not None:
            starved &= ~commit.finish
        # the three invariants in one host read (one synchronisation per step instead of three)
        ineligible, masks, stalled = torch.stack((
            (written & ~window.eligible).any(), (written & (commit.tokens == self.mask_id)).any(), starved.any(),
        )).tolist()
        if ineligible:
            raise DecodingError("a decoding strategy committed a position that is not eligible")
        if masks:
            raise DecodingError("a decoding strategy committed the MASK token")
        if stalled:
            raise DecodingError(
                "a decoding strategy committed no token for a row that still has masked positions; "
                "every step must commit at least one token per active row, or the loop would not end"
            )
        rows, cols = window.rows, slice(window.start, window.end)
        region = self.canvas[rows, cols]
        self.canvas[rows, cols] = torch.where(written, commit.tokens, region)
        if commit.drafts is not None or self.provisional is not None:
            self._mark_provisional(window, select, commit.drafts)
        per_row = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        per_row[rows] = counts
        if commit.finish is not None:
            per_row[rows] += self._finish(window, commit)
        self.tokens_per_step.append(per_row)
        self.last_window = window

    def _mark_provisional(self, window: Window, select: Tensor, drafts: Tensor | None) -> None:
        if self.provisional is None:
            self.provisional = torch.zeros_like(self.canvas, dtype=torch.bool)
        rows, cols = window.rows, slice(window.start, window.end)
        region = self.provisional[rows, cols] & ~select
        if drafts is not None:
            region |= drafts & ~select
        self.provisional[rows, cols] = region

    def _finish(self, window: Window, commit: Commit) -> Tensor:
        """Commit every pending position of the finishing rows from ``fill``; end them. [b] tokens written."""
        finish = commit.finish
        if commit.fill is None or finish.shape != window.rows.shape:
            raise DecodingError("a commit that finishes rows needs finish [b] and fill [b, span] tokens")
        lo, hi = window.logits_start, window.logits_end
        pending = self.pending()[window.rows] & finish[:, None]  # [b, L]
        outside = pending.clone()
        outside[:, lo:hi] = False
        if bool(outside.any()):
            raise DecodingError(
                f"a decoding strategy finished a row with pending positions outside its logits span [{lo}, {hi}); "
                "widen the window to the whole generation region to finish rows"
            )
        span = pending[:, lo:hi]
        if bool((span & (commit.fill == self.mask_id)).any()):
            raise DecodingError("a decoding strategy finished a row with the MASK token")
        rows = window.rows
        self.canvas[rows, lo:hi] = torch.where(span, commit.fill, self.canvas[rows, lo:hi])
        if self.provisional is not None:
            self.provisional[rows, lo:hi] &= ~span
        self.done[rows[finish]] = True
        return span.sum(dim=1)

    def cancel(self, rows: Tensor | list[int]) -> None:
        """Take ``rows`` out of the generation now, leaving their canvas as it is (masks included).

        For callers that stop a row from outside the loop (a trace hook whose client went away): the
        iteration managers never give a done row a window again, so it costs no further compute.
        """
        self.done[torch.as_tensor(rows, dtype=torch.long, device=self.device)] = True
        self.cancels += 1

    def generated(self, row: int) -> Tensor:
        """The generation region of ``row``."""
        return self.canvas[row, self.gen_start :]

    def sequence(self, row: int) -> Tensor:
        """Prompt and generation of ``row``, without its padding."""
        return self.canvas[row, int(self.pad[row]) :]
