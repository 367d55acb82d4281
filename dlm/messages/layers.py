"""Per-layer plans: what a cache may decide layer by layer (:class:`LayerPlans`). Part of :mod:`dlm.messages`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from dlm.messages.base import FeatureStore


class LayerInput(Protocol):
    """What a layer shows its :class:`LayerPolicy` before it runs (one forward's rows, as the plan's).

    Query *offsets* index the forward's queries (``columns`` maps them to canvas columns: the plan's range, or
    its per-row column sets).
    """

    layer: int
    hidden: Tensor  # [b, q, dim]: the layer's normalised input, what its q/k/v projections read
    columns: Tensor  # [b, q] long: canvas column of each query offset

    def values(self, offsets: Tensor) -> Tensor:
        """This layer's fresh values of the query ``offsets`` ([b, m] long): [b, n_kv_heads, m, head_dim]."""
        ...

    def stored_values(self, offsets: Tensor) -> Tensor:
        """The values the plan's store holds for the columns of ``offsets`` before this layer writes: [b,
        n_kv_heads, m, head_dim]."""
        ...


@dataclass(frozen=True)
class LayerStep:
    """What one layer of a :class:`LayerPlans` forward does, as its :class:`LayerPolicy` decided.

    ``compute`` [b, q] bool (None: every query): the query offsets that run this layer's q/k/v, attention and
    MLP and write their K/V (through the plan's store, with its write bounds) and their features; every other
    offset reads its K/V from the store and takes this layer's attention and MLP outputs from the feature store,
    so its residual stream moves on with cached contributions (dLLM-Cache, Elastic-Cache's shallow layers).
    ``values`` (offsets [b, m], values [b, n_kv_heads, m, head_dim], from :meth:`LayerInput.values`): values
    written to the store before the computed offsets' K/V, for offsets whose values were computed to decide
    (dLLM-Cache's similarity test). ``keys`` [b, K] bool: the keys this layer's queries may attend to, on top of
    the plan's mask (Sparse-dLLM's eviction); K is ``key_end`` with a store. ``probe`` [b, p] long: query
    offsets whose attention probabilities :meth:`LayerPolicy.attended` receives; with ``scores`` their scores
    instead (``q·kᵀ/√d`` before the softmax, summed over heads, masked keys ``-inf``: Sparse-dLLM's importance).
    """

    compute: Tensor | None = None
    values: tuple[Tensor, Tensor] | None = None
    keys: Tensor | None = None
    probe: Tensor | None = None
    scores: bool = False


class LayerPolicy:
    """One forward's per-layer decisions, made by the cache that planned it (:class:`LayerPlans`).

    The model calls :meth:`step` before each layer, in order, and :meth:`attended` after a layer whose step asked
    for a probe, before the next layer's :meth:`step` (so a probe of layer ``l`` can decide layer ``l + 1``); after
    the last layer it hands the logits of the offsets :meth:`predict` names to :meth:`predicted`. The
    defaults do nothing: every layer runs as without a policy. A policy lives for one forward; what it learns
    that outlives the forward goes to the cache's run memory.
    """

    def step(self, layer: LayerInput) -> LayerStep | None:
        """What ``layer.layer`` computes (None: every query, as without a policy)."""
        return None

    def attended(self, layer: int, weights: Tensor) -> None:
        """The attention probabilities of the probed query offsets: [b, p, K] (summed over heads; keys as in
        :attr:`LayerStep.keys`, masked keys 0; the scores with :attr:`LayerStep.scores`), in float32 or the
        model's float64."""

    def predict(self) -> Tensor | None:
        """Query offsets [b, m] whose logits :meth:`predicted` receives after the last layer (None: none; the model
        computes them only when asked, beside the plan's logits span)."""
        return None

    def predicted(self, logits: Tensor) -> None:
        """The logits [b, m, V] of the offsets :meth:`predict` named, as the model emits them at those offsets (a
        shifted model's prediction for column ``c`` is at the offset of ``c − shift``): d2Cache's confidences of
        columns outside the window."""

    def repeat(self, k: int) -> "LayerPolicy":
        """This policy for a candidate step: each row's ``k`` candidates in row-major order (``b·k`` rows), each
        deciding as its row would. A policy that cannot says so here (the step is then refused)."""
        raise NotImplementedError(f"{type(self).__name__} does not run candidate steps (it defines no repeat(k))")


@dataclass(frozen=True)
class LayerPlans:
    """Plan extension: the model consults ``policy`` layer by layer (:class:`LayerStep`), reading and writing
    the feature cache ``features`` (None: no layer may skip computing an offset). Needs a model with
    ``capabilities.layer_plans`` (dlm's transformer in one process; a cache declares ``requires =
    {"layer_plans": ...}``) and a plan with a KV store when a layer computes fewer offsets than the forward's."""

    policy: LayerPolicy
    features: FeatureStore | None = None


