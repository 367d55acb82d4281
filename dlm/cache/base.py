"""KV-cache manager interface and the forward plan it emits.

The cache manager decides, the model executes: for each step the manager returns a :class:`ForwardPlan`
naming the rows and the canvas columns to compute and whether to go through the preallocated
:class:`~dlm.models.kv.KVBuffer`. With a buffer, the model writes the fresh K/V of the computed columns
into their slots and attends to slots ``[0, key_end)``: columns it did not compute are read as cached.

A plan must compute every column whose output the window's logits need: ``[logits_start − shift,
logits_end − shift)`` for a model with logit shift ``shift`` (the window's columns unless a decoding strategy
widened the span). Everything about the schedule (block bounds, sub-blocks, step) comes from the
:class:`~dlm.messages.Window`; a cache never reads the iteration manager's progress off the state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel

from dlm.messages import ForwardPlan, ModelCapabilities, Window
from dlm.models.base import ModelAdapter
from dlm.state import GenerationState

__all__ = ["CacheManager", "ForwardPlan"]


class CacheManager(ABC):
    """Decides what the model computes at each step and what it may reuse."""

    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    def check(self, capabilities: ModelCapabilities) -> str | None:
        """Return why this policy cannot serve a model with ``capabilities``, or None if it can."""
        return None

    @abstractmethod
    def start(self, state: GenerationState, model: ModelAdapter) -> None:
        """Prepare for a new generation (allocate buffers)."""

    @abstractmethod
    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        """The forward to run for ``window`` (covering its logits span)."""

    def finish(self) -> None:
        """Release what ``start`` allocated."""
