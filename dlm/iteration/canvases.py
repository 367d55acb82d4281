"""``canvases``: block diffusion over revisable canvases that start from uniform noise (DiffusionGemma).

transformers' ``DiffusionGemmaGenerationMixin.generate`` (``models/diffusion_gemma/generation_diffusion_gemma.py``,
5.13+) generates canvases of ``canvas_length`` tokens left to right. Each canvas starts as uniformly random tokens
(``EntropyBoundSampler.initialize_canvas``: ``torch.randint(0, vocab_size, (B, canvas_length))``); every step
redrafts it (the decoding strategy's acceptance and renoising) until the strategy finishes it, at most
``max_denoising_steps`` steps; the finished canvas is appended to the sequence (the model's encoder reads it) and
the next canvas starts. A row ends after the canvas in which it committed an end token.

Here a canvas is a block of the generation region, ``[gen_start + j·C, gen_start + (j+1)·C)``. The state is
**revisable** (``state.revisable``): the canvas' tokens are provisional (pending, every one eligible) and a step
may redraft them without committing any; the canvas is done when a commit selects its positions (the decoding
strategy's stop). Committed tokens never change: a finished canvas is final, as in the reference. The noise of a
canvas is drawn from the row's own random stream when the row's window first reaches it (before the canvas'
first forward, as the reference draws it after encoding), so a row of a batch draws what it draws alone.

Rows move through canvases together (the reference's batch does too): a row whose canvas is done waits, without
forwards or draws, until every active row's is, so the next canvas' columns are the same for every row.
``gen_length`` must be a whole number of canvases (the reference generates ``ceil(max_new_tokens / C)`` whole
canvases). The step bound ``max_steps`` ends a canvas that a strategy never finishes with an error, not a hang.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.errors import DecodingError, InputError
from dlm.iteration.base import IterationManager, left_padded_canvas, stop_at_eos
from dlm.memory import RowMemory, shared_field
from dlm.messages import Geometry, ModelCapabilities, Window
from dlm.state import GenerationState


class CanvasesConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(256, gt=0, description="tokens to generate: a whole number of canvases")
    canvas_length: int | None = Field(None, gt=0, description="tokens per canvas; default: the model's "
                                                              "(config.json canvas_length)")
    max_steps: int = Field(1024, gt=0, description="bound on the steps of one canvas (a strategy that never "
                                                   "finishes a canvas is an error, not a hang)")


@dataclass
class CanvasProgress(RowMemory):
    block: Tensor  # [B] long (host): each row's current canvas
    step: Tensor  # [B] long (host): steps taken in it
    started: Tensor  # [B] bool (host): its noise is drawn
    canvas: int = shared_field(default=0)
    vocab: int = shared_field(default=0)


class Canvases(IterationManager):
    """Revisable canvases from noise, left to right, ending a row after the canvas holding its end token."""

    Config = CanvasesConfig
    provides = frozenset({"revisable", "drafts"})
    requires = {"noise_canvas": "it starts each canvas from uniform noise and redrafts it; a masked model starts "
                                "from MASK (use blockwise or block_diffusion)",
                "finishes_canvases": "a canvas is done only when its decoding strategy commits all of it; a rule "
                                     "that commits positions one by one would commit noise"}

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if capabilities.vocab_size is None:
            return "its canvases are drawn uniformly from the vocabulary, and the model declares no vocab_size"
        return None

    def _canvas(self, capabilities: ModelCapabilities) -> int:
        c = self.config.canvas_length or capabilities.block_size
        if c is None:
            raise InputError("canvases needs canvas_length: the model declares none")
        return c

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        c = self._canvas(capabilities)
        if self.config.gen_length % c:
            raise InputError(f"gen_length {self.config.gen_length} is not a whole number of canvases of {c} tokens; "
                             f"use a multiple of {c} (the reference generates whole canvases: "
                             f"{-(-self.config.gen_length // c) * c} tokens for this length)")
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device, gen_start=gen_start)
        state.revisable = True
        b = state.batch_size
        state.progress = CanvasProgress(torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long),
                                        torch.zeros(b, dtype=torch.bool), canvas=c, vocab=capabilities.vocab_size)
        return state

    def _active(self, state: GenerationState) -> Tensor:
        """[B] host bool: rows with their current canvas still pending."""
        p = state.progress
        lo = state.gen_start + int(p.block.max()) * p.canvas if len(p.block) else state.gen_start
        pending = state.pending()[:, lo : lo + p.canvas].any(dim=1).cpu()
        return ~state.done.cpu() & (pending | ~p.started)

    def window(self, state: GenerationState) -> Window:
        p = state.progress
        rows = self._active(state).nonzero().squeeze(1)
        lo = state.gen_start + int(p.block.max()) * p.canvas
        hi = lo + p.canvas
        fresh = rows[~p.started[rows]]
        for r in fresh.tolist():  # each row's noise from its own stream, as the reference's randint
            noise = torch.randint(0, p.vocab, (1, p.canvas), generator=state.rng.generators[r], device=state.device)
            state.noise(torch.tensor([r], device=state.device), lo, noise)
        p.started[fresh] = True
        steps = p.step[rows]
        if bool((steps >= self.config.max_steps).any()):
            raise DecodingError(f"a canvas took {self.config.max_steps} steps without its decoding strategy "
                                "finishing it (max_steps)")
        dev = rows.to(state.device)
        b = len(rows)
        geometry = Geometry(steps.clone(), p.block[rows].clone(), torch.full((b,), lo), torch.full((b,), hi))
        return Window(rows=dev, start=lo, end=hi, eligible=state.pending()[dev, lo:hi],
                      quota=torch.ones(b, dtype=torch.long, device=state.device), mask_id=state.mask_id,
                      geometry=geometry)

    def advance(self, state: GenerationState) -> None:
        p = state.progress
        rows = state.last_window.rows.cpu()
        p.step[rows] += 1
        stop_at_eos(state)
        if bool(self._active(state).any()):
            return
        last = int(p.block.max()) + 1 >= state.gen_length // p.canvas
        if last:
            state.done[:] = True
            return
        p.block += 1
        p.step.zero_()
        p.started.zero_()

    def done(self, state: GenerationState) -> bool:
        return bool(state.done.all())
