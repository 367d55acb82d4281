"""``strict_threshold``: Fast-dLLM v2's parallel decoding rule (Wu et al., 2025, arXiv 2509.26328), which is
also SDAR's ``low_confidence_dynamic`` remasking (Cheng et al., 2025, arXiv 2510.06303; ``generate.py``).

Commit every eligible position whose drawn token has probability strictly greater than τ, plus each row's
most confident eligible position (so every step commits at least one token). Tokens and probabilities
follow v2's ``sample_with_top_p`` and SDAR's ``sample_with_temperature_topk_topp``: at temperature 0 the
argmax of ``softmax(logits)``; otherwise the temperature-scaled distribution, top-k then top-p filtered, the
confidence being the drawn token's probability under it (see :mod:`dlm.decoding.sampling`). τ = 1 (the
reference ``generate`` default) commits one token per step; the paper's evaluation uses 0.9.

**Blocks in flight** (a window's :class:`~dlm.messages.BlocksInFlight`: D2F, arXiv 2508.09192, ``eval_llada.py``'s
``_generate_block_single`` in zhijie-group/Discrete-Diffusion-Forcing@771f745): every eligible position of any block
in flight with probability ``> τ``, plus the most confident eligible position of each *complete* block; an
incomplete block commits only what passes τ (possibly nothing). The floor is one per complete block
(``at_least: one``).

``at_least: quota`` is SDAR's floor: when fewer than the window's quota (the iteration's schedule, SDAR's
``num_transfer_tokens[step]``) pass τ, the quota's most confident positions are committed instead, i.e. the
``max(quota, #(p > τ))`` most confident. With one token per step (SDAR's published ``denoising_steps`` =
block length) the two floors are the same rule. With τ = 1 nothing passes and the rule is the top-quota
selection, SDAR's ``low_confidence_static`` with SDAR's confidences (at temperature 0 it equals
``low_confidence``; SDAR's evaluation configs likewise run threshold 1.0 as "static").
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import draw_spans, threshold_select, top_k_select
from dlm.decoding.sampling import draw, filtered_probs
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.messages import BlocksInFlight, Commit, Window


class StrictThresholdConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.9, ge=0.0, le=1.0, description="commit positions with confidence > threshold")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature; 0 = greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus filter when sampling (v2 uses 0.95)")
    top_k: int | None = Field(None, gt=0, description="top-k filter when sampling, applied before top_p (SDAR's)")
    at_least: Literal["one", "quota"] = Field(
        "one", description="floor of each step's commits: the most confident position (v2), or the window's "
                           "quota of them (SDAR's low_confidence_dynamic)"
    )


def quota_floor_select(confidence: Tensor, eligible: Tensor, tau: float, quota: Tensor) -> Tensor:
    """[b, W] bool: SDAR's dynamic rule, every eligible position with confidence ``> tau`` or, when fewer than
    ``quota[r]`` (at least 1) pass, the ``quota[r]`` most confident: the union of the two sets, which is one or
    the other. (Not ``threshold_select``'s forced argmax plus the top-k: among tied maxima the two can pick
    different positions, committing one too many.)"""
    above = eligible & (confidence > tau)
    return above | top_k_select(confidence, eligible, quota.clamp(min=1))


def in_flight_select(confidence: Tensor, window: Window, blocks: BlocksInFlight, tau: float) -> Tensor:
    """[b, W] bool: D2F's rule over the blocks in flight (see the module doc); ties go to the first maximum."""
    dev = confidence.device
    select = window.eligible & (confidence > tau)
    cols = torch.arange(window.start, window.end, device=dev)[None, :]
    for k in range(blocks.start.shape[1]):
        lo, hi, full = (t[:, k, None].to(dev) for t in (blocks.start, blocks.end, blocks.complete))
        select |= threshold_select(confidence, window.eligible & (cols >= lo) & (cols < hi) & full, tau, strict=True)
    return select


class StrictThreshold(DecodingStrategy):
    Config = StrictThresholdConfig
    joinable = True
    provides = frozenset({"blocks_in_flight"})

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        sampling = c.temperature > 0  # v2 and SDAR filter only the distribution they sample from
        probs = filtered_probs(logits, temperature=c.temperature, top_p=c.top_p if sampling else None,
                               top_k=c.top_k if sampling else None, top_k_first=True)
        tokens, confidence = draw(
            probs, mask_id=window.mask_id, temperature=c.temperature, generator=generator, rows=window.rows,
            spans=draw_spans(window, c.temperature),
        )
        blocks = window.get(BlocksInFlight)
        if blocks is not None:
            if c.at_least != "one":
                raise ValueError("a window of blocks in flight (iteration d2f) floors each complete block at one "
                                 "position: set decoding.at_least to one")
            return Commit(in_flight_select(confidence, window, blocks, c.threshold), tokens)
        if c.at_least == "quota":
            return Commit(quota_floor_select(confidence, window.eligible, c.threshold, window.quota), tokens)
        return Commit(threshold_select(confidence, window.eligible, c.threshold, strict=True), tokens)
