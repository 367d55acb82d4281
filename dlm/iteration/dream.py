"""Dream's iteration schedules: ``dream`` (whole generation region) and ``dream_blockwise`` (Fast-dLLM).

``dream`` follows Dream's own ``diffusion_generate`` (Ye et al., 2025, "Dream 7B"): no blocks, the whole
generation region is one window; timesteps ``t = linspace(1, eps, steps + 1)`` (eps = 1e-3); step ``i``
commits ``int(m · (1 − t[i+1] / t[i]))`` of the ``m`` still-masked positions (float32 arithmetic and
floor, as Dream computes it), and the last step commits all that remain. The quota goes to the decoding
strategy (``dream`` with Dream's confidence kinds, or any top-k rule) through ``window.quota``.

Difference from the reference: Dream runs a forward even in steps whose quota is 0 (e.g. the first step of
256 steps over 256 tokens), committing nothing. Such a step leaves the canvas unchanged, so here a row with
quota 0 sits the step out and a step in which every row has quota 0 is skipped: same tokens (greedy),
fewer forwards. Each row keeps its own tick: a row skips the ticks in which *it* would commit nothing,
so it takes exactly the forwards it takes alone, whatever the other rows of the batch (or rows that join a
running generation) need. Strategies that ignore the quota (``threshold``) simply continue after ``steps``
with a quota of "all remaining" until the region is complete.

``dream_blockwise`` is Fast-dLLM's block/cache path for Dream (Wu et al., 2025, arXiv 2505.22618,
``generation_utils_block.py`` of their released code): blocks of ``block_length`` left to right; the first
step of a block (the refresh forward under ``prefix``/``dual``) makes only the block's first column
eligible, so it is committed unconditionally. This is needed because of the logit shift: a cached step
computes columns from the block start, and the block-start column's own prediction would need the output
of the column before, which is cached and produces no logit. Later steps' windows are
``[block_start + 1, block_end)``. Top-k strategies get Dream's per-block schedule (timesteps over
``steps_per_block``, tick 0 being the first-column step); ``threshold`` ignores it.

Each row moves through its blocks at its own pace (its block, step and tick are its own): a row whose block
is complete moves on at once, so one step may hold rows at different blocks, some at their first-column
step and others at their later steps. The window is the union of the rows' own spans; each row's own span
(``[block_start, block_start + 1)`` or ``[block_start + 1, block_end)``) travels as its
:class:`~dlm.messages.SubBlocks`, and the geometry's ``block_start``/``block_end`` are its whole block.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.errors import DecodingError
from dlm.iteration.base import BlockProgress, SettlingManager, end_or_next_block, left_padded_canvas, stop_at_eos
from dlm.iteration.blockwise import BlockwiseConfig, block_bounds, block_window, in_bounds
from dlm.messages import Geometry, ModelCapabilities, SubBlocks, Window
from dlm.state import GenerationState


def dream_timesteps(steps: int, eps: float, device=None) -> Tensor:
    """Dream's ``linspace(1, eps, steps + 1)`` in float32."""
    return torch.linspace(1, eps, steps + 1, device=device)


def dream_quota(masked: Tensor, tick: int | Tensor, steps: int, timesteps: Tensor) -> Tensor:
    """[B] long: tokens to commit at schedule tick ``tick`` (one int, or [B] per row) of ``steps`` for
    ``masked`` [B] masked counts (float32 and floor, as Dream; every remaining token from tick ``steps - 1`` on)."""
    tick = torch.as_tensor(tick, dtype=torch.long, device=masked.device).expand(masked.shape)
    timesteps = timesteps.to(masked.device)
    i = tick.clamp(max=steps - 1)
    t, s = timesteps[i], timesteps[i + 1]
    quota = (masked.to(torch.float32) * (1 - s / t)).floor().long()
    return torch.where(tick >= steps - 1, masked, quota)


def skip_idle_ticks(p: BlockProgress, rows: Tensor, masked: Tensor, steps: int, timesteps: Tensor) -> None:
    """Move each of ``rows`` ([B] host bool) past the schedule ticks in which it would commit nothing, given its
    ``masked`` count ([B] host): skipped ticks take no forward, as in Dream's sampler."""
    while True:
        idle = rows & (dream_quota(masked, p.tick, steps, timesteps) == 0)
        if not bool(idle.any()):
            return
        p.tick[idle] += 1


class DreamIterationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(256, gt=0, description="tokens to generate per prompt (Dream's max_new_tokens)")
    steps: int = Field(256, gt=0, description="diffusion steps over the whole generation region")
    eps: float = Field(1e-3, gt=0.0, lt=1.0, description="last timestep of linspace(1, eps, steps + 1)")
    early_stop: bool = Field(False, description="end a row once it committed EOS with no mask before it")


class DreamIteration(SettlingManager):
    """``dream``: Dream's whole-region schedule.

    A row's schedule index is its progress' ``tick``, not its ``step``: skipped zero-quota ticks take no
    forward. The whole generation region is the row's one block (block 0).
    """

    Config = DreamIterationConfig
    joinable = True
    provides = frozenset({"step_budget"})

    def __init__(self, config: DreamIterationConfig) -> None:
        super().__init__(config)
        self._timesteps = dream_timesteps(config.steps, config.eps)  # constant: per-run state is in the state

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if capabilities.attention != "bidirectional":
            return f"it denoises the whole region at once, which needs bidirectional attention, not {capabilities.attention}"
        return None

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device, gen_start=gen_start)
        state.progress = BlockProgress.fresh(state.batch_size, total_steps=self.config.steps)
        self._settle(state)
        return state

    def _settle(self, state: GenerationState) -> None:
        """Mark complete rows done; move each live row past the ticks in which it would commit nothing."""
        p: BlockProgress = state.progress
        masked = state.masked()[:, state.gen_start :].sum(dim=1)
        state.done |= masked == 0
        masked, done = torch.stack((masked, state.done.long())).cpu()  # one read of the device
        live = done == 0
        skip_idle_ticks(p, live, masked, self.config.steps, self._timesteps)
        p.active, p.active_cancels = live, state.cancels

    def window(self, state: GenerationState) -> Window:
        p: BlockProgress = state.progress
        rows = self._active(state).nonzero()[:, 0]  # host
        eligible = state.masked()
        dev_rows = rows.to(state.device)
        counts = eligible[dev_rows, state.gen_start :].sum(dim=1)
        quota = dream_quota(counts, p.tick[rows], self.config.steps, self._timesteps)
        start = torch.full((state.batch_size,), state.gen_start, dtype=torch.long)
        end = torch.full((state.batch_size,), state.length, dtype=torch.long)
        return block_window(state, rows, eligible, quota, start, end)

    def advance(self, state: GenerationState) -> None:
        p: BlockProgress = state.progress
        if state.last_window is not None:
            rows = state.last_window.rows.cpu()
            p.step[rows] += 1
            p.tick[rows] += 1
        if self.config.early_stop:
            stop_at_eos(state)
        self._settle(state)
        over = p.active & (p.step > self.config.steps + self.config.gen_length)
        if bool(over.any()):
            row = int(over.nonzero()[0, 0])
            raise DecodingError(f"the generation region of row {row} still has masks after {int(p.step[row])} steps")


class DreamBlockwiseConfig(BlockwiseConfig):
    """``blockwise``'s fields and checks, plus the end of Dream's per-block timestep schedule."""

    eps: float = Field(1e-3, gt=0.0, lt=1.0, description="last timestep of each block's linspace(1, eps, ...)")


class DreamBlockwise(SettlingManager):
    """``dream_blockwise``: Fast-dLLM's Dream block path (first column at the refresh, then the rest), each
    row at its own block, step and tick."""

    Config = DreamBlockwiseConfig
    joinable = True
    provides = frozenset({"step_budget"})

    def __init__(self, config: DreamBlockwiseConfig) -> None:
        super().__init__(config)
        self._timesteps = dream_timesteps(config.steps_per_block, config.eps)

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device, gen_start=gen_start)
        state.progress = BlockProgress.fresh(state.batch_size, total_steps=self.config.steps)
        self._settle(state)
        return state

    def _bounds(self, state: GenerationState) -> tuple[Tensor, Tensor]:
        return block_bounds(state, state.progress.block, self.config.block_length)

    def _spans(self, state: GenerationState) -> tuple[Tensor, Tensor, Tensor]:
        """[B] host: each row's own span ``[lo, hi)`` for its next step, and whether that step is its block's
        first-column step (step 0 with the block-start column still masked)."""
        p: BlockProgress = state.progress
        start, end = self._bounds(state)
        col = start.clamp(max=state.length - 1).to(state.device)
        at_start = (state.canvas.gather(1, col[:, None])[:, 0] == state.mask_id).cpu()
        first = (p.step == 0) & at_start
        return torch.where(first, start, start + 1), torch.where(first, start + 1, end), first

    def _settle(self, state: GenerationState) -> None:
        """Move every live row whose block is complete to its next block (or end it); then move each row at
        its block's later steps past the ticks in which it would commit nothing. Finds the active rows."""
        p: BlockProgress = state.progress
        while True:
            start, end = self._bounds(state)
            own = state.masked() & in_bounds(state, start, end)
            work, live = torch.stack((own.any(dim=1), ~state.done)).cpu()  # one read of the device
            complete = live & ~work
            if not bool(complete.any()):
                break
            moving = end_or_next_block(state, complete, self.config.num_blocks)
            p.block[moving] += 1
            p.step[moving] = 0
            p.tick[moving] = 0
        active = live & work
        lo, hi, first = self._spans(state)
        rest = active & ~first
        if bool(rest.any()):
            masked = (state.masked() & in_bounds(state, lo, hi)).sum(dim=1).cpu()
            skip_idle_ticks(p, rest, masked, self.config.steps_per_block, self._timesteps)
        p.active, p.active_cancels = active, state.cancels

    def window(self, state: GenerationState) -> Window:
        p: BlockProgress = state.progress
        rows = self._active(state).nonzero()[:, 0]  # host
        lo, hi, first = self._spans(state)
        start, end = self._bounds(state)
        dev_rows = rows.to(state.device)
        eligible = (state.masked() & in_bounds(state, lo, hi))[dev_rows]
        schedule = dream_quota(eligible.sum(dim=1), p.tick[rows], self.config.steps_per_block, self._timesteps)
        quota = torch.where(first[rows].to(state.device), 1, schedule)
        w_lo, w_hi = int(lo[rows].min()), int(hi[rows].max())
        geometry = Geometry(step=p.step[rows], block=p.block[rows], block_start=start[rows], block_end=end[rows],
                            total_steps=p.total_steps)
        return Window(rows=dev_rows, start=w_lo, end=w_hi, eligible=eligible[:, w_lo:w_hi], quota=quota,
                      mask_id=state.mask_id, geometry=geometry, extensions=(SubBlocks(lo[rows], hi[rows]),))

    def advance(self, state: GenerationState) -> None:
        p: BlockProgress = state.progress
        if state.last_window is not None:
            rows = state.last_window.rows.cpu()
            p.step[rows] += 1
            step = p.step[rows]
            # tick 0 of a block's schedule was its first-column (refresh) step; later steps take the next tick
            p.tick[rows] = torch.where(step > 1, p.tick[rows] + 1, 1)
        if self.config.early_stop:
            stop_at_eos(state)
        self._settle(state)
        over = p.active & (p.step > self.config.block_length + self.config.steps_per_block)
        if bool(over.any()):
            row = int(over.nonzero()[0, 0])
            raise DecodingError(f"block {int(p.block[row])} of row {row} still has masks after {int(p.step[row])} steps")
