"""What an iteration manager emits: the :class:`Window` and its extensions. Part of :mod:`dlm.messages`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from dlm.messages.base import Message, _deprecated


@dataclass(frozen=True)
class Geometry:
    """Where each row of a window is in the schedule. Row-shaped tensors are indexed like ``Window.rows``.

    Rows of one generation need not be in the same place: a row that joined a running batch is at its own
    block 0, step 0 while the others are further on, and rows of a batch move on from a block as soon as
    their own block is complete. All four are host (CPU) tensors, so a component may branch on them
    without waiting for the device.
    """

    step: Tensor  # [b] long: step of each row inside its current block (0 = the block's first step)
    block: Tensor  # [b] long: index of each row's current block (0 for schedules without blocks)
    block_start: Tensor  # [b] long: canvas columns of each row's current block
    block_end: Tensor  # [b] long
    total_steps: int | None = None  # the schedule's step budget T over a whole generation (None: no fixed budget)

    @staticmethod
    def uniform(b: int, *, step: int = 0, block: int = 0, block_start: int, block_end: int,
                total_steps: int | None = None) -> "Geometry":
        """Every one of ``b`` rows at the same place."""
        full = lambda v: torch.full((b,), int(v), dtype=torch.long)  # noqa: E731
        return Geometry(full(step), full(block), full(block_start), full(block_end), total_steps)

    @property
    def first_step(self) -> Tensor:
        """[b] bool: the row is at its block's first step (Fast-dLLM's caches refresh; block memory resets)."""
        return self.step == 0


@dataclass(frozen=True)
class SubBlocks:
    """Window extension: each row's current sub-block (Fast-dLLM v2's sub-blocks inside a block)."""

    start: Tensor  # [b] first canvas column of each row's current sub-block
    end: Tensor  # [b] one past its last column


@dataclass(frozen=True)
class BlocksInFlight:
    """Window extension: several blocks of a row in flight at once, each with its own step count and completion
    rule (D2F's pipelined blocks, Wang et al. 2025, arXiv 2508.09192). Host tensors [b, K] (rows as the window's;
    ``K`` the most blocks any row has in flight; a row's unused entries are empty spans ``start == end``).

    ``complete`` is the block's commit rule: a complete block commits at least its most confident eligible
    position, an incomplete one only what passes the strategy's threshold (possibly nothing). A strategy that
    reads it declares the feature ``blocks_in_flight`` (:mod:`dlm.compat`); ``strict_threshold`` does. The
    window's geometry describes the span of all of a row's blocks in flight (``block``: the first of them)."""

    start: Tensor  # [b, K] long: first canvas column of each block in flight
    end: Tensor  # [b, K] long: one past its last column
    step: Tensor  # [b, K] long: steps the block has been in flight
    complete: Tensor  # [b, K] bool: the block commits at least one position per step


@dataclass(frozen=True)
class Reorder:
    """Window extension (causal models): the forward sees committed columns before pending ones, each at its
    own position (WeDLM's topological reordering), so every pending column attends to every committed one."""


@dataclass(frozen=True)
class Candidates:
    """Window extension: ``K`` candidate canvases per window row, each the canvas with a commit applied on top.

    One forward evaluates all of them (the cache plans them as ``b·K`` rows, each with a private copy of its
    row's K/V: :meth:`dlm.cache.base.CacheManager.plan_candidates`); the decoding strategy then gets logits
    ``[b, K, S, V]`` and returns a :class:`Commit` with :class:`Keep` naming the candidate whose K/V the cache
    keeps. Used by draft-and-verify decoding (FreeDave, Wu et al. 2025, arXiv 2510.00294).
    """

    select: Tensor  # [b, K, W] bool: positions candidate k commits (window columns)
    tokens: Tensor  # [b, K, W] long: their tokens

    @property
    def count(self) -> int:
        return self.select.shape[1]


@dataclass(frozen=True)
class ThresholdFloor:
    """Window extension (dInfer's iteration smoothing, ``iter_threshold``): a threshold rule decides this step
    with, for each window row, the larger of its own threshold and ``value`` [b] (float64, rows as the window's).
    A strategy that reads it declares the feature ``threshold_floor`` (:mod:`dlm.compat`): ``threshold``,
    ``credit`` (its fused confidence) and ``hierarchical`` (its high threshold) do."""

    value: Tensor  # [b] float64


@dataclass(frozen=True)
class Window(Message):
    """What the iteration manager asks to denoise in this step.

    ``rows`` are the rows taking part (not done, with an eligible position); row-shaped tensors here are
    indexed like ``rows``. Columns ``[start, end)`` of the canvas are the union of the rows' windows;
    ``eligible`` marks what each row may commit (only inside its own window). ``geometry`` says where each row
    is in the schedule (per row), so no component reads another's private progress.

    Logits come for the span ``[logits_start, logits_end)`` (the window unless a strategy widened it, see
    :meth:`widen`); :meth:`window_logits` cuts the window's part out of them.
    """

    rows: Tensor  # [b] long, indices into the batch
    start: int  # first canvas column of the window
    end: int  # one past the last canvas column of the window
    eligible: Tensor  # [b, end-start] bool: positions that may be committed now (masked, or provisional)
    quota: Tensor  # [b] long: tokens the schedule asks for in this step (top-k rules use it)
    mask_id: int  # the MASK token id, never a valid proposal
    geometry: Geometry
    logits_start: int | None = None  # span of the logits this step returns; None: the window's columns
    logits_end: int | None = None
    extensions: tuple = ()

    def __post_init__(self) -> None:
        if self.logits_start is None:
            object.__setattr__(self, "logits_start", self.start)
        if self.logits_end is None:
            object.__setattr__(self, "logits_end", self.end)

    @property
    def width(self) -> int:
        return self.end - self.start

    # per-row geometry, for short
    @property
    def step(self) -> Tensor:
        """[b] long (host): each row's step inside its block."""
        return self.geometry.step

    @property
    def block(self) -> Tensor:
        """[b] long (host): each row's block index."""
        return self.geometry.block

    @property
    def block_start(self) -> Tensor:
        return self.geometry.block_start

    @property
    def block_end(self) -> Tensor:
        return self.geometry.block_end

    @property
    def first_step(self) -> Tensor:
        """[b] bool (host): the row is at its block's first step."""
        return self.geometry.first_step

    @property
    def total_steps(self) -> int | None:
        return self.geometry.total_steps

    @property
    def widened(self) -> bool:
        return self.logits_start != self.start or self.logits_end != self.end

    def widen(self, start: int, end: int) -> "Window":
        """This window, asking for the logits of columns ``[start, end)`` (a span containing the window)."""
        if start > self.start or end < self.end:
            raise ValueError(f"a logits span [{start}, {end}) must contain the window [{self.start}, {self.end})")
        return replace(self, logits_start=start, logits_end=end)

    def window_logits(self, logits: Tensor) -> Tensor:
        """The window's columns of logits returned for the span: [b, (K,) W, V]."""
        if not self.widened:
            return logits
        lo = self.start - self.logits_start
        return logits[..., lo : lo + self.width, :]

    # --- names of plugin API 1.x, kept for one minor release ---
    @property
    def candidates(self) -> Candidates | None:
        _deprecated("Window.candidates", "window.get(Candidates)")
        return self.get(Candidates)

    @property
    def sub_start(self) -> Tensor | None:
        _deprecated("Window.sub_start", "window.get(SubBlocks).start")
        sub = self.get(SubBlocks)
        return None if sub is None else sub.start

    @property
    def sub_end(self) -> Tensor | None:
        _deprecated("Window.sub_end", "window.get(SubBlocks).end")
        sub = self.get(SubBlocks)
        return None if sub is None else sub.end

    @property
    def reorder(self) -> bool:
        _deprecated("Window.reorder", "window.has(Reorder)")
        return self.has(Reorder)


# --- commits ------------------------------------------------------------------------------------------


