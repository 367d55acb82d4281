"""What a cache manager emits: the :class:`ForwardPlan` and its extensions. Part of :mod:`dlm.messages`."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor

from dlm.memory import SoftStore
from dlm.messages.base import FeatureStore, KVStore, Message
from dlm.messages.window import Window


class ModelInput:
    """Base of the extensions a model reads: attached to a window (by the component that knows the value), each
    travels to the forward plan (:meth:`ForwardPlan.for_window`), so ``model.forward(state, plan)`` still gets
    everything from the plan. Rows are indexed like the window's (and the plan's) rows."""


@dataclass(frozen=True)
class NoiseLevel(ModelInput):
    """Window and plan extension (masked diffusion with a noise schedule, MDLM / DiDi-Instruct; Sahoo et al., 2024,
    arXiv 2406.07524): the diffusion time of each row's step as the total noise ``sigma = -log(alpha_t)`` of the
    schedule, which a time-conditioned model (MDLM's DiT, ``time_conditioning: true``) embeds. Attached by the
    decoding strategy that owns the schedule (``ancestral``); a model that is not time-conditioned ignores it, and
    one that is uses ``sigma = 0`` (clean data) when a plan carries none."""

    sigma: Tensor  # [b] float


# --- forward plans ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ordered:
    """Plan extension (causal models, WeDLM's reordered window): ``columns`` lists each row's columns in
    attention order. Query ``i`` of a row attends to the slots before the row's smallest column (the cached
    prefix) and to the columns at list places ``<= i``, each keeping its own RoPE position. A row may repeat
    its *last* column to match the others' count (the repeat sees the same keys, so it rewrites the same K/V)."""


@dataclass(frozen=True)
class CandidateBatch:
    """Plan extension (candidate steps): the forward runs on ``canvas`` (``b·K`` rows: each window row's
    candidates, in row-major order) with padding ``pad``; the plan's ``kv`` is a private copy of the rows' K/V
    (None without a cache). The plan's ``rows`` index these ``b·K`` rows; ``source_rows`` are the batch rows
    they come from, ``count`` is K."""

    canvas: Tensor  # [b·K, L] long
    pad: Tensor  # [b·K] long
    source_rows: Tensor  # [b] long: batch rows of the window
    count: int  # K
    batch_kv: KVStore | None  # the batch's own store, where the kept candidate's K/V go (the plan's ``kv`` is
    # the candidates' private copy)
    batch_features: "FeatureStore | None" = None  # likewise for a LayerPlans feature store


@dataclass(frozen=True)
class ReadRows:
    """Plan extension (a hint): of the logits span only the positions ``mask`` marks will be read ([b, S] bool,
    rows as the plan's, columns of the logits span; the pipeline attaches the window's ``eligible`` when the
    decoding strategy declares ``reads_eligible_only``). A model may then finish only those rows in its last
    layer and return anything finite (zeros) at the others; a model that ignores the hint returns every row,
    which is equally correct."""

    mask: Tensor  # [b, S] bool


# --- per-layer plans -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftInputs:
    """Plan extension (soft inputs: dInfer's iteration smoothing, DiffusionGemma's self-conditioning): at a computed
    column ``c`` of plan row ``i`` (batch row ``r = rows[i]``) where ``feed[i, c]``, the model feeds
    ``store.values[r, c]`` into its input; and, where ``record[i, c]``, it writes into ``store.values[r, c]`` the
    soft embedding of the distribution it predicts for column ``c``, ``scale[i] · softmax(logits_c / T_i) @ E``
    (``E`` the input embedding matrix, ``T_i`` the row's temperature).

    How a model incorporates a soft embedding, and its exact arithmetic (dtypes, a scale of its own), is the
    model's business: dlm's transformer adds it to the token embedding (dInfer's ``H2Embed``,
    :mod:`dlm.models.soft_inputs`); DiffusionGemma records ``softmax(logits / T) @ E · embed_scale`` in its
    reference's dtypes and passes it through its self-conditioning block (a column not fed gets a zero soft
    embedding there, as at a canvas' first step).

    A row records only the columns it stores this step (inside its write bounds for a range plan, its column set
    for a column plan): a column computed as a peek for another row leaves the row's store as it was, so rows
    give in a batch what they give alone. Recording needs the logits of every computed column, so the model
    computes them all (extra head work only in such forwards); a plan without this extension runs exactly as
    before (the embedding is computed once, inside the network).

    Attached by the component that asks for soft inputs to its *window*; the plan made for that window carries
    it (:meth:`ForwardPlan.for_window`), so every cache composes without knowing it. The store is that
    component's run memory (:class:`~dlm.memory.SoftStore`). Only a model declaring
    ``ModelCapabilities.soft_inputs`` runs it; a component requiring the feature ``soft_inputs``
    (:mod:`dlm.compat`) is refused with any other model when the pipeline is built.
    """

    store: SoftStore
    feed: Tensor  # [b, L] bool: canvas columns whose input gets the stored soft embedding added
    record: Tensor | None = None  # [b, L] bool: canvas columns whose predicted expected embedding is stored
    scale: Tensor | None = None  # [b] float: weight of each row's recorded embedding (None: 1)
    temperature: float | Tensor = 1.0  # of the softmax over the logits: one, or [b] float (one per row)


@dataclass(frozen=True)
class ForwardPlan(Message):
    """What one forward pass computes, what it reuses, and which logits it returns.

    Columns computed: the range ``[start, end)``, or, when ``columns`` is given, exactly those columns of
    each row (any set, any order; a row may repeat one of its columns to match the others' count, which
    rewrites the same K/V). With a KV store the model writes the computed columns' K/V into their slots and
    attends to slots ``[0, key_end)``: columns it did not compute are read as cached. A range plan may store
    only part of what it computes (``write_start``/``write_end``, one bound for every row or one per row): a
    column computed outside them is a *peek*, computed for logits only, leaving the cache's K/V (and so its
    approximation) as they would be without it. Rows at different places of the schedule use per-row bounds.

    The model returns the logits of canvas columns ``[logits_start, logits_end)`` (the window's logits span;
    the model applies its own logit shift), so a plan carries everything ``model.forward`` needs.
    """

    rows: Tensor  # [b] long: batch rows to run
    all_rows: bool  # rows is every row of the batch (lets the model slice instead of gather)
    start: int  # first canvas column computed (with ``columns``: their minimum)
    end: int  # one past the last canvas column computed (with ``columns``: their maximum + 1)
    kv: KVStore | None  # None: attend among the computed columns only, nothing cached
    key_end: int  # with kv: attend to slots [0, key_end)
    refresh: bool  # this forward (re)writes the cache for every column it will later read
    logits_start: int | None = None  # canvas columns whose logits are returned (None: the window's logits span,
    logits_end: int | None = None  # filled in by the pipeline)
    columns: Tensor | None = None  # [b, q] long: the columns each row computes (None: the range)
    write_start: int | Tensor | None = None  # range plans: columns [write_start, write_end) store their K/V
    write_end: int | Tensor | None = None  # (None: every computed column; a [b] tensor: a bound per row)
    extensions: tuple = ()

    def __post_init__(self) -> None:
        if self.write_start is None:
            object.__setattr__(self, "write_start", self.start)
        if self.write_end is None:
            object.__setattr__(self, "write_end", self.end)

    def for_window(self, window: "Window") -> "ForwardPlan":
        """This plan, returning ``window``'s logits span unless it names its own, and carrying the window's
        :class:`SoftInputs` (a request to the model that caches pass on without reading) and its :class:`ModelInput`
        extensions (the model reads them from the plan)."""
        plan = self
        inputs = [e for e in window.extensions if isinstance(e, ModelInput)]
        if inputs:
            plan = plan.extend(*inputs)
        soft = window.get(SoftInputs)
        if soft is not None and not plan.has(SoftInputs):
            plan = plan.extend(soft)
        if plan.logits_start is not None and plan.logits_end is not None:
            return plan
        return replace(plan, logits_start=window.logits_start, logits_end=window.logits_end)

    @property
    def writes_all(self) -> bool:
        return (isinstance(self.write_start, int) and isinstance(self.write_end, int)
                and self.write_start <= self.start and self.write_end >= self.end)

    @property
    def buffer_rows(self) -> Tensor | None:
        """Row index for the KV store (None means all rows, a cheap slice)."""
        return None if self.all_rows else self.rows

    @property
    def ordered(self) -> bool:
        return self.has(Ordered)


