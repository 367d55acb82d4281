"""The messages the four components exchange, in one neutral module that imports no component.

This module is the one import home of every message type (versioned as :data:`PLUGIN_API`; CHANGELOG.md lists every change).
One step of the loop (:meth:`dlm.pipeline.Pipeline.step`) passes these values around:

- the iteration manager emits a :class:`Window`: which rows and columns to denoise now, and each row's place
  in the schedule (:class:`Geometry`: its block, its step inside the block, its block's columns);
- the decoding strategy may :meth:`~dlm.decoding.base.DecodingStrategy.prepare` it: ask for the logits of a
  wider span (:meth:`Window.widen`) or attach an extension (:class:`Candidates`: several canvases of a row
  in one forward);
- the cache manager emits a :class:`ForwardPlan` (which columns to compute, which K/V to reuse, which
  logits to return), built with what a :class:`CacheEnv` gives it (the model's capabilities, KV stores);
- the model adapter (described by its :class:`ModelCapabilities`) runs the plan and returns logits;
- the decoding strategy answers with a :class:`Commit`, which :meth:`dlm.state.GenerationState.commit` checks
  and writes into the canvas.

**A small core and typed extensions.** Each message holds the fields every component reads; what one family
of algorithms needs travels as an *extension*: a small frozen dataclass attached with :meth:`Message.extend`
and read with :meth:`Message.get` (``window.get(SubBlocks)``; None when absent). A new family defines its own
extension type next to its components instead of adding a field that every component must know.

Extensions defined here, for the built-in families: :class:`SubBlocks` and :class:`Reorder` (windows),
:class:`Candidates` and :class:`ThresholdFloor` (windows), :class:`Drafts`, :class:`Finish`, :class:`Keep`,
:class:`Edits` and :class:`Idle` (commits), :class:`Ordered`, :class:`CandidateBatch`, :class:`ReadRows`,
:class:`SoftInputs` and :class:`LayerPlans` (plans; a window may carry a :class:`SoftInputs` to the plan made for
it). A :class:`ModelInput` (:class:`NoiseLevel`) is attached to a window and travels to the plan
(:meth:`ForwardPlan.for_window`): something the model reads.

Every component imports this module; it imports only torch (and :mod:`dlm.memory`, which imports only torch), so
no component depends on another.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Protocol, TypeVar

import torch
from torch import Tensor

from dlm.memory import SoftStore

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


@dataclass(frozen=True)
class Geometry:
    """Where each row of a window is in the schedule. Row-shaped tensors are indexed like ``Window.rows``.

    Rows of one generation need not be in the same place: a row that joined a running batch is at its own
    block 0, step 0 while the others are further on, and rows of a batch move on from a block as soon as
    their own block is complete. All four are host (CPU) tensors, so a component may branch on them
    without waiting for the device.
    """

    step: Tensor  # [b] long: step of each row inside its current block (0 = the block's first step)
    block: Tensor  # [b] long: index of each row's current block (0 for schedules without blocks)
    block_start: Tensor  # [b] long: canvas columns of each row's current block
    block_end: Tensor  # [b] long
    total_steps: int | None = None  # the schedule's step budget T over a whole generation (None: no fixed budget)

    @staticmethod
    def uniform(b: int, *, step: int = 0, block: int = 0, block_start: int, block_end: int,
                total_steps: int | None = None) -> "Geometry":
        """Every one of ``b`` rows at the same place."""
        full = lambda v: torch.full((b,), int(v), dtype=torch.long)  # noqa: E731
        return Geometry(full(step), full(block), full(block_start), full(block_end), total_steps)

    @property
    def first_step(self) -> Tensor:
        """[b] bool: the row is at its block's first step (Fast-dLLM's caches refresh; block memory resets)."""
        return self.step == 0


@dataclass(frozen=True)
class SubBlocks:
    """Window extension: each row's current sub-block (Fast-dLLM v2's sub-blocks inside a block)."""

    start: Tensor  # [b] first canvas column of each row's current sub-block
    end: Tensor  # [b] one past its last column


@dataclass(frozen=True)
class Reorder:
    """Window extension (causal models): the forward sees committed columns before pending ones, each at its
    own position (WeDLM's topological reordering), so every pending column attends to every committed one."""


@dataclass(frozen=True)
class Candidates:
    """Window extension: ``K`` candidate canvases per window row, each the canvas with a commit applied on top.

    One forward evaluates all of them (the cache plans them as ``b·K`` rows, each with a private copy of its
    row's K/V: :meth:`dlm.cache.base.CacheManager.plan_candidates`); the decoding strategy then gets logits
    ``[b, K, S, V]`` and returns a :class:`Commit` with :class:`Keep` naming the candidate whose K/V the cache
    keeps. Used by draft-and-verify decoding (FreeDave, Wu et al. 2025, arXiv 2510.00294).
    """

    select: Tensor  # [b, K, W] bool: positions candidate k commits (window columns)
    tokens: Tensor  # [b, K, W] long: their tokens

    @property
    def count(self) -> int:
        return self.select.shape[1]


@dataclass(frozen=True)
class ThresholdFloor:
    """Window extension (dInfer's iteration smoothing, ``iter_threshold``): a threshold rule decides this step
    with, for each window row, the larger of its own threshold and ``value`` [b] (float64, rows as the window's).
    A strategy that reads it declares the feature ``threshold_floor`` (:mod:`dlm.compat`): ``threshold``,
    ``credit`` (its fused confidence) and ``hierarchical`` (its high threshold) do."""

    value: Tensor  # [b] float64


@dataclass(frozen=True)
class Window(Message):
    """What the iteration manager asks to denoise in this step.

    ``rows`` are the rows taking part (not done, with an eligible position); row-shaped tensors here are
    indexed like ``rows``. Columns ``[start, end)`` of the canvas are the union of the rows' windows;
    ``eligible`` marks what each row may commit (only inside its own window). ``geometry`` says where each row
    is in the schedule (per row), so no component reads another's private progress.

    Logits come for the span ``[logits_start, logits_end)`` (the window unless a strategy widened it, see
    :meth:`widen`); :meth:`window_logits` cuts the window's part out of them.
    """

    rows: Tensor  # [b] long, indices into the batch
    start: int  # first canvas column of the window
    end: int  # one past the last canvas column of the window
    eligible: Tensor  # [b, end-start] bool: positions that may be committed now (masked, or provisional)
    quota: Tensor  # [b] long: tokens the schedule asks for in this step (top-k rules use it)
    mask_id: int  # the MASK token id, never a valid proposal
    geometry: Geometry
    logits_start: int | None = None  # span of the logits this step returns; None: the window's columns
    logits_end: int | None = None
    extensions: tuple = ()

    def __post_init__(self) -> None:
        if self.logits_start is None:
            object.__setattr__(self, "logits_start", self.start)
        if self.logits_end is None:
            object.__setattr__(self, "logits_end", self.end)

    @property
    def width(self) -> int:
        return self.end - self.start

    # per-row geometry, for short
    @property
    def step(self) -> Tensor:
        """[b] long (host): each row's step inside its block."""
        return self.geometry.step

    @property
    def block(self) -> Tensor:
        """[b] long (host): each row's block index."""
        return self.geometry.block

    @property
    def block_start(self) -> Tensor:
        return self.geometry.block_start

    @property
    def block_end(self) -> Tensor:
        return self.geometry.block_end

    @property
    def first_step(self) -> Tensor:
        """[b] bool (host): the row is at its block's first step."""
        return self.geometry.first_step

    @property
    def total_steps(self) -> int | None:
        return self.geometry.total_steps

    @property
    def widened(self) -> bool:
        return self.logits_start != self.start or self.logits_end != self.end

    def widen(self, start: int, end: int) -> "Window":
        """This window, asking for the logits of columns ``[start, end)`` (a span containing the window)."""
        if start > self.start or end < self.end:
            raise ValueError(f"a logits span [{start}, {end}) must contain the window [{self.start}, {self.end})")
        return replace(self, logits_start=start, logits_end=end)

    def window_logits(self, logits: Tensor) -> Tensor:
        """The window's columns of logits returned for the span: [b, (K,) W, V]."""
        if not self.widened:
            return logits
        lo = self.start - self.logits_start
        return logits[..., lo : lo + self.width, :]

    # --- names of plugin API 1.x, kept for one minor release ---
    @property
    def candidates(self) -> Candidates | None:
        _deprecated("Window.candidates", "window.get(Candidates)")
        return self.get(Candidates)

    @property
    def sub_start(self) -> Tensor | None:
        _deprecated("Window.sub_start", "window.get(SubBlocks).start")
        sub = self.get(SubBlocks)
        return None if sub is None else sub.start

    @property
    def sub_end(self) -> Tensor | None:
        _deprecated("Window.sub_end", "window.get(SubBlocks).end")
        sub = self.get(SubBlocks)
        return None if sub is None else sub.end

    @property
    def reorder(self) -> bool:
        _deprecated("Window.reorder", "window.has(Reorder)")
        return self.has(Reorder)


# --- commits ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drafts:
    """Commit extension (Jacobi decoding): eligible positions to fill with a *provisional* token from
    ``Commit.tokens``, which later steps may revise; committed tokens never change."""

    mask: Tensor  # [b, W] bool


@dataclass(frozen=True)
class Finish:
    """Commit extension (early exit: SchED, Prophet): rows to finish now. Every position of theirs still
    pending in the logits span takes its token from ``fill`` ([b, S] over the span), and the row ends. The
    span must hold every pending position of a finishing row (widen it to the generation)."""

    rows: Tensor  # [b] bool
    fill: Tensor  # [b, S] long


@dataclass(frozen=True)
class Edits:
    """Commit extension (token editing: LLaDA2.1's T2T editing, DMax-style edit sampling): placed tokens of each
    row's current block rewritten, and the block held open for more steps.

    ``mask`` [b, S] over the logits span (like :class:`Finish`'s ``fill``; widen the window to the rows' blocks to
    edit beyond it): positions whose token becomes ``tokens`` [b, S]. The invariant, checked by
    :meth:`dlm.state.GenerationState.commit`: an edited position lies in its row's current block
    (``window.block_start``/``block_end``) and in the generation region (never the prompt), holds a placed token (a
    masked position is committed through ``select``; an edit never touches what ``select`` or drafts write in the
    same commit), and its new token is not MASK. Tokens outside a row's current block never change.

    ``hold`` [b] bool (None: no row): the strategy is not done with the row's current block. An iteration manager
    providing ``edits`` (:mod:`dlm.compat`) keeps a held row in its block for another step even when nothing in it
    is pending, and ends a held row at an end token only once its block is released (its tokens may still
    change). A strategy releases a block by a commit without ``hold`` for that row; until then it must bound the
    steps it holds (the loop has no other bound for held rows).

    The state records the edited positions of the last step (``state.edited``): a cache that reuses K/V must
    recompute them (they changed though they were committed).
    """

    mask: Tensor  # [b, S] bool
    tokens: Tensor  # [b, S] long
    hold: Tensor | None = None  # [b] bool


@dataclass(frozen=True)
class Keep:
    """Commit extension (candidate steps): the candidate whose K/V the cache keeps, per row."""

    index: Tensor  # [b] long


@dataclass(frozen=True)
class Idle:
    """Commit extension (stochastic samplers whose per-step count is random: MDLM's ancestral step, in which each
    masked position unmasks with a probability, may unmask none): rows that commit nothing in this step though
    they have eligible positions. Without it such a row is refused (the loop would not end); with it the strategy
    bounds the steps a row may idle (its schedule ends with a step that commits every remaining position), and
    an iteration manager must allow those steps (``ancestral`` does; ``blockwise`` allows at most
    ``block_length`` steps per block)."""

    rows: Tensor  # [b] bool


class Commit(Message):
    """A decoding strategy's decision: which window positions to commit, with which tokens.

    Families of algorithms attach their extensions: :class:`Drafts`, :class:`Finish`, :class:`Keep`, :class:`Edits`,
    :class:`Idle`.
    """

    __slots__ = ("select", "tokens", "extensions")

    def __init__(self, select: Tensor, tokens: Tensor, *extensions: Any, drafts: Tensor | None = None,
                 finish: Tensor | None = None, fill: Tensor | None = None, keep: Tensor | None = None) -> None:
        items = [e for e in extensions if e is not None]
        if drafts is not None or finish is not None or keep is not None:
            _deprecated("Commit(drafts=, finish=, fill=, keep=)", "Commit(select, tokens, Drafts(...), Finish(...), Keep(...))")
            if drafts is not None:
                items.append(Drafts(drafts))
            if finish is not None:
                items.append(Finish(finish, fill))
            if keep is not None:
                items.append(Keep(keep))
        object.__setattr__(self, "select", select)  # [b, W] bool, rows as in the window
        object.__setattr__(self, "tokens", tokens)  # [b, W] long, meaningful where ``select`` (or drafts)
        object.__setattr__(self, "extensions", tuple(items))

    def __setattr__(self, name, value) -> None:
        raise AttributeError("Commit is immutable; use extend()")

    def __repr__(self) -> str:
        return f"Commit(select={self.select!r}, tokens={self.tokens!r}, extensions={self.extensions!r})"

    def extend(self, *items: Any) -> "Commit":
        kept = tuple(e for e in self.extensions if not any(type(e) is type(i) for i in items))
        return Commit(self.select, self.tokens, *kept, *items)

    def without(self, kind: type) -> "Commit":
        return Commit(self.select, self.tokens, *(e for e in self.extensions if not isinstance(e, kind)))

    # --- names of plugin API 1.x, kept for one minor release ---
    @property
    def drafts(self) -> Tensor | None:
        _deprecated("Commit.drafts", "commit.get(Drafts).mask")
        d = self.get(Drafts)
        return None if d is None else d.mask

    @property
    def finish(self) -> Tensor | None:
        _deprecated("Commit.finish", "commit.get(Finish).rows")
        f = self.get(Finish)
        return None if f is None else f.rows

    @property
    def fill(self) -> Tensor | None:
        _deprecated("Commit.fill", "commit.get(Finish).fill")
        f = self.get(Finish)
        return None if f is None else f.fill

    @property
    def keep(self) -> Tensor | None:
        _deprecated("Commit.keep", "commit.get(Keep).index")
        k = self.get(Keep)
        return None if k is None else k.index


# --- model inputs -------------------------------------------------------------------------------------


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
    offsets whose attention probabilities :meth:`LayerPolicy.attended` receives.
    """

    compute: Tensor | None = None
    values: tuple[Tensor, Tensor] | None = None
    keys: Tensor | None = None
    probe: Tensor | None = None


class LayerPolicy:
    """One forward's per-layer decisions, made by the cache that planned it (:class:`LayerPlans`).

    The model calls :meth:`step` before each layer, in order, and :meth:`attended` after a layer whose step asked
    for a probe, before the next layer's :meth:`step` (so a probe of layer ``l`` can decide layer ``l + 1``). The
    defaults do nothing: every layer runs as without a policy. A policy lives for one forward; what it learns
    that outlives the forward goes to the cache's run memory.
    """

    def step(self, layer: LayerInput) -> LayerStep | None:
        """What ``layer.layer`` computes (None: every query, as without a policy)."""
        return None

    def attended(self, layer: int, weights: Tensor) -> None:
        """The attention probabilities of the probed query offsets: [b, p, K] (summed over heads; keys as in
        :attr:`LayerStep.keys`, masked keys 0), in float32 or the model's float64."""

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


__all__ = [
    "PLUGIN_API", "ModelCapabilities", "KVStore", "CacheEnv", "Message", "Geometry", "Window", "SubBlocks",
    "Reorder", "Candidates", "ThresholdFloor", "Commit", "Drafts", "Finish", "Keep", "Edits", "Idle",
    "ForwardPlan", "Ordered", "CandidateBatch", "ReadRows", "ModelInput", "NoiseLevel",
    "SoftInputs", "SoftStore", "FeatureStore", "LayerInput", "LayerStep", "LayerPolicy", "LayerPlans"]
