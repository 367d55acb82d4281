"""``sched``: SchED, progress-aware early exit (arXiv 2512.02892).

Each step, the mean top-2 logit margin over the whole answer (the generation region, every position, committed
or not) is compared with a threshold ``tau(p)`` that falls with the progress ``p = t / T`` from ``tau_high``
(p = 0) to ``tau_low`` (p = 1) along a ``linear``, ``cosine`` or ``exponential`` (geometric) schedule. When
the margin reaches it, every pending position of the row takes its proposal and the row ends; otherwise the
base rule (``rule``) decides the step. See :mod:`dlm.decoding.early_exit` for why this is a decoding strategy.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from dlm.decoding.early_exit import BaseRuleConfig, EarlyExit


class SchEDConfig(BaseRuleConfig):
    tau_high: float = Field(7.5, ge=0.0, description="margin threshold at the start (progress 0)")
    tau_low: float = Field(2.5, ge=0.0, description="margin threshold at the end (progress 1)")
    schedule: Literal["linear", "cosine", "exponential"] = Field(
        "linear", description="how the threshold falls from tau_high to tau_low with the progress")

    @model_validator(mode="after")
    def _ordered(self) -> "SchEDConfig":
        if self.tau_low > self.tau_high:
            raise ValueError(f"tau_low ({self.tau_low}) must not exceed tau_high ({self.tau_high}): the threshold falls")
        if self.schedule == "exponential" and self.tau_low <= 0:
            raise ValueError("the exponential schedule needs tau_low > 0 (it interpolates geometrically)")
        return self


def sched_threshold(progress: Tensor, tau_high: float, tau_low: float, schedule: str) -> Tensor:
    """tau(p) for progress [b] (clamped to [0, 1]): linear, cosine or geometric from tau_high to tau_low."""
    p = progress.to(torch.float64).clamp(0.0, 1.0)
    if schedule == "linear":
        return tau_high + (tau_low - tau_high) * p
    if schedule == "cosine":
        return tau_low + (tau_high - tau_low) * (1.0 + torch.cos(math.pi * p)) / 2.0
    return tau_high * (tau_low / tau_high) ** p


class SchED(EarlyExit):
    Config = SchEDConfig

    def should_exit(self, margins: Tensor, progress: Tensor) -> Tensor:
        c = self.config
        return margins.mean(dim=1) >= sched_threshold(progress, c.tau_high, c.tau_low, c.schedule)
