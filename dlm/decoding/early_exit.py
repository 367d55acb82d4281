"""Early exit as a decoding strategy: a base rule decides each step, an exit test may finish the row at once.

SchED (``sched``) and Prophet (``prophet``) both decode with an ordinary rule and, after every forward, look
at the top-2 logit margin over (part of) the answer: once it is large enough for the progress made so far,
every position still pending takes its proposal and the row ends. They are decoding strategies, not
iteration managers or caches, because only a strategy sees the logits and may finish a row: ``prepare``
widens the window's logits span to the whole generation region (:meth:`~dlm.messages.Window.widen`), and
the :class:`~dlm.messages.Commit` carries a :class:`~dlm.messages.Finish` extension (the rows and their fill
tokens). Any iteration manager and any cache then compose with them (``prefix``/``dual`` compute the wider
span as a peek that leaves their K/V untouched).

Progress is ``t / T``: ``t`` counts the row's forwards, this one included (its NFE so far + 1), ``T`` is the
schedule's step budget (:attr:`~dlm.messages.Window.total_steps`, the ``steps`` of ``blockwise`` and
Dream's managers). Managers without a step budget (``block_diffusion``) give the decoded fraction of the
generation region instead. Both are per row (a row that joined a running generation counts its own forwards);
``prepare`` attaches them to the window (:class:`ExitProgress`), and the strategies keep no run memory.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dlm.decoding.base import DecodingStrategy
from dlm.decoding.low_confidence import LowConfidence, LowConfidenceConfig
from dlm.decoding.proposal import propose
from dlm.decoding.threshold import Threshold, ThresholdConfig
from dlm.errors import DecodingError
from dlm.messages import Commit, Finish, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


class BaseRuleConfig(BaseModel):
    """The rule that decides every step the exit does not end: LLaDA's top-k or Fast-dLLM's threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: Literal["low_confidence", "threshold"] = Field(
        "low_confidence", description="base rule: low_confidence (the schedule's top-k) or threshold (conf >= threshold)")
    threshold: float = Field(0.9, ge=0.0, le=1.0, description="the threshold rule's tau (rule: threshold only)")
    temperature: float = Field(0.0, ge=0.0, description="Gumbel-max sampling temperature of the base rule; 0 = greedy")


def base_rule(config: BaseRuleConfig) -> DecodingStrategy:
    """The built-in strategy a config's ``rule`` names, with its parameters."""
    if config.rule == "threshold":
        return Threshold(ThresholdConfig(threshold=config.threshold, temperature=config.temperature))
    return LowConfidence(LowConfidenceConfig(temperature=config.temperature))


def top2_margin(logits: Tensor) -> Tensor:
    """[..., S] float64: top-1 minus top-2 logit at each position (raw logits, the whole vocabulary)."""
    top = logits.to(torch.float64).topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


@dataclass(frozen=True)
class ExitProgress:
    """Window extension (early exits): each window row's progress ``t / T`` [b] float64, found by ``prepare``
    before the forward and read by ``select``."""

    progress: Tensor


class EarlyExit(DecodingStrategy):
    """A base rule plus an exit test on the logits of the whole generation region (see the module docstring)."""

    joinable = True

    def __init__(self, config: BaseModel) -> None:
        super().__init__(config)
        self.base = base_rule(config)

    @abstractmethod
    def should_exit(self, margins: Tensor, progress: Tensor) -> Tensor:
        """[b] bool: rows to finish now, from the margins [b, G] over the generation region and progress [b]."""

    def prepare(self, state: GenerationState, window: Window) -> Window:
        rows = window.rows
        if window.total_steps:
            progress = (state.nfe[rows] + 1).to(torch.float64) / window.total_steps  # [b] t / T
        else:
            pending = state.pending()[rows, state.gen_start :].sum(dim=1)
            progress = 1.0 - pending.to(torch.float64) / max(state.gen_length, 1)
        return window.widen(min(state.gen_start, window.start), state.length).extend(ExitProgress(progress))

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        commit = self.base.select(state, window, window.window_logits(logits), generator)
        region = logits[:, state.gen_start - window.logits_start :]  # [b, G, V] the generation region
        progress = window.get(ExitProgress)
        if progress is None:
            raise DecodingError(f"{type(self).__name__}.select needs the window its prepare returned")
        finish = self.should_exit(top2_margin(region), progress.progress.to(logits.device))
        if not bool(finish.any()):
            return commit
        fill, _ = propose(logits, mask_id=window.mask_id, temperature=0.0, generator=generator, rows=window.rows)
        lo = window.start - window.logits_start
        # the window keeps the base rule's (maybe sampled) tokens where it proposed any (a greedy rule reading the
        # eligible positions only proposes MASK elsewhere, where this greedy proposal is the one it would make)
        inside = fill[:, lo : lo + window.width]
        fill[:, lo : lo + window.width] = torch.where(commit.tokens == window.mask_id, inside, commit.tokens)
        return Commit(commit.select, commit.tokens, Finish(finish, fill))
