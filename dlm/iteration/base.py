"""Diffusion-iteration manager interface: builds the canvas, picks each step's window, moves blocks on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch
from pydantic import BaseModel
from torch import Tensor

from dlm.errors import InputError
from dlm.memory import RowMemory, derived_field, shared_field
from dlm.messages import ModelCapabilities, Window
from dlm.state import GenerationState


@dataclass
class BlockProgress(RowMemory):
    """Per-row progress of a block schedule, kept in ``state.progress`` by the manager that owns it.

    ``block`` and ``step`` are host tensors (control flow branches on them); ``schedule`` lives with the
    canvas. Each row moves on from its block when its own block is complete, so rows of a batch (and rows
    that joined later) may be at different blocks.
    """

    movable = True  # no column fields: blocks are counted from gen_start

    block: Tensor  # [B] long (host): index of each row's current block
    step: Tensor  # [B] long (host): step index inside the row's current block
    tick: Tensor  # [B] long (host): index into a timestep schedule (Dream's); ticks that commit nothing are skipped
    schedule: Tensor | None = None  # [B, steps_per_block] long: top-k quota per step of the row's current block
    total_steps: int | None = shared_field(default=None)  # the configured steps of a generation (Geometry.total_steps)
    active: Tensor | None = derived_field(default=None)  # [B] bool (host): rows with work, found by the last advance
    active_cancels: int = derived_field(default=-1)  # state.cancels when ``active`` was found
    held: Tensor | None = derived_field(default=None)  # [B] bool (host): rows an editing strategy held, at that advance

    @staticmethod
    def fresh(batch: int, *, total_steps: int | None = None) -> "BlockProgress":
        zeros = lambda: torch.zeros(batch, dtype=torch.long)  # noqa: E731
        return BlockProgress(block=zeros(), step=zeros(), tick=zeros(), total_steps=total_steps)


class IterationManager(ABC):
    """Which positions are denoised now, and when a block / the whole generation is done."""

    Config: ClassVar[type[BaseModel]]
    joinable: ClassVar[bool] = False  # rows may join a running generation: per-row progress (a RowMemory)
    provides: ClassVar[frozenset[str]] = frozenset()  # features guaranteed to the other components (dlm.compat)
    requires: ClassVar[Mapping[str, str]] = {}  # feature -> why it is needed; nothing declared: composes with all

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    def check(self, capabilities: ModelCapabilities) -> str | None:
        """Return why this manager cannot drive a model with ``capabilities``, or None if it can."""
        return None

    @abstractmethod
    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        """A fresh state for ``prompts`` (1-D LongTensors of different lengths), its generation region at column
        ``gen_start`` (default: the longest prompt's length; a larger value left-pads every row, so the rows can
        join a running generation laid out that way). The manager keeps its per-row progress in
        ``state.progress`` (a :class:`~dlm.memory.RowMemory` of its own), never on the manager itself, so one
        manager drives several generations at once."""

    @abstractmethod
    def window(self, state: GenerationState) -> Window:
        """The positions to denoise in the next step."""

    @abstractmethod
    def advance(self, state: GenerationState) -> None:
        """Bookkeeping after a commit: next step, next block, end of generation."""

    def done(self, state: GenerationState) -> bool:
        return bool(state.done.all())

    def narrow(self, state: GenerationState, window: Window, logits: Tensor) -> Window:
        """The window the decoding strategy selects from, given this step's ``logits`` (over the window's logits
        span): a manager that decides a row's block from the step's own predictions narrows ``eligible`` and the
        geometry here (``adablock``), between the forward and ``select``. Default: ``window`` unchanged."""
        return window


class SettlingManager(IterationManager):
    """A manager whose :meth:`_settle` (run by ``advance``) moves each row on where it has nothing left to do and
    records the active rows in ``state.progress.active`` ([B] host bool). They are found again only when the row
    set changed from outside the loop (``state.cancels``: a cancel, rows leaving or joining)."""

    @abstractmethod
    def _settle(self, state: GenerationState) -> None:
        """Move rows on; set ``state.progress.active`` and ``active_cancels``."""

    def _active(self, state: GenerationState) -> Tensor:
        """[B] host bool: rows with work in the next step."""
        p = state.progress
        if p.active is None or p.active_cancels != state.cancels:
            self._settle(state)
        return p.active

    def done(self, state: GenerationState) -> bool:
        return not bool(self._active(state).any())


def end_or_next_block(state: GenerationState, complete: Tensor, num_blocks: int) -> Tensor:
    """Rows ``complete`` ([B] host bool) finished their block: those at their last block end; return the others
    ([B] host bool), whose ``state.progress.block`` the caller moves on."""
    last = complete & (state.progress.block + 1 >= num_blocks)
    if bool(last.any()):
        state.done[last.nonzero()[:, 0].to(state.device)] = True
    return complete & ~last


def left_padded_canvas(
    prompts: list[Tensor], gen_length: int, capabilities: ModelCapabilities, device: torch.device, *,
    gen_start: int | None = None,
) -> GenerationState:
    """State with ``[pad | prompt | MASK × gen_length]`` rows; the generation region is column-aligned at
    ``gen_start`` (default: the longest prompt's length).

    An empty prompt is unconditional generation: the row's whole canvas is generated (an all-MASK canvas when
    every prompt is empty, as MDLM samples), for a model that can predict a column without one before it
    (:func:`needs_prompt`)."""
    if not prompts:
        raise InputError("no prompts given")
    lengths = [int(p.numel()) for p in prompts]
    for i, n in enumerate(lengths):
        if n == 0:
            reason = needs_prompt(capabilities)
            if reason:
                raise InputError(f"prompt {i} is empty: {reason}")
            if gen_length > capabilities.max_length:
                raise InputError(f"gen_length {gen_length} exceeds the model's context of {capabilities.max_length} "
                                 f"tokens (prompt {i} is empty); lower gen_length to at most "
                                 f"{capabilities.max_length}")
            continue
        if gen_length >= capabilities.max_length:
            raise InputError(
                f"gen_length {gen_length} alone fills the model's context of {capabilities.max_length} tokens, "
                f"leaving no room for prompt {i} ({n} tokens); lower gen_length to at most "
                f"{capabilities.max_length - n}"
            )
        if n + gen_length > capabilities.max_length:
            raise InputError(
                f"prompt {i} has {n} tokens; with gen_length {gen_length} that is {n + gen_length} tokens, "
                f"more than the model's context of {capabilities.max_length}. Shorten the prompt to at most "
                f"{capabilities.max_length - gen_length} tokens or lower gen_length."
            )
    longest = max(lengths)
    if gen_start is not None:
        if gen_start < longest:
            raise InputError(f"gen_start {gen_start} leaves no room for a prompt of {longest} tokens")
        if gen_start + gen_length > capabilities.max_length:
            raise InputError(f"gen_start {gen_start} + gen_length {gen_length} exceeds the model's context of "
                             f"{capabilities.max_length} tokens")
        longest = gen_start
    canvas = torch.full((len(prompts), longest + gen_length), capabilities.mask_id, dtype=torch.long, device=device)
    pad = torch.tensor([longest - n for n in lengths], dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        canvas[r, : longest - lengths[r]] = capabilities.eos_id
        canvas[r, longest - lengths[r] : longest] = p.to(device)
    b = len(prompts)
    return GenerationState(
        canvas=canvas,
        pad=pad,
        prompt_lengths=torch.tensor(lengths, dtype=torch.long, device=device),
        gen_start=longest,
        gen_length=gen_length,
        mask_id=capabilities.mask_id,
        eos_ids=capabilities.eos_ids,
        nfe=torch.zeros(b, dtype=torch.long, device=device),
        done=torch.zeros(b, dtype=torch.bool, device=device),
    )


def needs_prompt(capabilities: ModelCapabilities) -> str | None:
    """Why a model with ``capabilities`` cannot generate without a prompt (unconditional generation), or None.

    A model whose prediction for a column is read at the column before it (logit shift 1: Dream, Fast-dLLM v2,
    causal decoders) has no output for the first column of an empty canvas; a model with unshifted logits and
    bidirectional or block-causal attention (LLaDA, MDLM, SDAR) predicts every column of an all-MASK canvas."""
    if capabilities.logit_shift or capabilities.attention == "causal":
        what = "causal attention" if capabilities.attention == "causal" else "shifted logits"
        return (f"this model ({what}) predicts each column from the column before it, so it needs at least one "
                "prompt token; unconditional generation (no prompt) needs a model with unshifted logits and "
                "non-causal attention, e.g. mdlm or llada")
    return None


def stop_at_eos(state: GenerationState) -> None:
    """End every row that has committed an end token with nothing pending (MASK or a provisional draft)
    before it; fill the rest with EOS. A draft end token does not count: drafts may still change; nor does any
    token of a row whose current block an editing strategy holds open (``state.held``), since an edit may still
    rewrite it or a token before it: such a row ends once its block is released."""
    gen = state.canvas[:, state.gen_start :]  # [B, G]
    pending = state.pending()[:, state.gen_start :]
    is_end = torch.isin(gen, torch.tensor(state.eos_ids, device=gen.device)) & ~pending
    first = torch.where(is_end.any(dim=1), is_end.int().argmax(dim=1), gen.shape[1])  # [B]
    cols = torch.arange(gen.shape[1], device=gen.device)[None, :]
    pending_before = (pending & (cols < first[:, None])).any(dim=1)
    stop = (first < gen.shape[1]) & ~pending_before & ~state.done  # [B]
    if state.held is not None:
        stop &= ~state.held
    # no branch on ``stop``: filling and ending nothing is a no-op, and the host never waits for the device
    fill = stop[:, None] & (cols > first[:, None])
    gen.masked_fill_(fill, state.eos_ids[0])
    if state.provisional is not None:
        state.provisional[:, state.gen_start :] &= ~fill
    state.done |= stop
