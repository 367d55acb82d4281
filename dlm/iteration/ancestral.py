"""``ancestral``: the schedule of MDLM's and DiDi-Instruct's samplers: the whole generation region, ``steps`` time
steps (Sahoo et al., 2024, arXiv 2406.07524; Zheng et al., 2025, arXiv 2509.25035: ``sampling.steps``, e.g. 1000
for the MDLM teacher, 8 to 128 for the DiDi-Instruct student).

No blocks: each step's window is the whole generation region of every row with a masked position left, every
masked position eligible. The step budget ``steps`` (``T``) goes to the decoding strategy as
``window.total_steps``: ``ancestral`` runs its time schedule over it (and its noise-removal step after it), so a
row takes at most ``steps + 1`` steps. ``steps`` may exceed ``gen_length``: a step is a time step of the
schedule, not a count of tokens (MDLM's OpenWebText samples: 1024 tokens in 1000 steps, or more).

Unconditional generation is its usual use: with no prompt the canvas is ``gen_length`` MASK tokens (MDLM samples
whole 1024-token sequences, no BOS; :func:`~dlm.iteration.base.left_padded_canvas`), so ``gen_length`` may be the
model's whole context. A prompt is a prefix the rows are conditioned on.

The window's ``quota`` serves top-k strategies driven by this schedule: the masked positions spread evenly over
the steps left (``ceil(m / (T − step))``, all of them from step ``T − 1`` on). ``ancestral`` ignores it.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from dlm.errors import DecodingError
from dlm.iteration.base import BlockProgress, SettlingManager, left_padded_canvas
from dlm.iteration.blockwise import block_window
from dlm.messages import ModelCapabilities, Window
from dlm.state import GenerationState


class AncestralIterationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(1024, gt=0, description="tokens to generate per row (MDLM: its whole 1024-token context)")
    steps: int = Field(1000, gt=0, description="time steps of the schedule over the generation region")


class AncestralIteration(SettlingManager):
    """``ancestral``: the whole region, ``steps`` time steps (see the module doc)."""

    Config = AncestralIterationConfig
    joinable = True
    provides = frozenset({"step_budget"})

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if capabilities.attention != "bidirectional":
            return ("it denoises the whole region at once, which needs bidirectional attention, not "
                    f"{capabilities.attention}")
        return None

    def start(self, prompts: list, capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device, gen_start=gen_start)
        state.progress = BlockProgress.fresh(state.batch_size, total_steps=self.config.steps)
        self._settle(state)
        return state

    def _settle(self, state: GenerationState) -> None:
        """Mark rows with nothing masked done; the others are active."""
        p: BlockProgress = state.progress
        state.done |= ~state.masked()[:, state.gen_start :].any(dim=1)
        p.active, p.active_cancels = (~state.done).cpu(), state.cancels

    def window(self, state: GenerationState) -> Window:
        p: BlockProgress = state.progress
        rows = self._active(state).nonzero()[:, 0]  # host
        eligible = state.masked()
        dev_rows = rows.to(state.device)
        masked = eligible[dev_rows, state.gen_start :].sum(dim=1)
        left = (self.config.steps - p.step[rows]).clamp(min=1).to(state.device)
        quota = torch.where(left > 1, -(-masked // left), masked)
        start = torch.full((state.batch_size,), state.gen_start, dtype=torch.long)
        end = torch.full((state.batch_size,), state.length, dtype=torch.long)
        return block_window(state, rows, eligible, quota, start, end)

    def advance(self, state: GenerationState) -> None:
        p: BlockProgress = state.progress
        if state.last_window is not None:
            p.step[state.last_window.rows.cpu()] += 1
        self._settle(state)
        bound = max(self.config.steps + 1, self.config.gen_length)
        over = p.active & (p.step >= bound)
        if bool(over.any()):
            row = int(over.nonzero()[0, 0])
            raise DecodingError(f"row {row} still has masked positions after {int(p.step[row])} steps of a schedule of "
                                f"{self.config.steps} time steps (and its noise-removal step)")
