"""``block_diffusion``: block-diffusion decoding of block-causal models: Fast-dLLM v2's (Wu et al., 2025,
arXiv 2509.26328, §3; the ``generate`` of the released modeling code) and SDAR's (Cheng et al., 2025, arXiv
2510.06303; ``block_diffusion_generate`` in JetAstra/SDAR's ``generate.py``).

Blocks are counted in each row's own positions: block ``j`` of a row is positions ``[j·bs, (j+1)·bs)``
(``bs`` = the model's attention block size, v2's ``bd_size`` or SDAR's ``block_size``: attention blocks and
decoding blocks coincide). For a row with prompt length ``P``, block 0 is the block holding position ``P``
(the first generated token), so it may start with the prompt's tail. Per block, left to right:

1. **AR token** (shifted models): when the block's first position is still masked, a step makes only that
   position eligible. Its logit is the output of the previous block's last position, so this step's
   forward is the previous block's "commit" forward (with ``cache: block`` it writes the completed block's
   K/V). For block 0 with ``P % bs == 0`` it is the prompt prefill; for block 0 with ``P % bs != 0`` the
   first position is a prompt token and there is no AR step.
2. **Sub-blocks** of ``sub_block_size`` (default 8, or the whole block when it is shorter) positions, left
   to right: each step makes the masked positions of the first sub-block that still has masks eligible; the
   reference commits those with confidence ``> τ`` (strict) plus the most confident (``strict_threshold``
   decoding). SDAR has no sub-blocks (``sub_block_size`` = the block size, the default for its blocks of 4).
   **Quota** (for top-k rules): one per step, or, with ``steps`` (SDAR's ``denoising_steps``), SDAR's
   schedule of the *block size* over the steps (``get_num_transfer_tokens(block_length, steps)``:
   ``bs // steps`` per step, one more in the first ``bs % steps``), whatever the masks of the block; a
   block whose masks are fewer (the first block, which starts with the prompt's tail, or the canvas' last)
   simply completes sooner. Unshifted models only (SDAR); there is no AR step to count.
3. **Early stop** (on by default): a row ends once it committed an end token (the model's ``eos_ids``,
   ``<|im_end|>`` for Fast-dLLM v2) with no mask before it; the rest of its region is filled with EOS.
4. **Held blocks** (token editing, :class:`~dlm.messages.Edits`): a row whose block an editing strategy holds open
   (``state.held``) stays in it for more steps even when nothing in it is masked; its window is then its block,
   with nothing eligible, and it ends at an end token only once the block is released.

Each row moves through its blocks at its own pace: its block index and step are its own (per-row
progress), and a row that completes its block moves on at once, without waiting for the others. One step's
window is the union of the rows' eligible columns; each row's place travels in the window's per-row
geometry (its block's canvas columns, its step in the block) and its current sub-block as the window's
:class:`~dlm.messages.SubBlocks`. A row computes exactly what it computes alone, since its logits depend
only on its own canvas (the attention mask is per row) and the steps it takes part in depend only on its
own progress; so rows may also join a running generation at any step.

SDAR (``logit_shift = 0``) has no AR step: its blocks are denoised from their first masked position, and
what the reference does with a separate forward when a block is full (store its K/V, ``store_kv=True``) and
once for the prompt's whole blocks (prefill), the ``block`` cache does inside the next block's first
forward (block-causal attention makes the two identical). Its NFE is therefore the reference's minus one
forward per completed block and minus the prefill. SDAR's reference rounds the canvas up to whole blocks
(``ceil((P + gen_length) / bs) · bs``); here exactly ``gen_length`` tokens are generated; they agree when
``P + gen_length`` is a multiple of ``bs``. The reference ends at a stop token only after completing that
token's block (the rest of the block keeps its decoded tokens); here the row ends as soon as the stop token
has no mask before it and the rest is filled with the end token (the tokens up to the stop token are the
same: a block's earlier positions are all committed by then). docs/fidelity.md lists the cases.

Differences from Fast-dLLM v2's reference, on purpose:

- ``gen_length`` tokens are generated for every prompt, the last block being cut at the canvas end (the
  reference always denoises ``max_new_tokens // bs`` whole blocks, so its output length depends on
  ``P % bs``, and it runs one more commit forward after the last block for an AR token it then returns).
  When ``P + gen_length`` is a multiple of ``bs`` the blocks are the reference's.
- A prompt whose length is an exact multiple of ``bs`` is prefilled and gets an AR token like any other
  multiple. The reference prefills only when ``P > bs``, so with ``P == bs`` it never shows the prompt to
  the model (every forward runs on the new block of masks alone).
- The AR token goes through the decoding strategy (greedy at temperature 0, as the reference's argmax).
- Prefill and the first block's forward are one forward: block-causal attention makes that identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from dlm.errors import DecodingError
from dlm.iteration.base import SettlingManager, left_padded_canvas, stop_at_eos
from dlm.memory import RowMemory, derived_field, shared_field
from dlm.messages import Geometry, ModelCapabilities, SubBlocks, Window
from dlm.state import GenerationState

DEFAULT_SUB_BLOCK = 8  # Fast-dLLM v2's sub-block size


def block_schedule(block_size: int, steps: int, step: Tensor) -> Tensor:
    """SDAR's quota of each step index in ``step`` ([b] long): ``block_size`` spread over ``steps`` steps,
    ``block_size // steps`` each and one more in the first ``block_size % steps`` (``get_num_transfer_tokens``);
    at least 1, also past the last step (a strategy never told to commit nothing)."""
    quota = block_size // steps + (step < block_size % steps).long()
    return torch.where(step < steps, quota, 1).clamp(min=1)


@dataclass
class DiffusionProgress(RowMemory):
    """Per-row progress of ``block_diffusion``, kept in ``state.progress``."""

    block: Tensor  # [B] long (host): each row's block index, counted from its first generated position's block
    step: Tensor  # [B] long (host): each row's step inside its block
    block_size: int = shared_field()  # decoding block size (the model's attention block size)
    ar: bool = shared_field()  # shifted logits: each block starts with an AR step for its first position
    active: Tensor | None = derived_field(default=None)  # [B] bool (host): rows with work, found by the last advance
    active_cancels: int = derived_field(default=-1)  # state.cancels when ``active`` was found
    held: Tensor | None = derived_field(default=None)  # [B] bool (host): rows an editing strategy held, at that advance

    @staticmethod
    def fresh(batch: int, *, block_size: int, ar: bool) -> "DiffusionProgress":
        zeros = lambda: torch.zeros(batch, dtype=torch.long)  # noqa: E731
        return DiffusionProgress(block=zeros(), step=zeros(), block_size=block_size, ar=ar)


class BlockDiffusionConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gen_length: int = Field(128, gt=0, description="tokens to generate per prompt")
    block_length: int | None = Field(None, gt=0, description="decoding block size; default: the model's block size")
    sub_block_size: int | None = Field(
        None, gt=0, description="positions denoised together inside a block; default 8, or the whole block if shorter"
    )
    steps: int | None = Field(
        None, gt=0, description="denoising steps per block (SDAR's denoising_steps): the top-k quota schedule of the "
                                "block size; default: one token per step (unshifted models only)"
    )
    early_stop: bool = Field(True, description="end a row once it committed an end token with no mask before it")

    @model_validator(mode="after")
    def _divides(self) -> "BlockDiffusionConfig":
        if self.block_length is not None and self.block_length % self.sub_size(self.block_length):
            raise ValueError(
                f"sub_block_size ({self.sub_block_size}) must divide block_length ({self.block_length})"
            )
        return self

    def sub_size(self, block_size: int) -> int:
        """The sub-block size for blocks of ``block_size``: as set, else 8 (Fast-dLLM v2's), or the whole block."""
        return self.sub_block_size or min(DEFAULT_SUB_BLOCK, block_size)


class BlockDiffusion(SettlingManager):
    """Block diffusion (Fast-dLLM v2's, SDAR's), each row at its own block and step (see the module doc)."""

    Config = BlockDiffusionConfig
    joinable = True
    provides = frozenset({"edits"})  # a held block keeps its row (see the module doc)

    def check(self, capabilities: ModelCapabilities) -> str | None:
        if capabilities.blocks_from != "start":
            return ("its blocks are counted from each row's position 0, the model's attention blocks from the prompt's "
                    "end (D2F's mask): use iteration d2f")
        bs = self.config.block_length or capabilities.block_size
        if bs is None:
            return "it needs a block size: set iteration.block_length (the model declares no attention blocks)"
        if capabilities.block_size is not None and bs != capabilities.block_size:
            return (
                f"iteration.block_length {bs} differs from the model's attention block size "
                f"{capabilities.block_size}; leave it unset to use the model's"
            )
        if bs % self.config.sub_size(bs):
            return f"sub_block_size ({self.config.sub_size(bs)}) must divide the block size ({bs})"
        if self.config.steps is not None and capabilities.logit_shift != 0:
            return ("iteration.steps (SDAR's per-block schedule) is for models with unshifted logits; this model's "
                    "blocks start with an AR step (leave steps unset: one token per step)")
        return None

    def start(self, prompts: list[Tensor], capabilities: ModelCapabilities, device: torch.device, *,
              gen_start: int | None = None) -> GenerationState:
        state = left_padded_canvas(prompts, self.config.gen_length, capabilities, device, gen_start=gen_start)
        bs = int(self.config.block_length or capabilities.block_size)
        state.progress = DiffusionProgress.fresh(state.batch_size, block_size=bs, ar=capabilities.logit_shift == 1)
        self._settle(state)
        return state

    def _positions(self, state: GenerationState) -> Tensor:
        cols = torch.arange(state.length, device=state.device)
        return cols[None, :] - state.pad[:, None]  # [B, L]; negative on padding

    def _block_starts(self, state: GenerationState) -> Tensor:
        """[B] position of each row's current block start (on the canvas' device)."""
        p: DiffusionProgress = state.progress
        return (state.prompt_lengths // p.block_size + p.block.to(state.device)) * p.block_size

    def _sub_blocks(self, state: GenerationState) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """[B, L] bool eligible positions, [B] canvas column of each row's block start, and [B] canvas columns
        of each row's current sub-block (all on the canvas' device)."""
        p: DiffusionProgress = state.progress
        pos = self._positions(state)
        first = self._block_starts(state)[:, None]
        in_block = (pos >= first) & (pos < first + p.block_size)
        masked = state.masked()
        live = ~state.done[:, None]
        at_first = masked & (pos == first)
        masked_block = masked & in_block
        ar = at_first.any(dim=1, keepdim=True) if p.ar else torch.zeros_like(live)
        sbs = self.config.sub_size(p.block_size)
        sub = torch.div(pos - first, sbs, rounding_mode="floor")
        current = sub.masked_fill(~masked_block, torch.iinfo(torch.long).max).min(dim=1, keepdim=True).values
        denoise = masked_block & (sub == current)
        eligible = torch.where(ar, at_first, denoise) & live
        block_col = first[:, 0] + state.pad  # [B] canvas column of each row's block start
        sub_start = block_col + current[:, 0].clamp(max=p.block_size // sbs) * sbs
        sub_end = torch.minimum(sub_start + sbs, block_col + p.block_size).clamp(max=state.length)
        return eligible, block_col, sub_start, sub_end

    def eligible(self, state: GenerationState) -> Tensor:
        """[B, L] bool: what each live row may commit in the next step."""
        return self._sub_blocks(state)[0]

    def _settle(self, state: GenerationState) -> None:
        """Mark complete rows done; move each live row with nothing left in its block to its next block (each
        row on its own); find the active rows."""
        p: DiffusionProgress = state.progress
        held = state.held if state.held is not None else torch.zeros_like(state.done)
        state.done |= ~state.masked()[:, state.gen_start :].any(dim=1) & ~held
        while True:
            work, live, p.held = torch.stack((self.eligible(state).any(dim=1), ~state.done, held)).cpu()  # one read
            work |= p.held
            complete = live & ~work
            if not bool(complete.any()):
                break
            p.block[complete] += 1
            p.step[complete] = 0
            if bool((p.block > state.gen_length // p.block_size + 1).any()):
                raise DecodingError("block_diffusion ran past the last block with masks left")
        p.active, p.active_cancels = live & work, state.cancels

    def window(self, state: GenerationState) -> Window:
        p: DiffusionProgress = state.progress
        rows = self._active(state).nonzero()[:, 0]  # host
        dev_rows = rows.to(state.device)
        elig, block_col, sub_start, sub_end = self._sub_blocks(state)
        elig = elig[dev_rows]
        span = elig
        if state.held is not None:  # a held row's window is its whole block (its strategy revises placed tokens)
            pos = self._positions(state)
            first = self._block_starts(state)[:, None]
            block = (pos >= first) & (pos < first + p.block_size) & state.held[:, None]
            span = elig | block[dev_rows]
        cols = span.any(dim=0).nonzero()[:, 0]
        start, end = int(cols[0]), int(cols[-1]) + 1
        block_start = block_col[dev_rows]
        block_end = torch.clamp(block_start + p.block_size, max=state.length)
        # host copies of the per-row geometry and sub-blocks, in one read of the device
        host = torch.stack((block_start, block_end, sub_start[dev_rows], sub_end[dev_rows])).cpu()
        geometry = Geometry(step=p.step[rows], block=p.block[rows], block_start=host[0], block_end=host[1])
        return Window(
            rows=dev_rows,
            start=start,
            end=end,
            eligible=elig[:, start:end],
            quota=self._quota(p, rows).to(state.device),
            mask_id=state.mask_id,
            geometry=geometry,
            extensions=(SubBlocks(host[2], host[3]),),
        )

    def _quota(self, p: DiffusionProgress, rows: Tensor) -> Tensor:
        """[b] host long: each row's quota at its step (one per step without ``steps``)."""
        if self.config.steps is None:
            return torch.ones(len(rows), dtype=torch.long)
        return block_schedule(p.block_size, self.config.steps, p.step[rows])

    def advance(self, state: GenerationState) -> None:
        p: DiffusionProgress = state.progress
        rows = state.last_window.rows.cpu() if state.last_window is not None else None
        if rows is not None:
            p.step[rows] += 1
        if self.config.early_stop:
            stop_at_eos(state)
        self._settle(state)
        if rows is not None:  # rows still in their block (a held block is bounded by the strategy holding it)
            over = rows[(p.step[rows] > p.block_size + 1) & p.active[rows] & ~p.held[rows]]
            if len(over):
                row = int(over[0])
                raise DecodingError(f"block {int(p.block[row])} of row {row} still has masks after "
                                    f"{int(p.step[row])} steps")
