"""``prophet``: Prophet's early answer commit (Li et al. 2025, "Diffusion Language Models Know the Answer
Before Decoding", arXiv 2508.19982; code pixeli99/Prophet, ``generate_earlyexit.py``).

Each step, the mean top-2 logit gap over ``window`` answer positions (from ``answer_start`` columns into the
generation region, clipped at its end, committed or not) is compared with one of three thresholds ``gaps``,
chosen by the progress ``p = t / T``: the first while ``p < 0.33``, the second while ``p < 0.67``, then the
third. When the gap reaches it, every pending position of the row takes its proposal and the row ends;
otherwise the base rule (``rule``) decides the step. See :mod:`dlm.decoding.early_exit`.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from dlm.decoding.early_exit import BaseRuleConfig, EarlyExit

PHASE_ENDS = (0.33, 0.67)  # progress at which Prophet moves to its second and third threshold


class ProphetConfig(BaseRuleConfig):
    gaps: tuple[float, float, float] = Field(
        (7.5, 5.0, 2.5), description="gap thresholds for the early, middle and late third of the progress")
    window: int = Field(5, ge=1, description="answer positions whose mean top-2 logit gap is tested")
    answer_start: int = Field(0, ge=0, description="first tested position, in columns from the generation start")


def prophet_threshold(progress: Tensor, gaps: tuple[float, float, float]) -> Tensor:
    """[b] float64: the phase's gap threshold for progress [b]."""
    p = progress.to(torch.float64)
    return torch.where(p < PHASE_ENDS[0], gaps[0], torch.where(p < PHASE_ENDS[1], gaps[1], gaps[2]))


class Prophet(EarlyExit):
    Config = ProphetConfig

    def should_exit(self, margins: Tensor, progress: Tensor) -> Tensor:
        lo = self.config.answer_start
        if lo >= margins.shape[1]:  # no answer position inside the generation region: nothing to test
            return torch.zeros(margins.shape[0], dtype=torch.bool, device=margins.device)
        gap = margins[:, lo : lo + self.config.window].mean(dim=1)
        return gap >= prophet_threshold(progress, self.config.gaps).to(gap.device)
