"""KV-cache manager interface: what each forward computes and what it may reuse.

The cache manager decides, the model executes: for each step the manager returns a
:class:`~dlm.messages.ForwardPlan` naming the rows and the canvas columns to compute and whether to go
through a preallocated KV store (made by ``env.new_kv``, see :class:`~dlm.messages.CacheEnv`). With a
store, the model writes the fresh K/V of the computed columns into their slots and attends to slots
``[0, key_end)``: columns it did not compute are read as cached.

A plan must compute every column whose output the window's logits need: ``[logits_start − shift,
logits_end − shift)`` for a model with logit shift ``shift`` (the window's columns unless a decoding strategy
widened the span). Everything about the schedule (each row's block bounds and step, sub-blocks) comes from
the :class:`~dlm.messages.Window`; a cache never reads the iteration manager's progress off the state.

**Run memory.** :meth:`CacheManager.start` returns the cache's memory for the state's rows (its KV store and
bookkeeping, one entry per row: a :class:`~dlm.memory.RowMemory`); the pipeline keeps it in
``state.memory["cache"]`` and :meth:`CacheManager.memory` reads it back. The manager object holds only its
config, so it serves any number of generations at once, and rows can join or leave between steps.

**Rows at different places.** Rows of one step may be at different blocks and steps (a row that joined a
running batch starts at its block 0). A plan serves each row as it would be served alone: per-row write
bounds (``write_start``/``write_end`` as [b] tensors) or per-row column sets keep every row's K/V as they
would be alone; columns a row computes outside its own bounds are peeks.

**Candidate steps** are planned here too (:meth:`plan_candidates`, :meth:`keep`): the core never writes
into a cache's buffers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel

from dlm.cache.candidates import keep_candidate, plan_candidates
from dlm.messages import CacheEnv, Commit, ForwardPlan, ModelCapabilities, Window
from dlm.state import GenerationState

__all__ = ["CacheManager"]


class CacheManager(ABC):
    """Decides what the model computes at each step and what it may reuse."""

    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    def check(self, capabilities: ModelCapabilities) -> str | None:
        """Return why this policy cannot serve a model with ``capabilities``, or None if it can."""
        return None

    def start(self, state: GenerationState, env: CacheEnv) -> Any:
        """Rows start: return this cache's run memory for every row of ``state`` (default: none)."""
        return None

    @staticmethod
    def memory(state: GenerationState) -> Any:
        """The run memory :meth:`start` returned, as kept on ``state`` (rows as the state's)."""
        return state.memory.get("cache")

    @abstractmethod
    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        """The forward to run for ``window`` (covering its logits span)."""

    def plan_candidates(self, state: GenerationState, plan: ForwardPlan, window: Window) -> ForwardPlan:
        """``plan`` run for each of the window's :class:`~dlm.messages.Candidates` (``b·K`` rows with private
        K/V copies; see :mod:`dlm.cache.candidates`)."""
        return plan_candidates(state, plan, window)

    def keep(self, state: GenerationState, plan: ForwardPlan, commit: Commit) -> None:
        """After the strategy decided: a candidate step's kept K/V become its row's (default: see
        :func:`~dlm.cache.candidates.keep_candidate`)."""
        keep_candidate(plan, commit)
