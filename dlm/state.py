"""The explicit generation state passed between the four components.

One :class:`GenerationState` holds the canvas and all per-row bookkeeping. Components read it; the only
place the canvas changes is :meth:`GenerationState.commit`, so every commit is checked in one spot.

Batches are **left-padded**: row ``r`` holds ``pad[r]`` padding columns, then its prompt, then the
generation region, which therefore starts at the same column ``gen_start`` in every row. A row's RoPE
position of column ``c`` is ``c - pad[r]`` and padding columns are masked out as keys, so a row computes what
it would compute alone. For ``blockwise`` the blocks are the same columns in every row; iteration managers
whose blocks follow each row's own positions (``block_diffusion``) keep their per-row block bookkeeping
themselves and use ``block_start``/``block_end`` for the span the current step covers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dlm.errors import DecodingError


@dataclass(frozen=True)
class Window:
    """What the iteration manager asks to denoise in this step.

    ``rows`` are the rows taking part (not done, still masked in the window); all row-shaped tensors here
    are indexed like ``rows``. Columns ``[start, end)`` of the canvas are the window.
    """

    rows: Tensor  # [b] long, indices into the batch
    start: int  # first canvas column of the window
    end: int  # one past the last canvas column of the window
    eligible: Tensor  # [b, end-start] bool: masked positions that may be committed now
    quota: Tensor  # [b] long: tokens the schedule asks for in this step (top-k rules use it)
    step: int  # index of this step inside the current block (0 = the block's first step)
    mask_id: int  # the MASK token id, never a valid proposal

    @property
    def width(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Commit:
    """A decoding strategy's decision: which window positions to commit, with which tokens."""

    select: Tensor  # [b, W] bool, rows as in the window
    tokens: Tensor  # [b, W] long, meaningful where ``select``


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
    block: int = 0  # index of the current block
    block_start: int = 0  # canvas columns of the current block
    block_end: int = 0
    step: int = 0  # step index inside the current block
    tick: int = 0  # index into a timestep schedule (Dream's); unlike ``step``, ticks that commit nothing are skipped
    schedule: Tensor | None = None  # [B, steps_per_block] long: top-k quota per step of this block

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
        """True when some row has left padding (then attention needs a key mask)."""
        return bool(self.pad.any())

    def masked(self) -> Tensor:
        """[B, L] bool: positions still holding MASK."""
        return self.canvas == self.mask_id

    def count_forward(self, rows: Tensor) -> None:
        """Add one forward pass to the NFE of ``rows``."""
        self.nfe[rows] += 1

    def commit(self, window: Window, commit: Commit) -> None:
        """Write ``commit`` into the canvas, after checking the invariants every strategy must keep.

        Only eligible (masked, in-window) positions may be committed, MASK is never a committed token, and
        every row of the window with an eligible position commits at least one token.
        """
        select = commit.select
        if select.shape != window.eligible.shape:
            raise DecodingError(
                f"commit has shape {tuple(select.shape)}, the window is {tuple(window.eligible.shape)}"
            )
        if bool((select & ~window.eligible).any()):
            raise DecodingError("a decoding strategy committed a position that is not eligible")
        if bool((select & (commit.tokens == self.mask_id)).any()):
            raise DecodingError("a decoding strategy committed the MASK token")
        counts = select.sum(dim=1)
        if bool(((counts == 0) & window.eligible.any(dim=1)).any()):
            raise DecodingError(
                "a decoding strategy committed no token for a row that still has masked positions; "
                "every step must commit at least one token per active row, or the loop would not end"
            )
        region = self.canvas[window.rows, window.start : window.end]
        region = torch.where(select, commit.tokens, region)
        self.canvas[window.rows, window.start : window.end] = region
        per_row = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        per_row[window.rows] = counts
        self.tokens_per_step.append(per_row)

    def cancel(self, rows: Tensor | list[int]) -> None:
        """Take ``rows`` out of the generation now, leaving their canvas as it is (masks included).

        For callers that stop a row from outside the loop (a trace hook whose client went away): the
        iteration managers never give a done row a window again, so it costs no further compute.
        """
        self.done[torch.as_tensor(rows, dtype=torch.long, device=self.device)] = True

    def generated(self, row: int) -> Tensor:
        """The generation region of ``row``."""
        return self.canvas[row, self.gen_start :]

    def sequence(self, row: int) -> Tensor:
        """Prompt and generation of ``row``, without its padding."""
        return self.canvas[row, int(self.pad[row]) :]
