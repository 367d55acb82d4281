"""``d2f``: Discrete Diffusion Forcing's pipelined blocks, each row at its own pace (Wang et al., 2025, arXiv
2508.09192; ``_generate_block_single`` in ``D2F-eval/eval_llada.py``, zhijie-group/Discrete-Diffusion-Forcing@771f745).

On D2F's block-causal attention (the prompt one block, then blocks of the model's size: ``llada``'s ``d2f_block_size``)
a row's next block is added once the last one is ``block_add_threshold`` decoded (one per step); a block is
*complete* once its predecessor is ``decoded_token_threshold`` decoded (the first ones at once: the prompt counts as
decoded); a decoded block leaves the flight once every earlier block has (the reference then caches its K/V); after
an end token no block is added, and the row ends once its blocks in flight are decoded, the blocks never added
holding the end token. The strategy reads each block's span, steps and rule from the window's
:class:`~dlm.messages.BlocksInFlight` (``strict_threshold``). One forward per step over the blocks in flight (the
window; ``geometry.block``: the first, ``geometry.step``: steps since it became the first). Later blocks never
change earlier ones' logits, so the fixed canvas of ``gen_length`` MASKs is the reference's growing canvas and
``cache: block`` its exact K/V cache. The reference's end id is hard-coded, 126081 (LLaDA's ``<|endoftext|>``, not
``<|eot_id|>``): ``model.eos_token_ids: [126081]`` matches it. Defaults: its GSM8K run (``eval_llada.sh``).
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
    block_add_threshold: float = Field(0.7, ge=0.0, le=1.0, description="add a block once the last is this decoded")
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
        if capabilities.attention != "block_causal" or capabilities.blocks_from != "prompt":
            return (f"it needs D2F's block-causal attention (blocks from the prompt's end); the model's attention is "
                    f"{capabilities.attention}: load a D2F checkpoint with model.d2f_block_size (llada)")
        if self.config.gen_length % capabilities.block_size:
            return (f"gen_length {self.config.gen_length} is no multiple of the model's D2F block size "
                    f"{capabilities.block_size}")
        return None

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        if any(p.numel() == 0 for p in prompts):
            raise InputError("d2f needs a prompt in every row: the prompt is the first block of its attention")
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device, gen_start=gen_start)
        b, bs = state.batch_size, int(capabilities.block_size)
        n, z = self.config.gen_length // bs, lambda *s: torch.zeros(*s, dtype=torch.long)  # noqa: E731
        state.progress = D2FProgress(z(b), z(b), z(b, n).bool(), z(b, n), z(b), z(b).bool(), block_size=bs)
        self._settle(state, torch.ones(b, dtype=torch.bool))
        return state

    def _settle(self, state: GenerationState, stepped: Tensor) -> None:
        """Rows ``stepped`` ([B] host bool) took a step: move ``first`` past decoded blocks, add a block, update
        the completion rules, end rows with nothing in flight. One read of the device."""
        p: D2FProgress = state.progress
        b, bs, n = state.batch_size, p.block_size, p.complete.shape[1]
        gen, pending = state.canvas[:, state.gen_start :], state.pending()[:, state.gen_start :]
        is_end = torch.isin(gen, torch.tensor(state.eos_ids, device=state.device)) & ~pending
        host = torch.cat((pending.view(b, n, bs).sum(dim=2), is_end.any(dim=1)[:, None], state.done[:, None]), 1).cpu()
        masks, ended, stepped = host[:, :n], host[:, n].bool(), stepped & ~host[:, n + 1].bool()
        decoded = (bs - masks).double() / bs  # [B, N] decoded fraction of each block (as the reference's floats)
        idx = torch.arange(n)[None, :]
        first = torch.where((masks > 0) & (idx >= p.first[:, None]), idx, n).min(dim=1).values.minimum(p.added)
        moved = stepped & (first != p.first)
        p.since, p.first = torch.where(moved, 0, p.since), torch.where(moved, first, p.first)
        p.ended |= ended & stepped & self.config.early_stop
        last = decoded.gather(1, (p.added - 1).clamp(min=0)[:, None])[:, 0].where(p.added > 0, 1.0)
        add = stepped & ~p.ended & (p.added < n) & (last >= self.config.block_add_threshold)
        p.added += add.long()
        before = torch.cat((torch.ones(b, 1, dtype=torch.float64), decoded[:, :-1]), dim=1)  # predecessor's (prompt: 1)
        p.complete |= (before >= self.config.decoded_token_threshold) & (idx < p.added[:, None])
        over = stepped & (p.first >= p.added)  # nothing in flight: the row ends
        if bool(over.any()):  # the blocks never added (after an end token) hold the end token
            after = (torch.arange(n * bs)[None, :] >= p.added[:, None] * bs) & over[:, None]
            gen.masked_fill_(after.to(state.device), state.eos_ids[0])
            state.done |= over.to(state.device)

    def window(self, state: GenerationState) -> Window:
        p: D2FProgress = state.progress
        rows = (~state.done).cpu().nonzero()[:, 0]
        bs, g = p.block_size, state.gen_start
        lo, hi = g + p.first[rows] * bs, g + p.added[rows] * bs
        k = torch.arange(int((p.added[rows] - p.first[rows]).max()))[None, :]
        blocks = (p.first[rows, None] + k).clamp(max=p.complete.shape[1] - 1)  # [b, K]
        used = blocks < p.added[rows, None]
        starts = torch.where(used, g + blocks * bs, hi[:, None])
        flight = BlocksInFlight(starts, torch.where(used, starts + bs, hi[:, None]),
                                p.steps[rows[:, None], blocks] * used, p.complete[rows[:, None], blocks] & used)
        start, end, dev_rows = int(lo.min()), int(hi.max()), rows.to(state.device)
        cols = torch.arange(start, end)[None, :]  # the window: the union of the rows' blocks in flight
        eligible = state.masked()[dev_rows, start:end] & ((cols >= lo[:, None]) & (cols < hi[:, None])).to(state.device)
        return Window(dev_rows, start, end, eligible, torch.ones_like(dev_rows), state.mask_id,
                      Geometry(p.since[rows], p.first[rows], lo, hi), extensions=(flight,))

    def advance(self, state: GenerationState) -> None:
        p, stepped = state.progress, torch.zeros(state.batch_size, dtype=torch.bool)
        if state.last_window is not None:
            stepped[state.last_window.rows.cpu()] = True
            idx = torch.arange(p.complete.shape[1])[None, :]
            p.steps += ((idx >= p.first[:, None]) & (idx < p.added[:, None]) & stepped[:, None]).long()
            p.since += stepped.long()
        self._settle(state, stepped)
