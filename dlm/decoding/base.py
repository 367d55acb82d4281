"""Decoding strategy interface: which masked positions to commit this step, with which tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel
from torch import Tensor

from dlm.rng import RowRNG
from dlm.state import Commit, Window


class DecodingStrategy(ABC):
    """Turns the window's logits into a :class:`~dlm.state.Commit`.

    Contract: commit only eligible positions, never the MASK token, and at least one position per row that
    has an eligible one. ``logits`` are aligned to the window's columns: [b, W, vocab], rows as in the window.
    """

    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @abstractmethod
    def select(self, logits: Tensor, window: Window, generator: RowRNG) -> Commit:
        """Decide this step's commits. Draw randomness only through ``generator`` (one stream per row,
        e.g. ``generator.rand(window.rows, shape)``), so batched rows reproduce single-prompt runs."""
