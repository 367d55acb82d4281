"""The messages' base: the model's capabilities, the stores a cache is given, and :class:`Message` (a small
core plus typed extensions). Part of :mod:`dlm.messages`, which re-exports every name."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Protocol, TypeVar

from torch import Tensor

PLUGIN_API = "2.0"  # the version of the component interfaces; CHANGELOG.md lists what each version changed

E = TypeVar("E")


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated since plugin API 2.0 (CHANGELOG.md); use {new}", DeprecationWarning,
                  stacklevel=3)


@dataclass(frozen=True)
class ModelCapabilities:
    """What the pipeline must know of a model to compose it with the other components."""

    mask_id: int
    eos_ids: tuple[int, ...]  # EOS first, then other end tokens (e.g. LLaDA's <|eot_id|>)
    max_length: int  # context length in tokens
    vocab_size: int | None = None  # input ids must lie in [0, vocab_size); None: not checked
    logit_shift: int = 0  # 1: the prediction for column i is read at output i-1 (Dream, Fast-dLLM v2)
    attention: Literal["bidirectional", "block_causal", "causal"] = "bidirectional"
    kv_cache: bool = True  # can write to / attend through a KV store
    block_size: int | None = None  # block-causal models: attention block size
    # block-causal models: where blocks are counted from: "start" (each row's position 0: SDAR, Fast-dLLM v2) or
    # "prompt" (the prompt one block, then blocks of block_size from its end: D2F's mask, arXiv 2508.09192)
    blocks_from: Literal["start", "prompt"] = "start"
    # runs a plan's SoftInputs: feeds stored soft embeddings into its inputs and records new ones (how it feeds them,
    # added to the token embeddings or through a block of its own, is the model's business)
    soft_inputs: bool = False
    # how a canvas starts: "masked" (MASK tokens, committed tokens never change) or "noise" (uniformly random tokens
    # that every step may redraft until the canvas is done: DiffusionGemma; mask_id is then a placeholder outside
    # the vocabulary for columns no canvas has reached)
    canvas: Literal["masked", "noise"] = "masked"
    layer_plans: bool = False  # runs LayerPlans: per-layer row sets, attention probes, feature stores
    time_conditioned: bool = False  # the logits depend on the diffusion time of the step (a plan's NoiseLevel)

    @property
    def eos_id(self) -> int:
        return self.eos_ids[0]


class KVStore(Protocol):
    """Per-layer keys and values indexed by canvas column (slot ``c`` holds column ``c``'s K/V), per row.

    :class:`dlm.models.kv.KVBuffer` is the implementation; a plan names one, the model writes and reads it.
    ``take``/``cat`` keep rows and append rows (a row leaving or joining a running generation).
    """

    keys: Tensor  # [n_layers, B, n_kv_heads, L, head_dim]
    values: Tensor

    @property
    def length(self) -> int: ...

    def write(self, layer: int, rows: Tensor | None, start: int, k: Tensor, v: Tensor,
              keep: Tensor | None = None) -> None: ...

    def write_columns(self, layer: int, rows: Tensor | None, columns: Tensor, k: Tensor, v: Tensor,
                      keep: Tensor | None = None) -> None: ...

    def read(self, layer: int, rows: Tensor | None, key_end: int) -> tuple[Tensor, Tensor]: ...

    def take(self, rows: Tensor) -> "KVStore": ...

    def cat(self, other: "KVStore") -> "KVStore": ...

    def copy_rows(self, dst: Tensor, src: "KVStore", src_rows: Tensor) -> None: ...


class FeatureStore(Protocol):
    """Per-layer outputs of the attention and of the MLP, indexed by canvas column, per row (a *feature cache*).

    Slot ``c`` of layer ``l`` holds what layer ``l`` added to column ``c``'s residual stream, as last computed:
    its attention output and its MLP output. Under a :class:`LayerPlans` forward the model writes them for the
    rows a layer computes and reads them for the others (:class:`LayerStep`). Like K/V they are exact when the
    forward that wrote them saw the same canvas, so a refresh (every layer computing every column) makes them
    exact. :class:`dlm.models.kv.FeatureBuffer` is the implementation (``CacheEnv.new_features`` makes one).
    """

    attn: Tensor  # [n_layers, B, L, dim]
    mlp: Tensor

    @property
    def length(self) -> int: ...

    def read(self, layer: int, rows: Tensor | None, columns: Tensor) -> tuple[Tensor, Tensor]: ...

    def write(self, layer: int, rows: Tensor | None, columns: Tensor, attn: Tensor, mlp: Tensor,
              keep: Tensor | None = None) -> None: ...

    def take(self, rows: Tensor) -> "FeatureStore": ...

    def cat(self, other: "FeatureStore") -> "FeatureStore": ...


@dataclass(frozen=True)
class CacheEnv:
    """What a cache manager gets of the model when a generation starts: its capabilities and KV stores.

    Caches never import :mod:`dlm.models`; this is everything they need of it. ``new_features`` is given by
    models that run :class:`LayerPlans` (``capabilities.layer_plans``), None otherwise.
    """

    capabilities: ModelCapabilities
    new_kv: Callable[[int, int], KVStore]  # (rows, columns) -> a zeroed store
    new_features: Callable[[int, int], FeatureStore] | None = None  # (rows, columns) -> a zeroed feature store


class Message:
    """Base of the messages with typed extensions (frozen dataclasses with an ``extensions`` tuple)."""

    extensions: tuple

    def get(self, kind: type[E]) -> E | None:
        """The attached extension of type ``kind`` (or a subclass), or None."""
        for item in self.extensions:
            if isinstance(item, kind):
                return item
        return None

    def has(self, kind: type) -> bool:
        return self.get(kind) is not None

    def extend(self, *items: Any):
        """This message with ``items`` attached (each replacing an attached one of the same type)."""
        kept = tuple(e for e in self.extensions if not any(type(e) is type(i) for i in items))
        return replace(self, extensions=kept + tuple(i for i in items if i is not None))

    def without(self, kind: type):
        """This message with the extensions of type ``kind`` removed."""
        return replace(self, extensions=tuple(e for e in self.extensions if not isinstance(e, kind)))


# --- windows ------------------------------------------------------------------------------------------


