"""``joint_threshold``: LLaDA2.1's joint threshold decoding, mask-to-token filling plus token-to-token editing.

LLaDA2.1 (arXiv 2602.08676, "Speeding Up Text Diffusion via Token Editing"; the ``generate`` of the released
``modeling_llada2_moe.py`` of LLaDA2.1, whose public copy is ``dllm/pipelines/llada21/models/modeling_llada21_moe.py``
in github.com/ZHZisZZ/dllm) decodes each block with two thresholds, from one forward per step:

- **M2T** (mask to token): the masked positions of the step's window whose proposal has confidence above
  ``threshold`` are committed, when there are at least ``num_to_transfer`` of them; otherwise the
  ``num_to_transfer`` most confident masked positions are (all of them if fewer are masked). With ``steps``, the
  count is instead step ``i``'s share of LLaDA2.0's even schedule of the block over ``steps`` (LLaDA2.0's
  ``generate``, arXiv 2512.15745: ``block // steps`` each, one more for the first ``block % steps`` steps).
- **T2T** (token to token): every placed, non-prompt token of the row's block whose proposal differs from it with
  confidence above ``editing_threshold`` is rewritten (a commit's :class:`~dlm.messages.Edits`). ``None`` turns
  editing off: that is LLaDA2.0's decoding.
- **Post steps and release.** A step that starts with no mask left in the block is a post step. The block is
  released (:class:`~dlm.messages.Edits` without ``hold``) after a step that started without masks and edited
  nothing, or after post step ``max_post_steps`` (the released loop stops before the forward of the next one, so
  no forward is wasted). Until then the strategy holds the block: the iteration keeps the row in it, and the row
  ends at an end token only once it is released. Without editing the block is released as soon as it is full.

Proposals are the argmax (Gumbel-max at ``temperature > 0``) with MASK never proposed; confidences are float64
softmax probabilities over the whole vocabulary, MASK included (:func:`~dlm.decoding.proposal.propose`). The
released code takes the argmax over the whole vocabulary (a MASK argmax would re-mask a placed token) and
float32 probabilities; docs/fidelity.md lists where that shows. SGLang's ``JointThreshold`` (sgl-project/sglang,
``python/sglang/srt/dllm/algorithm/joint_threshold.py``) states the same rule with ``num_to_transfer`` 1; where
the two differ is in docs/decoding-algorithms.md.

Needs an iteration manager that keeps held blocks (``edits``: ``blockwise``, ``block_diffusion``) and a cache that
recomputes edited columns (``edit_aware``: every built-in cache), declared in :mod:`dlm.compat`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import propose, top_k_select
from dlm.memory import RowMemory
from dlm.messages import Commit, Edits, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


class JointThresholdConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.95, ge=0.0, le=1.0, description="M2T: commit masked positions with confidence > this")
    editing_threshold: float | None = Field(
        0.9, ge=0.0, le=1.0,
        description="T2T: rewrite placed tokens whose proposal differs with confidence > this; null: no editing "
                    "(LLaDA2.0)")
    max_post_steps: int = Field(16, ge=0, description="steps of a block after its last mask is filled, at most")
    num_to_transfer: int = Field(1, ge=1, description="M2T: commit at least this many masked positions per step")
    steps: int | None = Field(
        None, gt=0, description="M2T count from LLaDA2.0's schedule: the block spread evenly over this many steps "
                                "(instead of num_to_transfer)")
    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")

    @model_validator(mode="after")
    def _one_count(self) -> "JointThresholdConfig":
        if self.steps is not None and self.num_to_transfer != 1:
            raise ValueError("give steps (LLaDA2.0's schedule) or num_to_transfer (LLaDA2.1's count), not both")
        return self


@dataclass
class JointMemory(RowMemory):
    """Per batch row: the block its count is of, and the post steps taken in it."""

    movable = True  # no column fields

    block: Tensor  # [B] long (host): block of the row's count (-1: none yet)
    post: Tensor  # [B] long: post steps taken in that block

    @staticmethod
    def fresh(batch: int, device: torch.device) -> "JointMemory":
        return JointMemory(block=torch.full((batch,), -1, dtype=torch.long),
                           post=torch.zeros(batch, dtype=torch.long, device=device))


def fill_count(window: Window, count: int, steps: int | None) -> Tensor:
    """[b] (host) masked positions each row's M2T rule commits at least: ``count``, or LLaDA2.0's schedule."""
    if steps is None:
        return torch.full((len(window.rows),), count, dtype=torch.long)
    length = window.block_end - window.block_start
    # at least one: the schedule asks for none only past its last step, when the block is already full
    return (length // steps + (window.step < length % steps).long()).clamp(min=1)


def fill_select(confidence: Tensor, eligible: Tensor, threshold: float, count: Tensor) -> Tensor:
    """LLaDA2's M2T rule, [b, W] bool: the eligible positions with confidence > ``threshold`` when there are at
    least ``count[r]`` of them, else the ``count[r]`` most confident eligible positions."""
    high = eligible & (confidence > threshold)
    enough = high.sum(dim=1) >= count
    return torch.where(enough[:, None], high, top_k_select(confidence, eligible, count))


class JointThreshold(DecodingStrategy):
    """LLaDA2.1's M2T + T2T decoding (see the module doc)."""

    Config = JointThresholdConfig
    joinable = True  # memory per row; every decision from the row's own block
    requires = {
        "edits": "it holds a block open for post steps and rewrites its placed tokens (token editing)",
        "edit_aware": "its edits rewrite placed tokens, whose cached K/V must then be recomputed",
    }

    def start(self, state: GenerationState) -> JointMemory:
        return JointMemory.fresh(state.batch_size, state.device)

    def prepare(self, state: GenerationState, window: Window) -> Window:
        """Widen the logits to every row's block: edits may fall anywhere in it."""
        if not len(window.rows):
            return window
        lo = min(int(window.block_start.min()), window.start)
        hi = max(int(window.block_end.max()), window.end)
        return window.widen(lo, hi) if (lo, hi) != (window.logits_start, window.logits_end) else window

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c, m = self.config, self.memory(state)
        rows, dev = window.rows, state.device
        lo, hi = window.logits_start, window.logits_end
        spans = (window.block_start - lo, window.block_end - lo) if c.temperature > 0 else None
        tokens, confidence = propose(logits, mask_id=window.mask_id, temperature=c.temperature, generator=generator,
                                     rows=rows, spans=spans)  # [b, S] each, over the logits span
        w0, w1 = window.start - lo, window.end - lo
        count = fill_count(window, c.num_to_transfer, c.steps).to(dev)
        select = fill_select(confidence[:, w0:w1], window.eligible, c.threshold, count)  # [b, W]
        if c.editing_threshold is None:
            return Commit(select, tokens[:, w0:w1])

        cols = torch.arange(lo, hi, device=dev)[None, :]
        first = torch.clamp(window.block_start, min=state.gen_start).to(dev)[:, None]
        own = (cols >= window.block_start.to(dev)[:, None]) & (cols < window.block_end.to(dev)[:, None])
        current = state.canvas[rows, lo:hi]
        masked = own & (current == window.mask_id)  # the row's block's masks at the step's start
        editable = own & (cols >= first) & ~masked  # placed tokens of the block, outside the prompt
        edit = editable & (confidence > c.editing_threshold) & (tokens != current)

        new_block = (m.block[rows.cpu()] != window.block).to(dev)
        m.block[rows.cpu()] = window.block
        had_masks = masked.any(dim=1)
        post = torch.where(new_block, 0, m.post[rows]) + (~had_masks).long()  # post steps so far, this one included
        m.post[rows] = post
        filled = torch.zeros_like(masked)
        filled[:, w0:w1] = select
        full = ~(masked & ~filled).any(dim=1)  # no mask left after this step
        release = (~had_masks & ~edit.any(dim=1)) | (full & (post + 1 > c.max_post_steps))
        return Commit(select, tokens[:, w0:w1], Edits(edit, tokens, hold=~release))
