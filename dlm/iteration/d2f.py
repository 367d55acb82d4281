"""``d2f``: Discrete Diffusion Forcing's pipelined blocks (Wang et al., 2025, arXiv 2508.09192; the generator
``_generate_block_single`` of ``D2F-eval/eval_llada.py`` in github:zhijie-group/Discrete-Diffusion-Forcing@771f745).

For a model with D2F's block-causal attention (the prompt one block, then blocks of ``block_size`` from its end:
``llada`` with ``d2f_block_size``), several blocks of a row are decoded at once, each row at its own pace:

- the next block joins a row's blocks in flight when the decoded fraction of its last added block reaches
  ``block_add_threshold`` (one block per step at most; the first at once, the prompt counting as decoded);
- a block becomes *complete* when its predecessor's decoded fraction reaches ``decoded_token_threshold`` (the
  first block at once); the strategy reads each block's span, steps and state from the window's
  :class:`~dlm.messages.BlocksInFlight` (``strict_threshold``: what passes τ in every block, and at least the
  most confident position of each complete block);
- a decoded block leaves the flight only once every block before it has (the reference then caches its K/V);
- once a row committed an end token no block is added; the row ends when its blocks in flight are decoded, and
  the blocks never added are filled with the end token (the reference's canvas simply stops there).

Each step is one forward over the blocks in flight (the window spans them; ``geometry.block`` is the first,
``geometry.step`` the steps since it became the first). Attention being block-causal, later blocks never change
an earlier block's logits, so the fixed canvas of ``gen_length`` MASKs gives the logits of the reference's growing
canvas, and ``cache: block`` (exact for block-causal attention) its K/V cache. The reference stops at its
hard-coded id 126081 (LLaDA's ``<|endoftext|>``, not ``<|eot_id|>``); here any of the model's end ids ends a row
(``model.eos_token_ids: [126081]`` reproduces it). Defaults: its GSM8K evaluation (``eval_llada.sh``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.errors import InputError
from dlm.iteration.base import IterationManager, left_padded_canvas
from dlm.memory import RowMemory, shared_field
from dlm.messages import BlocksInFlight, Geometry, ModelCapabilities, Window
from dlm.state import GenerationState


class D2FConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(512, gt=0, description="tokens to generate per prompt (max_new_tokens)")
    block_size: int | None = Field(None, gt=0, description="tokens per block; default: the model's D2F block size")
    block_add_threshold: float = Field(0.7, ge=0.0, le=1.0, description="add the next block once the last added "
                                                                         "one is this fraction decoded")
    decoded_token_threshold: float = Field(0.95, ge=0.0, le=1.0, description="a block is complete once its "
                                                                             "predecessor is this fraction decoded")
    early_stop: bool = Field(True, description="add no block after an end token; end the row once its blocks are done")


@dataclass
class D2FProgress(RowMemory):
    """Per-row progress (host tensors), kept in ``state.progress``; blocks counted from ``gen_start``."""

    movable = True  # no column fields
    first: Tensor  # [B] long: the first block in flight (every block before it is decoded)
    added: Tensor  # [B] long: blocks added so far; in flight: [first, added)
    complete: Tensor  # [B, N] bool: the block's commit rule (sticky)
    steps: Tensor  # [B, N] long: steps each block has been in flight
    since: Tensor  # [B] long: steps since ``first`` last moved (geometry.step)
    ended: Tensor  # [B] bool: an end token was committed (no block is added any more)
    block_size: int = shared_field(default=0)


class D2F(IterationManager):
    """D2F's blocks in flight, each row on its own (see the module doc)."""

    Config = D2FConfig
    joinable = True
    requires = {"blocks_in_flight": "each block in flight has its own commit rule (complete or not): the strategy "
                                    "must read the window's BlocksInFlight, e.g. decoding strict_threshold"}

    def check(self, capabilities: ModelCapabilities) -> str | None:
        bs = self.config.block_size or capabilities.block_size
        if capabilities.attention != "block_causal" or capabilities.blocks_from != "prompt":
            return (f"it needs D2F's block-causal attention (blocks from the prompt's end); the model's attention is "
                    f"{capabilities.attention}: load a D2F checkpoint with model.d2f_block_size (llada)")
        if bs != capabilities.block_size:
            return f"iteration.block_size {bs} differs from the model's D2F block size {capabilities.block_size}"
        if self.config.gen_length % bs:
            return f"block size {bs} must divide gen_length {self.config.gen_length}"
        return None

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        if any(p.numel() == 0 for p in prompts):
            raise InputError("d2f needs a prompt in every row: the prompt is the first block of its attention")
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device, gen_start=gen_start)
        b, bs = state.batch_size, int(self.config.block_size or capabilities.block_size)
        n, zeros = self.config.gen_length // bs, lambda *s: torch.zeros(*s, dtype=torch.long)  # noqa: E731
        state.progress = D2FProgress(zeros(b), zeros(b), zeros(b, n).bool(), zeros(b, n), zeros(b), zeros(b).bool(),
                                     block_size=bs)
        self._settle(state, torch.ones(b, dtype=torch.bool))
        return state

    def _settle(self, state: GenerationState, stepped: Tensor) -> None:
        """Rows ``stepped`` ([B] host bool) took a step: move ``first`` past decoded blocks, add a block, update
        the completion rules, end rows with nothing in flight. One read of the device."""
        p: D2FProgress = state.progress
        b, bs, n = state.batch_size, p.block_size, p.complete.shape[1]
        gen, pending = state.canvas[:, state.gen_start :], state.pending()[:, state.gen_start :]
        is_end = torch.isin(gen, torch.tensor(state.eos_ids, device=state.device)) & ~pending
        masks, ended = pending.view(b, n, bs).sum(dim=2).cpu(), is_end.any(dim=1).cpu()
        decoded = (bs - masks).double() / bs  # [B, N] decoded fraction of each block (as the reference's floats)
        idx = torch.arange(n)[None, :]
        first = torch.where((masks > 0) & (idx >= p.first[:, None]), idx, n).min(dim=1).values.minimum(p.added)
        moved = stepped & (first != p.first)
        p.since, p.first = torch.where(moved, 0, p.since), torch.where(moved, first, p.first)
        if self.config.early_stop:
            p.ended |= ended & stepped
        last = decoded.gather(1, (p.added - 1).clamp(min=0)[:, None])[:, 0].where(p.added > 0, 1.0)
        add = stepped & ~p.ended & (p.added < n) & (last >= self.config.block_add_threshold)
        p.added += add.long()
        before = torch.cat((torch.ones(b, 1, dtype=torch.float64), decoded[:, :-1]), dim=1)  # the predecessor's fraction (prompt: 1)
        p.complete |= (before >= self.config.decoded_token_threshold) & (idx < p.added[:, None])
        over = stepped & (p.first >= p.added) & ~state.done.cpu()  # nothing in flight: the row ends
        if bool(over.any()):
            rows = over.nonzero()[:, 0]
            for r in rows.tolist():  # the blocks never added (after an end token) hold the end token
                state.canvas[r, state.gen_start + int(p.added[r]) * bs :] = state.eos_ids[0]
            state.done[rows.to(state.device)] = True

    def window(self, state: GenerationState) -> Window:
        p: D2FProgress = state.progress
        rows = (~state.done).cpu().nonzero()[:, 0]
        bs, g = p.block_size, state.gen_start
        lo, hi = g + p.first[rows] * bs, g + p.added[rows] * bs
        k = int((p.added[rows] - p.first[rows]).max())
        blocks = (p.first[rows, None] + torch.arange(k)[None, :]).clamp(max=p.complete.shape[1] - 1)  # [b, K]
        used = blocks < p.added[rows, None]
        starts = torch.where(used, g + blocks * bs, hi[:, None])
        flight = BlocksInFlight(start=starts, end=torch.where(used, starts + bs, hi[:, None]),
                                step=p.steps[rows[:, None], blocks] * used, complete=p.complete[rows[:, None], blocks] & used)
        start, end = int(lo.min()), int(hi.max())
        cols = torch.arange(start, end, device=state.device)[None, :]
        dev_rows = rows.to(state.device)
        eligible = state.masked()[dev_rows, start:end] & (cols >= lo.to(state.device)[:, None]) & (
            cols < hi.to(state.device)[:, None])
        geometry = Geometry(step=p.since[rows].clone(), block=p.first[rows].clone(), block_start=lo, block_end=hi)
        return Window(rows=dev_rows, start=start, end=end, eligible=eligible, quota=torch.ones_like(dev_rows),
                      mask_id=state.mask_id, geometry=geometry, extensions=(flight,))

    def advance(self, state: GenerationState) -> None:
        p: D2FProgress = state.progress
        stepped = torch.zeros(state.batch_size, dtype=torch.bool)
        if state.last_window is not None:
            stepped[state.last_window.rows.cpu()] = True
            idx = torch.arange(p.complete.shape[1])[None, :]
            p.steps += ((idx >= p.first[:, None]) & (idx < p.added[:, None]) & stepped[:, None]).long()
            p.since += stepped.long()
        self._settle(state, stepped & ~state.done.cpu())
