"""Model adapter interface: token ids become logits, given the cache manager's forward plan.

The interface alone; the adapters built on dlm's own transformer share :mod:`dlm.models.transformer`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor

from dlm.errors import CompositionError, InputError
from dlm.messages import ForwardPlan, KVStore, ModelCapabilities
from dlm.models.tokenizer import Tokenizer
from dlm.state import GenerationState

__all__ = ["ModelAdapter"]


class ModelAdapter(ABC):
    """A model family: loads its checkpoints and runs the forwards that cache managers plan."""

    Config: ClassVar[type[BaseModel]]
    capabilities: ModelCapabilities
    tokenizer: Tokenizer | None = None

    @classmethod
    @abstractmethod
    def load(cls, config: BaseModel, *, dtype: torch.dtype, device: torch.device) -> "ModelAdapter":
        """Build the adapter from its validated config (reads the checkpoint)."""

    @abstractmethod
    def forward(self, state: GenerationState, plan: ForwardPlan) -> Tensor:
        """Run ``plan`` on the state's canvas (or on the canvas of a :class:`~dlm.messages.CandidateBatch`
        the plan carries); return the logits of the plan's span:
        [len(plan.rows), plan.logits_end - plan.logits_start, vocab] (``[b, K, S, vocab]`` for candidates).
        The model applies its own logit shift: the logit of column ``c`` is read at output ``c - shift``."""

    @abstractmethod
    def new_kv(self, batch: int, length: int) -> KVStore:
        """A zeroed KV store for ``batch`` rows of ``length`` columns."""

    def compile(self) -> None:
        """Compile the forward (``compile: true``). Adapters that cannot say so."""
        raise CompositionError(f"compile: true is not supported by the {type(self).__name__} adapter")

    def shard(self, tensor_parallel: int, expert_parallel: int = 1) -> None:
        """Shard the weights over this process's model group of ``tensor_parallel × expert_parallel`` processes
        (``tensor_parallel: T``: heads and MLPs over T ranks; ``expert_parallel: N``: routed experts over N)."""
        what = "expert_parallel" if expert_parallel > 1 else "tensor_parallel"
        raise CompositionError(f"{what} is not supported by the {type(self).__name__} adapter")

    def encode(self, text: str, *, chat: bool = False) -> list[int]:
        if self.tokenizer is None:
            raise InputError("this checkpoint has no tokenizer.json, so text prompts cannot be encoded; pass input_ids")
        return self.tokenizer.encode(text, chat=chat)


