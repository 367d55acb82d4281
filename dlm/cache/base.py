"""KV-cache manager interface and the forward plan it emits.

The cache manager decides, the model executes: for each step the manager returns a :class:`ForwardPlan`
naming the rows and the canvas columns to compute and whether to go through the preallocated
:class:`~dlm.models.kv.KVBuffer`. With a buffer, the model writes the fresh K/V of the computed columns
into their slots and attends to slots ``[0, key_end)``: columns it did not compute are read as cached.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel
from torch import Tensor

from dlm.models.base import ModelAdapter, ModelCapabilities
from dlm.models.kv import KVBuffer
from dlm.state import GenerationState, Window


@dataclass(frozen=True)
class ForwardPlan:
    """What one forward pass computes and what it reuses."""

    rows: Tensor  # [b] long: batch rows to run
    all_rows: bool  # rows is every row of the batch (lets the model slice instead of gather)
    start: int  # first canvas column computed
    end: int  # one past the last canvas column computed
    kv: KVBuffer | None  # None: attend among the computed columns only, nothing cached
    key_end: int  # with kv: attend to slots [0, key_end)
    refresh: bool  # this forward (re)writes the cache for every column it will later read

    @property
    def buffer_rows(self) -> Tensor | None:
        """Row index for the KV buffer (None means all rows, a cheap slice)."""
        return None if self.all_rows else self.rows


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
        """The forward to run for ``window``."""

    def finish(self) -> None:
        """Release what ``start`` allocated."""
