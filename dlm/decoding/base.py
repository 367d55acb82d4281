"""Decoding strategy interface: which masked positions to commit this step, with which tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel
from torch import Tensor

from dlm.messages import Commit, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState


class DecodingStrategy(ABC):
    """Turns the step's logits into a :class:`~dlm.messages.Commit`.

    Contract: commit only eligible positions, never the MASK token, and at least one position per row that
    has an eligible one (or finish the row). ``logits`` cover the window's logits span ([b, S, vocab], rows as
    in the window; the window's own columns unless :meth:`prepare` widened it; [b, K, S, vocab] in a
    candidate step).

    Per-generation memory (a credit table, the previous step's distributions) lives in attributes created by
    :meth:`start`, indexed by batch row (``window.rows``), reset per row when ``window.block`` changes, and
    dropped by :meth:`finish`: a row's memory never influences another row, and one generation never
    influences the next. Stateless strategies ignore all three hooks.
    """

    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    def start(self, state: GenerationState) -> None:
        """A generation begins: create per-row memory for ``state.batch_size`` rows (default: none)."""

    def prepare(self, state: GenerationState, window: Window) -> Window:
        """Before the forward: return the window, possibly widened (:meth:`Window.widen`, for logits beyond
        it) or with :class:`~dlm.messages.Candidates` attached. Default: the window unchanged."""
        return window

    @abstractmethod
    def select(self, logits: Tensor, window: Window, generator: RowRNG) -> Commit:
        """Decide this step's commits. Draw randomness only through ``generator`` (one stream per row,
        e.g. ``generator.rand(window.rows, shape)``), so batched rows reproduce single-prompt runs."""

    def finish(self) -> None:
        """The generation ended (or failed): drop the memory :meth:`start` created."""
