"""``adablock``: AdaBlock-dLLM's adaptive block size (Lu et al., arXiv 2509.26432, ICLR 2026; lgxi24/AdaBlock-dLLM
@ 491b205: ``compute_block_length`` in ``llada/generate_adablock.py``; Dream's in
``dream/model/generation_utils_adablock.py``).

Semi-autoregressive blocks, each row deciding its block's length at the block's first step from that step's own
predictions. Over the look-ahead ``[s, s + w)`` from the block's start ``s`` (``w = min(int(lookahead ·
gen_length), remaining)``), among the columns whose argmax token is a delimiter (``delimiter_ids``), take the one of
highest softmax probability (the first on a tie): if it reaches ``delimiter_threshold`` the block ends just after
it, else the block has ``min(block_length, remaining)`` tokens. The same step commits inside the decided block, and
the row stays in it until nothing is pending. ``delimiter_threshold: null`` (the authors' ``inf``): fixed blocks of
``block_length``, the last one shorter (``blockwise`` where it divides gen_length).

The decision needs the step's logits: a block's first window spans its look-ahead, and :meth:`narrow` (run by the
pipeline between the forward and ``select``) cuts it to the decided block. Caches read each row's bounds from the
geometry: ``prefix``/``dual`` refresh at a block's first step (the authors' full forward with ``use_cache``) and
reuse its K/V over the decided block, as their cached loops do. Each step asks one token (``quota`` 1; the
authors run threshold decoding, ``threshold: 1.0`` being top-1). Candidate steps (``freedave``) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.errors import DecodingError
from dlm.iteration.base import BlockProgress, SettlingManager, left_padded_canvas, stop_at_eos
from dlm.iteration.blockwise import block_window, in_bounds
from dlm.messages import Candidates, ModelCapabilities, Window
from dlm.state import GenerationState


class AdaBlockConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(128, gt=0, description="tokens to generate per prompt")
    block_length: int = Field(32, gt=0, description="block length when no delimiter decides (init_block_length)")
    delimiter_ids: tuple[int, ...] = Field((198,), min_length=1, description="token ids that may end a block "
                                           "(198: newline of LLaDA-8B and Dream/Qwen2)")
    delimiter_threshold: float | None = Field(0.3, ge=0.0, le=1.0, description="least probability of the "
                                              "chosen delimiter (null: fixed blocks, the authors' inf)")
    lookahead: float = Field(0.25, gt=0.0, le=1.0, description="fraction of gen_length searched for a delimiter")
    early_stop: bool = Field(False, description="end a row once it committed EOS with no mask before it")


@dataclass
class AdaBlockProgress(BlockProgress):
    """``BlockProgress`` and each row's block, [B] long host tensors: start (from gen_start), length (0: undecided)."""

    offset: Tensor | None = None
    length: Tensor | None = None


class AdaBlock(SettlingManager):
    """Blocks whose length each row decides from its block's first step (see the module doc)."""

    Config = AdaBlockConfig
    joinable = True
    excludes = {"candidate_steps": "it cuts a block's first window to the block it decides from the step's logits; "
                                   "a candidate step drafted canvases over the whole look-ahead before the forward"}

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if capabilities.canvas != "masked":
            return "adablock reads the predictions of a masked canvas; this model starts canvases from noise"
        bad = [i for i in self.config.delimiter_ids if i == capabilities.mask_id
               or not 0 <= i < (capabilities.vocab_size or i + 1)]
        if bad:
            return (f"delimiter_ids {bad} are not tokens of this model (vocabulary {capabilities.vocab_size}, MASK "
                    f"{capabilities.mask_id}); give the ids its tokenizer has for the delimiters, e.g. a newline")
        return None

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device, gen_start=gen_start)
        p = BlockProgress.fresh(state.batch_size)
        state.progress = AdaBlockProgress(p.block, p.step, p.tick, offset=p.block.clone(), length=p.block.clone())
        self._settle(state)
        return state

    def _bounds(self, state: GenerationState) -> tuple[Tensor, Tensor, Tensor]:
        """[B] host: each row's block start, its end (undecided: the look-ahead's end) and the look-ahead's end."""
        p, c = state.progress, self.config
        remaining = c.gen_length - p.offset
        look = torch.clamp(remaining, max=int(c.lookahead * c.gen_length))
        start = state.gen_start + p.offset
        end = torch.where(p.length > 0, p.length, torch.maximum(look, remaining.clamp(max=c.block_length)))
        return start, start + end, start + look

    def _settle(self, state: GenerationState) -> None:
        p: AdaBlockProgress = state.progress
        while True:
            own = (state.pending() & in_bounds(state, *self._bounds(state)[:2])).any(dim=1)
            work, live = torch.stack((own, ~state.done)).cpu()
            complete = live & ~work & (p.length > 0)
            if not bool(complete.any()):
                break
            p.offset[complete] += p.length[complete]
            p.length[complete], p.step[complete] = 0, 0
            p.block[complete] += 1
            last = complete & (p.offset >= self.config.gen_length)
            state.done[last.nonzero()[:, 0].to(state.device)] = True
        p.active, p.active_cancels = live & work, state.cancels

    def window(self, state: GenerationState) -> Window:
        rows = self._active(state).nonzero()[:, 0]
        start, end, _ = self._bounds(state)
        eligible = state.pending() & in_bounds(state, start, end)
        return block_window(state, rows, eligible, torch.ones(len(rows), dtype=torch.long, device=state.device),
                            start, end)

    def narrow(self, state: GenerationState, window: Window, logits: Tensor) -> Window:
        """Decide the block of every row at its block's first step; cut its window to that block."""
        p: AdaBlockProgress = state.progress
        rows = window.rows.cpu()
        deciding = p.length[rows] == 0
        if not bool(deciding.any()):
            return window
        if window.has(Candidates):
            raise DecodingError("adablock decides a block from its first step's logits over the look-ahead; a "
                                "candidate step (freedave) drafted there cannot be cut to the block: use another rule")
        c, (start, end, look) = self.config, self._bounds(state)
        cols, lw = torch.arange(window.start, window.end), window.window_logits(logits)  # [b, W, V]
        lw = lw.to(torch.promote_types(lw.dtype, torch.float32))
        top, token = lw.max(dim=-1)
        conf = (top - torch.logsumexp(lw, dim=-1)).exp().cpu()  # probability of the argmax token
        near = (cols >= start[rows, None]) & (cols < look[rows, None])
        delim = torch.isin(token.cpu(), torch.tensor(c.delimiter_ids)) & near
        best = torch.where(delim, conf, -1.0).argmax(dim=1)  # the first of the most confident delimiters
        least = float("inf") if c.delimiter_threshold is None else c.delimiter_threshold
        found = delim.any(dim=1) & (conf.gather(1, best[:, None])[:, 0] >= least)
        default = (c.gen_length - p.offset[rows]).clamp(max=c.block_length)
        length = torch.where(found, cols[best] - start[rows] + 1, default)
        p.length[rows[deciding]] = length[deciding]
        end = start + torch.where(p.length > 0, p.length, end - start)
        keep = (cols[None, :] < end[rows, None]).to(state.device)
        geometry = replace(window.geometry, block_end=end[rows])
        return replace(window, eligible=window.eligible & keep, geometry=geometry)

    def advance(self, state: GenerationState) -> None:
        p: AdaBlockProgress = state.progress
        if state.last_window is not None:
            stepped = state.last_window.rows.cpu()
            if bool((p.length[stepped] == 0).any()):
                raise DecodingError("adablock took a step without deciding its block: a loop must call "
                                    "iteration.narrow(state, window, logits) before select (Pipeline.step does)")
            p.step[stepped] += 1
        if self.config.early_stop:
            stop_at_eos(state)
        self._settle(state)
        if bool((over := p.active & (p.step > p.length)).any()):
            row = int(over.nonzero()[0, 0])
            raise DecodingError(f"block {int(p.block[row])} of row {row} still has masks after "
                                f"{int(p.step[row])} steps")
