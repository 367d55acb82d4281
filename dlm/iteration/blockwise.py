"""``blockwise``: semi-autoregressive blocks, the schedule of LLaDA and Fast-dLLM.

Semantics of Fast-dLLM's ``generate`` (Wu et al., 2025, arXiv 2505.22618; LLaDA, Nie et al. 2025): the
generation region is cut into ``gen_length / block_length`` blocks, denoised left to right; ``steps`` are
split evenly over the blocks; in a block with ``m`` masked positions and ``s`` steps, step ``i`` has quota
``m // s`` plus one for the first ``m % s`` steps. Only masked positions of the current block are eligible,
and a block is denoised until it holds no mask (the reference's "until done" loop), so strategies that
ignore the quota (threshold, factor) simply take as many steps as they need. Positions holding a provisional
(draft) token count as not yet committed: they stay eligible until a step commits them. A block that an editing
strategy holds open (:class:`~dlm.messages.Edits`, ``state.held``) keeps its row for more steps, with nothing
eligible, until the strategy releases it; the strategy bounds those steps.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from dlm.errors import DecodingError
from dlm.iteration.base import BlockProgress, SettlingManager, end_or_next_block, left_padded_canvas, stop_at_eos
from dlm.messages import Geometry, ModelCapabilities, Window
from dlm.state import GenerationState


class BlockwiseConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(128, gt=0, description="tokens to generate per prompt")
    block_length: int = Field(32, gt=0, description="tokens per semi-autoregressive block")
    steps: int = Field(128, gt=0, description="schedule steps over the whole generation (top-k strategies)")
    early_stop: bool = Field(False, description="end a row once it committed EOS with no mask before it")

    @model_validator(mode="after")
    def _divisible(self) -> "BlockwiseConfig":
        if self.gen_length % self.block_length:
            raise ValueError(
                f"block_length ({self.block_length}) must divide gen_length ({self.gen_length}); "
                f"for example block_length={_divisor_near(self.gen_length, self.block_length)}"
            )
        if self.steps > self.gen_length:
            raise ValueError(
                f"steps ({self.steps}) exceeds gen_length ({self.gen_length}): every step commits at least one "
                f"token, so at most {self.gen_length} steps can run; set steps to at most {self.gen_length}"
            )
        blocks = self.gen_length // self.block_length
        if self.steps % blocks:
            raise ValueError(
                f"steps ({self.steps}) must be a multiple of the number of blocks ({blocks} = gen_length / "
                f"block_length), for example steps={max(blocks, self.steps - self.steps % blocks)}"
            )
        return self

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks


def _divisor_near(n: int, target: int) -> int:
    """The divisor of ``n`` nearest ``target`` (pairs up to √n: bounded work for any ``n``)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return min(small + [n // d for d in small], key=lambda d: (abs(d - target), d))


def transfer_schedule(masked: Tensor, steps: int) -> Tensor:
    """[B, steps] tokens per step for ``masked`` [B] positions: ``m // s``, the first ``m % s`` steps +1."""
    base = masked // steps
    rem = masked % steps
    return base[:, None] + (torch.arange(steps, device=masked.device)[None, :] < rem[:, None]).long()


def block_bounds(state: GenerationState, block: Tensor, block_length: int) -> tuple[Tensor, Tensor]:
    """[B] host: canvas columns ``[start, end)`` of each row's block ``block`` [B] of the generation region."""
    start = state.gen_start + block * block_length
    return start, torch.clamp(start + block_length, max=state.length)


def in_bounds(state: GenerationState, start: Tensor, end: Tensor) -> Tensor:
    """[B, L] bool (on the canvas' device): the columns of each row's span ``[start[r], end[r])``."""
    cols = torch.arange(state.length, device=state.device)[None, :]
    return (cols >= start.to(state.device)[:, None]) & (cols < end.to(state.device)[:, None])


def block_window(state: GenerationState, rows: Tensor, eligible: Tensor, quota: Tensor, start: Tensor,
                 end: Tensor, *, extensions: tuple = ()) -> Window:
    """The window of ``rows`` ([b] host) over the union of their spans ``[start[r], end[r])`` ([B] host each),
    ``eligible`` [B, L] marking what each row may commit (inside its own span), ``quota`` [b]; the geometry
    comes from ``state.progress`` (a :class:`BlockProgress`)."""
    p: BlockProgress = state.progress
    lo, hi = int(start[rows].min()), int(end[rows].max())
    dev_rows = rows.to(state.device)
    geometry = Geometry(step=p.step[rows], block=p.block[rows], block_start=start[rows], block_end=end[rows],
                        total_steps=p.total_steps)
    return Window(rows=dev_rows, start=lo, end=hi, eligible=eligible[dev_rows, lo:hi], quota=quota,
                  mask_id=state.mask_id, geometry=geometry, extensions=extensions)


class Blockwise(SettlingManager):
    """Semi-autoregressive blocks; each row moves through its blocks at its own pace (see the module doc)."""

    Config = BlockwiseConfig
    joinable = True
    # a block's pending positions include drafts: it ends when all are committed; a held block stays (Edits)
    provides = frozenset({"drafts", "edits", "step_budget"})

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device, gen_start=gen_start)
        p = state.progress = BlockProgress.fresh(state.batch_size, total_steps=self.config.steps)
        p.schedule = torch.zeros(state.batch_size, self.config.steps_per_block, dtype=torch.long, device=device)
        self._enter(state, torch.ones(state.batch_size, dtype=torch.bool))
        self._settle(state)
        return state

    def _bounds(self, state: GenerationState) -> tuple[Tensor, Tensor]:
        return block_bounds(state, state.progress.block, self.config.block_length)

    def _own(self, state: GenerationState) -> Tensor:
        """[B, L] bool: pending positions of each row's current block."""
        return state.pending() & in_bounds(state, *self._bounds(state))

    def _enter(self, state: GenerationState, rows: Tensor) -> None:
        """Rows ``rows`` ([B] host bool) start their current block: step 0 and LLaDA's quota schedule."""
        p: BlockProgress = state.progress
        p.step[rows] = 0
        pending = self._own(state).sum(dim=1)
        fresh = transfer_schedule(pending, self.config.steps_per_block)
        p.schedule = torch.where(rows.to(state.device)[:, None], fresh, p.schedule)

    def _settle(self, state: GenerationState) -> None:
        """Move every live row whose block is complete to its next block (or end it); find the active rows."""
        p: BlockProgress = state.progress
        while True:
            work, live = self._read_work(state)
            complete = live & ~work
            if not bool(complete.any()):
                break
            moving = end_or_next_block(state, complete, self.config.num_blocks)
            if not bool(moving.any()):
                continue
            p.block[moving] += 1
            self._enter(state, moving)
        p.active, p.active_cancels = live & work, state.cancels

    def _read_work(self, state: GenerationState) -> tuple[Tensor, Tensor]:
        """The one read of the device in a step: [B] host bools, rows with work in their block (pending positions,
        or a block an editing strategy holds open) and live rows."""
        own = self._own(state).any(dim=1)
        held = state.held if state.held is not None else torch.zeros_like(own)
        work, live, held = torch.stack((own, ~state.done, held)).cpu()
        state.progress.held = held
        return work | held, live

    def window(self, state: GenerationState) -> Window:
        p: BlockProgress = state.progress
        rows = self._active(state).nonzero()[:, 0]  # host
        start, end = self._bounds(state)
        eligible = self._own(state)
        step = p.step[rows]
        spb = self.config.steps_per_block
        scheduled = p.schedule[rows.to(state.device), step.clamp(max=spb - 1).to(state.device)]
        over = (step >= spb).to(state.device)
        quota = torch.where(over, eligible[rows.to(state.device)].sum(dim=1), scheduled)
        return block_window(state, rows, eligible, quota, start, end)

    def advance(self, state: GenerationState) -> None:
        p: BlockProgress = state.progress
        if state.last_window is not None:
            p.step[state.last_window.rows.cpu()] += 1
        if self.config.early_stop:
            stop_at_eos(state)
        self._settle(state)
        active = p.active & ~p.held  # a held block is bounded by the strategy holding it
        if bool((p.step[active] > self.config.block_length).any()):
            row = int((active & (p.step > self.config.block_length)).nonzero()[0, 0])
            raise DecodingError(f"block {int(p.block[row])} of row {row} still has masks after "
                                f"{int(p.step[row])} steps")
