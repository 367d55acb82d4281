"""Model adapter interface: token ids become logits, given the cache manager's forward plan."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import BaseModel
from torch import Tensor

from dlm.errors import InputError
from dlm.models.kv import KVBuffer
from dlm.models.layers import Transformer
from dlm.models.tokenizer import Tokenizer
from dlm.state import GenerationState, Window

if TYPE_CHECKING:
    from dlm.cache.base import ForwardPlan


@dataclass(frozen=True)
class ModelCapabilities:
    """What the pipeline must know of a model to compose it with the other components."""

    mask_id: int
    eos_ids: tuple[int, ...]  # EOS first, then other end tokens (e.g. LLaDA's <|eot_id|>)
    max_length: int  # context length in tokens
    vocab_size: int | None = None  # input ids must lie in [0, vocab_size); None: not checked
    logit_shift: int = 0  # 1: the prediction for column i is read at output i-1 (Dream, Fast-dLLM v2)
    attention: Literal["bidirectional", "block_causal"] = "bidirectional"
    kv_cache: bool = True  # can write to / attend through a KVBuffer
    block_size: int | None = None  # block-causal models: attention block size

    @property
    def eos_id(self) -> int:
        return self.eos_ids[0]


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
    def forward(self, state: GenerationState, plan: "ForwardPlan", window: Window) -> Tensor:
        """Run ``plan``; return logits aligned to the window's columns: [len(plan.rows), W, vocab]."""

    @abstractmethod
    def new_kv(self, batch: int, length: int) -> KVBuffer:
        """A zeroed KV buffer for ``batch`` rows of ``length`` columns."""

    def encode(self, text: str, *, chat: bool = False) -> list[int]:
        if self.tokenizer is None:
            raise InputError("this checkpoint has no tokenizer.json, so text prompts cannot be encoded; pass input_ids")
        return self.tokenizer.encode(text, chat=chat)


class TransformerAdapter(ModelAdapter):
    """Shared forward of the adapters built on :class:`~dlm.models.layers.Transformer`."""

    net: Transformer
    dtype: torch.dtype
    device: torch.device

    def new_kv(self, batch: int, length: int) -> KVBuffer:
        s = self.net.spec
        return KVBuffer(s.n_layers, batch, s.n_kv_heads, length, s.head_dim, dtype=self.dtype, device=self.device)

    def attention_mask(self, state: GenerationState, plan: "ForwardPlan") -> Tensor | None:
        """Bool mask [b, 1, q|1, keys] (True = attend) for the planned forward, or None when unrestricted."""
        key_start = 0 if plan.kv is not None else plan.start
        key_end = plan.key_end if plan.kv is not None else plan.end
        mask = None
        if state.padded:
            cols = torch.arange(key_start, key_end, device=state.device)
            mask = (cols[None, :] >= state.pad[plan.rows, None])[:, None, None, :]  # [b, 1, 1, K]
        if self.capabilities.attention == "block_causal":
            # blocks are counted in each row's own positions (column - pad), so a left-padded row sees the
            # blocks it would see alone; padding columns count as position 0 (as keys they are masked out
            # above, as queries they then attend to block 0 instead of nothing, which would give NaNs)
            bs = self.capabilities.block_size
            pad = state.pad[plan.rows, None]
            q_blk = (torch.arange(plan.start, plan.end, device=state.device)[None, :] - pad).clamp(min=0) // bs
            k_blk = (torch.arange(key_start, key_end, device=state.device)[None, :] - pad).clamp(min=0) // bs
            causal = (q_blk[:, :, None] >= k_blk[:, None, :])[:, None]  # [b, 1, q, K]
            mask = causal if mask is None else mask & causal
        return mask

    @torch.inference_mode()
    def forward(self, state: GenerationState, plan: "ForwardPlan", window: Window) -> Tensor:
        ids = state.canvas[plan.rows, plan.start : plan.end]  # [b, q]
        cols = torch.arange(plan.start, plan.end, device=state.device)
        positions = (cols[None, :] - state.pad[plan.rows, None]).clamp_(min=0)  # [b, q]
        shift = self.capabilities.logit_shift
        lo, hi = window.start - shift - plan.start, window.end - shift - plan.start
        if lo < 0 or hi > plan.end - plan.start:
            raise ValueError(
                f"forward plan computes columns [{plan.start}, {plan.end}) but logits of the window "
                f"[{window.start}, {window.end}) need outputs [{window.start - shift}, {window.end - shift})"
            )
        return self.net(
            ids,
            positions,
            self.attention_mask(state, plan),
            kv=plan.kv,
            rows=plan.buffer_rows,
            start=plan.start,
            key_end=plan.key_end,
            logits_from=lo,
            logits_to=hi,
        )
