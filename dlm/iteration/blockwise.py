"""``blockwise``: semi-autoregressive blocks, the schedule of LLaDA and Fast-dLLM.

Semantics of Fast-dLLM's ``generate`` (Wu et al., 2025, arXiv 2505.22618; LLaDA, Nie et al. 2025): the
generation region is cut into ``gen_length / block_length`` blocks, denoised left to right; ``steps`` are
split evenly over the blocks; in a block with ``m`` masked positions and ``s`` steps, step ``i`` has quota
``m // s`` plus one for the first ``m % s`` steps. Only masked positions of the current block are eligible,
and a block is denoised until it holds no mask (the reference's "until done" loop), so strategies that
ignore the quota (threshold, factor) simply take as many steps as they need. Positions holding a provisional
(draft) token count as not yet committed: they stay eligible until a step commits them.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from dlm.errors import DecodingError
from dlm.iteration.base import BlockProgress, IterationManager, left_padded_canvas, stop_at_eos
from dlm.messages import ModelCapabilities, Window
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
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - target), d))


def transfer_schedule(masked: Tensor, steps: int) -> Tensor:
    """[B, steps] tokens per step for ``masked`` [B] positions: ``m // s``, the first ``m % s`` steps +1."""
    base = masked // steps
    rem = masked % steps
    return base[:, None] + (torch.arange(steps, device=masked.device)[None, :] < rem[:, None]).long()


def enter_block(state: GenerationState, block: int, block_length: int) -> BlockProgress:
    """Point the state's progress at block ``block`` of the generation region (step 0); return it."""
    progress = state.progress if isinstance(state.progress, BlockProgress) else BlockProgress()
    progress.block = block
    progress.start = state.gen_start + block * block_length
    progress.end = progress.start + block_length
    progress.step = 0
    state.progress = progress
    return progress


def block_window(state: GenerationState, rows: Tensor, start: int, end: int, eligible: Tensor, quota: Tensor) -> Window:
    """The window of ``rows`` over columns ``[start, end)`` inside the current block of ``state.progress``."""
    p: BlockProgress = state.progress
    return Window(
        rows=rows, start=start, end=end, eligible=eligible, quota=quota, step=p.step, mask_id=state.mask_id,
        block=p.block, block_start=p.start, block_end=p.end, total_steps=p.total_steps,
    )


class Blockwise(IterationManager):
    Config = BlockwiseConfig

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device)
        self._begin_block(state, 0)
        state.progress.total_steps = self.config.steps
        return state

    def _begin_block(self, state: GenerationState, block: int) -> None:
        p = enter_block(state, block, self.config.block_length)
        pending = state.pending()[:, p.start : p.end].sum(dim=1)
        p.schedule = transfer_schedule(pending, self.config.steps_per_block)

    def _active(self, state: GenerationState) -> Tensor:
        """[B] bool: rows still generating that have pending positions (masks, drafts) in the current block."""
        p: BlockProgress = state.progress
        return ~state.done & state.pending()[:, p.start : p.end].any(dim=1)

    def _rows(self, state: GenerationState) -> Tensor:
        """[b] active rows, found once per step: by the last advance, unless a row was cancelled since."""
        p: BlockProgress = state.progress
        if p.rows is None or p.rows_cancels != state.cancels:
            self._find_rows(state)
        return p.rows

    def _find_rows(self, state: GenerationState) -> Tensor:
        """The one host synchronisation of a step: which rows are active (the control flow branches on it,
        and rows that finished must leave the forward)."""
        p: BlockProgress = state.progress
        p.rows, p.rows_cancels = self._active(state).nonzero()[:, 0], state.cancels
        return p.rows

    def done(self, state: GenerationState) -> bool:
        p: BlockProgress = state.progress
        if p.rows is not None and p.rows_cancels == state.cancels:
            return len(p.rows) == 0  # the last advance found no active row only when every row is done
        return super().done(state)

    def window(self, state: GenerationState) -> Window:
        p: BlockProgress = state.progress
        rows = self._rows(state)
        eligible = state.pending()[rows, p.start : p.end]
        if p.step < self.config.steps_per_block:
            quota = p.schedule[rows, p.step]
        else:
            quota = eligible.sum(dim=1)
        return block_window(state, rows, p.start, p.end, eligible, quota)

    def advance(self, state: GenerationState) -> None:
        p: BlockProgress = state.progress
        p.step += 1
        if self.config.early_stop:
            stop_at_eos(state)
        if len(self._find_rows(state)):
            if p.step > self.config.block_length:
                raise DecodingError(f"block {p.block} still has masks after {p.step} steps")
            return
        if p.block + 1 < self.config.num_blocks:
            self._begin_block(state, p.block + 1)
            if not len(self._find_rows(state)):  # every remaining row stopped early
                state.done[:] = True
        else:
            state.done[:] = True
