"""``hierarchical``: dInfer's hierarchical decoding (inclusionAI, 2025, "dInfer: An Efficient Inference Framework
for Diffusion Language Models", arXiv 2510.08666; github.com/inclusionAI/dInfer, ``HierarchyDecoder``).

Each row's eligible positions are cut into maximal contiguous runs. A step commits every position that
reaches its run's maximum confidence when that confidence is above ``low_threshold``, every position whose
confidence is above ``threshold``, and always the row's most confident position. Spreading the commits
over separate runs keeps tokens decided together far apart, so less dependent. Comparisons are strict, as
in dInfer; the confidence is the softmax probability of the proposed token in the logits' dtype. Works on
batches of any size (dInfer's accepts batch 1 only). A window's :class:`~dlm.messages.ThresholdFloor` raises
``threshold`` for the step, as dInfer's ``iter_threshold`` does.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.proposal import draw_spans, propose, step_threshold
from dlm.messages import Commit, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


def run_ids(eligible: Tensor) -> Tensor:
    """[b, W] long: index of the maximal run of eligible positions each position belongs to (0 elsewhere)."""
    before = torch.nn.functional.pad(eligible[:, :-1], (1, 0), value=False)
    starts = eligible & ~before
    return torch.where(eligible, starts.long().cumsum(dim=1) - 1, 0)


def hierarchical_select(confidence: Tensor, eligible: Tensor, low: float, high: float | Tensor) -> Tensor:
    """[b, W] bool: run maxima above ``low``, positions above ``high`` (a float, or per row [b, 1]), and each row's
    most confident one."""
    floor = torch.finfo(confidence.dtype).min
    conf = confidence.masked_fill(~eligible, floor)
    seg = run_ids(eligible)
    run_max = torch.full_like(conf, floor).scatter_reduce(1, seg, conf, reduce="amax", include_self=True)
    select = (conf == run_max.gather(1, seg)) & (conf > low)
    select |= conf > high
    best = conf.argmax(dim=1)
    select[torch.arange(len(best), device=best.device), best] = True
    return select & eligible


class HierarchicalConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.9, ge=0.0, description="commit every position with confidence > threshold")
    low_threshold: float = Field(0.4, ge=0.0, description="commit each run's most confident position above this")
    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature; 0 = greedy")


class Hierarchical(DecodingStrategy):
    Config = HierarchicalConfig
    joinable = True
    provides = frozenset({"threshold_floor"})

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        c = self.config
        tokens, _ = propose(logits, mask_id=window.mask_id, temperature=c.temperature, generator=generator,
                            rows=window.rows, spans=draw_spans(window, c.temperature))
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None])[..., 0]  # [b, W], logits' dtype
        high = step_threshold(window, c.threshold, logits.device)
        if isinstance(high, Tensor):  # compared in the confidence's dtype, as the float threshold is
            high = high.to(logp.dtype)
        select = hierarchical_select(logp.exp(), window.eligible, c.low_threshold, high)
        return Commit(select, tokens)
