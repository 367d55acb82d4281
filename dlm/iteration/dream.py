"""Dream's iteration schedules: ``dream`` (whole generation region) and ``dream_blockwise`` (Fast-dLLM).

``dream`` follows Dream's own ``diffusion_generate`` (Ye et al., 2025, "Dream 7B"): no blocks, the whole
generation region is one window; timesteps ``t = linspace(1, eps, steps + 1)`` (eps = 1e-3); step ``i``
commits ``int(m · (1 − t[i+1] / t[i]))`` of the ``m`` still-masked positions (float32 arithmetic and
floor, as Dream computes it), and the last step commits all that remain. The quota goes to the decoding
strategy (``dream`` with Dream's confidence kinds, or any top-k rule) through ``window.quota``.

Difference from the reference: Dream runs a forward even in steps whose quota is 0 (e.g. the first step of
256 steps over 256 tokens), committing nothing. Such a step leaves the canvas unchanged, so here a row with
quota 0 sits the step out and a step in which every row has quota 0 is skipped: same tokens (greedy),
fewer forwards. Strategies that ignore the quota (``threshold``) simply continue after ``steps`` with a
quota of "all remaining" until the region is complete.

``dream_blockwise`` is Fast-dLLM's block/cache path for Dream (Wu et al., 2025, arXiv 2505.22618,
``generation_utils_block.py`` of their released code): blocks of ``block_length`` left to right; the first
step of a block (the refresh forward under ``prefix``/``dual``) makes only the block's first column
eligible, so it is committed unconditionally. This is needed because of the logit shift: a cached step
computes columns from the block start, and the block-start column's own prediction would need the output
of the column before, which is cached and produces no logit. Later steps' windows are
``[block_start + 1, block_end)``. Top-k strategies get Dream's per-block schedule (timesteps over
``steps_per_block``, tick 0 being the first-column step); ``threshold`` ignores it.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.errors import DecodingError
from dlm.iteration.base import BlockProgress, IterationManager, left_padded_canvas, stop_at_eos
from dlm.iteration.blockwise import BlockwiseConfig, block_window, enter_block
from dlm.messages import ModelCapabilities, Window
from dlm.state import GenerationState


def dream_timesteps(steps: int, eps: float, device=None) -> Tensor:
    """Dream's ``linspace(1, eps, steps + 1)`` in float32."""
    return torch.linspace(1, eps, steps + 1, device=device)


def dream_quota(masked: Tensor, tick: int, steps: int, timesteps: Tensor) -> Tensor:
    """[B] long: tokens to commit at schedule tick ``tick`` of ``steps`` for ``masked`` [B] masked counts."""
    if tick >= steps - 1:
        return masked.clone()
    t, s = timesteps[tick], timesteps[tick + 1]
    return (masked.to(torch.float32) * (1 - s / t)).floor().long()


class DreamIterationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(256, gt=0, description="tokens to generate per prompt (Dream's max_new_tokens)")
    steps: int = Field(256, gt=0, description="diffusion steps over the whole generation region")
    eps: float = Field(1e-3, gt=0.0, lt=1.0, description="last timestep of linspace(1, eps, steps + 1)")
    early_stop: bool = Field(False, description="end a row once it committed EOS with no mask before it")


class DreamIteration(IterationManager):
    """``dream``: Dream's whole-region schedule.

    The schedule index is the progress' ``tick``, not its ``step``: skipped zero-quota ticks take no forward.
    """

    Config = DreamIterationConfig

    def __init__(self, config: DreamIterationConfig) -> None:
        super().__init__(config)
        self._timesteps = dream_timesteps(config.steps, config.eps)  # constant: per-run state is in the state

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if capabilities.attention != "bidirectional":
            return f"it denoises the whole region at once, which needs bidirectional attention, not {capabilities.attention}"
        return None

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device)
        state.progress = BlockProgress(block=0, start=state.gen_start, end=state.length,  # one block: the region
                                       total_steps=self.config.steps)
        self._settle(state)
        return state

    def _masked(self, state: GenerationState) -> Tensor:
        return state.masked()[:, state.gen_start :].sum(dim=1)

    def _quota(self, state: GenerationState) -> Tensor:
        masked = self._masked(state)
        quota = dream_quota(masked.cpu(), state.progress.tick, self.config.steps, self._timesteps).to(state.device)
        return torch.where(state.done, 0, quota)

    def _settle(self, state: GenerationState) -> None:
        """Skip schedule ticks in which no row would commit anything; mark complete rows done."""
        state.done |= ~state.masked()[:, state.gen_start :].any(dim=1)
        while not bool(state.done.all()) and not bool((self._quota(state) > 0).any()):
            state.progress.tick += 1

    def window(self, state: GenerationState) -> Window:
        quota = self._quota(state)
        rows = (quota > 0).nonzero()[:, 0]
        eligible = state.masked()[rows, state.gen_start :]
        return block_window(state, rows, state.gen_start, state.length, eligible, quota[rows])

    def advance(self, state: GenerationState) -> None:
        p: BlockProgress = state.progress
        p.step += 1
        p.tick += 1
        if self.config.early_stop:
            stop_at_eos(state)
        if p.step > self.config.steps + self.config.gen_length:
            raise DecodingError(f"the generation region still has masks after {p.step} steps")
        self._settle(state)


class DreamBlockwiseConfig(BlockwiseConfig):
    """``blockwise``'s fields and checks, plus the end of Dream's per-block timestep schedule."""

    eps: float = Field(1e-3, gt=0.0, lt=1.0, description="last timestep of each block's linspace(1, eps, ...)")


class DreamBlockwise(IterationManager):
    """``dream_blockwise``: Fast-dLLM's Dream block path (first column at the refresh, then the rest)."""

    Config = DreamBlockwiseConfig

    def __init__(self, config: DreamBlockwiseConfig) -> None:
        super().__init__(config)
        self._timesteps = dream_timesteps(config.steps_per_block, config.eps)

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device)
        self._begin_block(state, 0)
        state.progress.total_steps = self.config.steps
        return state

    def _begin_block(self, state: GenerationState, block: int) -> None:
        enter_block(state, block, self.config.block_length).tick = 0

    def _first_pending(self, state: GenerationState) -> Tensor:
        """[B] bool: rows whose block-start column is still masked (the first step is theirs)."""
        return ~state.done & (state.canvas[:, state.progress.start] == state.mask_id)

    def _rest_masked(self, state: GenerationState) -> Tensor:
        p: BlockProgress = state.progress
        return state.masked()[:, p.start + 1 : p.end]

    def _quota(self, state: GenerationState) -> Tensor:
        masked = self._rest_masked(state).sum(dim=1)
        quota = dream_quota(masked.cpu(), state.progress.tick, self.config.steps_per_block, self._timesteps)
        return torch.where(state.done, 0, quota.to(state.device))

    def _settle(self, state: GenerationState) -> None:
        """After the first-column step: skip ticks in which no row would commit anything."""
        while bool((~state.done & self._rest_masked(state).any(dim=1)).any()) and not bool(
            (self._quota(state) > 0).any()
        ):
            state.progress.tick += 1

    def window(self, state: GenerationState) -> Window:
        p: BlockProgress = state.progress
        first = self._first_pending(state)
        if bool(first.any()):
            rows = first.nonzero()[:, 0]
            ones = torch.ones(len(rows), 1, dtype=torch.bool, device=state.device)
            return block_window(state, rows, p.start, p.start + 1, ones, ones[:, 0].long())
        quota = self._quota(state)
        rows = (quota > 0).nonzero()[:, 0]
        return block_window(state, rows, p.start + 1, p.end, self._rest_masked(state)[rows], quota[rows])

    def advance(self, state: GenerationState) -> None:
        p: BlockProgress = state.progress
        p.step += 1
        if self.config.early_stop:
            stop_at_eos(state)
        if p.step > 1:
            p.tick += 1
        elif not bool(self._first_pending(state).any()):
            p.tick = 1  # tick 0 of the block's schedule was the first-column (refresh) step
        active = ~state.done & state.masked()[:, p.start : p.end].any(dim=1)
        if bool(active.any()):
            if p.step > self.config.block_length + self.config.steps_per_block:
                raise DecodingError(f"block {p.block} still has masks after {p.step} steps")
            self._settle(state)
            return
        if p.block + 1 < self.config.num_blocks and not bool(state.done.all()):
            self._begin_block(state, p.block + 1)
        else:
            state.done[:] = True
