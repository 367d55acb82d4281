"""Model adapter interface: token ids become logits, given the cache manager's forward plan.

The interface alone; the adapters built on dlm's own transformer share :mod:`dlm.models.transformer`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor

from dlm.errors import InputError
from dlm.messages import ForwardPlan, KVStore, ModelCapabilities, Window
from dlm.models.tokenizer import Tokenizer
from dlm.state import GenerationState

__all__ = ["ModelAdapter", "ModelCapabilities"]


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
    def forward(self, state: GenerationState, plan: ForwardPlan, window: Window) -> Tensor:
        """Run ``plan``; return logits of the window's logits span (the window unless widened):
        [len(plan.rows), window.logits_end - window.logits_start, vocab]."""

    @abstractmethod
    def new_kv(self, batch: int, length: int) -> KVStore:
        """A zeroed KV store for ``batch`` rows of ``length`` columns."""

    def encode(self, text: str, *, chat: bool = False) -> list[int]:
        if self.tokenizer is None:
            raise InputError("this checkpoint has no tokenizer.json, so text prompts cannot be encoded; pass input_ids")
        return self.tokenizer.encode(text, chat=chat)


