"""Decoding strategy interface: which masked positions to commit this step, with which tokens."""

from __future__ import annotations

import inspect
import warnings
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

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

    **Run memory** (a credit table, the previous step's distributions) is created by :meth:`start` for every
    row of the state it is given and returned; the pipeline keeps it on the state (``state.memory["decoding"]``,
    read back with :meth:`memory`), one entry per batch row (a :class:`~dlm.memory.RowMemory`). A strategy
    object holds only its config, so it serves several generations at once; rows that join a running
    generation get memory from their own ``start``. Reset a row's memory when its block changes
    (``window.block`` is per row). Stateless strategies ignore the hooks.
    """

    Config: ClassVar[type[BaseModel]]
    joinable: ClassVar[bool] = False  # rows may join a running generation (per-row geometry and RowMemory)
    # select() reads the logits only at the window's eligible positions (the tokens it returns elsewhere are
    # ignored): the model may then skip the other rows' last-layer work (ReadRows). Leave False if in doubt.
    reads_eligible_only: ClassVar[bool] = False
    provides: ClassVar[frozenset[str]] = frozenset()  # features guaranteed to the other components (dlm.compat)
    requires: ClassVar[Mapping[str, str]] = {}  # feature -> why it is needed; nothing declared: composes with all

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        select = cls.__dict__.get("select")
        if select is not None and list(inspect.signature(select).parameters)[1:2] == ["logits"]:
            warnings.warn(
                f"{cls.__qualname__}.select(logits, window, generator) is the plugin API 1.x signature; since 2.0 "
                "it is select(state, window, logits, generator) (CHANGELOG.md). Adapted for now.",
                DeprecationWarning, stacklevel=2,
            )
            old = select
            cls.select = lambda self, state, window, logits, generator: old(self, logits, window, generator)

    def start(self, state: GenerationState) -> Any:
        """Rows start: return the run memory for every row of ``state`` (default: none)."""
        return None

    @staticmethod
    def memory(state: GenerationState) -> Any:
        """The run memory :meth:`start` returned, as kept on ``state``."""
        return state.memory.get("decoding")

    def prepare(self, state: GenerationState, window: Window) -> Window:
        """Before the forward: return the window, possibly widened (:meth:`Window.widen`, for logits beyond
        it) or extended (:class:`~dlm.messages.Candidates`). Default: the window unchanged."""
        return window

    @abstractmethod
    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        """Decide this step's commits. Draw randomness only through ``generator`` (one stream per row,
        e.g. ``generator.rand(window.rows, shape)``), so batched rows reproduce single-prompt runs."""
