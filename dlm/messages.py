"""The messages the four components exchange, in one neutral module that imports no component.

One step of the loop (:meth:`dlm.pipeline.Pipeline._loop`) passes these values around:

- the iteration manager emits a :class:`Window` (what to denoise now, and the block geometry);
- the decoding strategy may :meth:`~dlm.decoding.base.DecodingStrategy.prepare` it: ask for the logits of a
  wider span (:meth:`Window.widen`) or attach :class:`Candidates` (several canvases of a row in one forward);
- the cache manager emits a :class:`ForwardPlan` (which columns to compute, which K/V to reuse);
- the model adapter (described by its :class:`ModelCapabilities`) runs the plan and returns logits;
- the decoding strategy answers with a :class:`Commit`, which :meth:`dlm.state.GenerationState.commit` checks
  and writes into the canvas.

Every component imports this module; it imports only torch, so no component depends on another.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol

from torch import Tensor


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

    @property
    def eos_id(self) -> int:
        return self.eos_ids[0]


class KVStore(Protocol):
    """Per-layer keys and values indexed by canvas column (slot ``c`` holds column ``c``'s K/V).

    :class:`dlm.models.kv.KVBuffer` is the implementation; a plan names one, the model writes and reads it.
    """

    keys: Tensor  # [n_layers, B, n_kv_heads, L, head_dim]
    values: Tensor

    @property
    def length(self) -> int: ...

    def write(self, layer: int, rows: Tensor | None, start: int, k: Tensor, v: Tensor) -> None: ...

    def write_columns(self, layer: int, rows: Tensor | None, columns: Tensor, k: Tensor, v: Tensor) -> None: ...

    def read(self, layer: int, rows: Tensor | None, key_end: int) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class Candidates:
    """``K`` candidate canvases per window row, each the current canvas with a commit applied on top.

    One forward evaluates all of them (as ``b·K`` rows, each with a private copy of its row's K/V); the
    decoding strategy then gets logits ``[b, K, S, V]`` and returns a :class:`Commit` whose ``keep`` names
    the candidate whose K/V the cache keeps. Used by draft-and-verify decoding (FreeDave, Wu et al. 2025,
    arXiv 2510.00294).
    """

    select: Tensor  # [b, K, W] bool: positions candidate k commits (window columns)
    tokens: Tensor  # [b, K, W] long: their tokens

    @property
    def count(self) -> int:
        return self.select.shape[1]


@dataclass(frozen=True)
class Window:
    """What the iteration manager asks to denoise in this step, and where the step is in the schedule.

    ``rows`` are the rows taking part (not done, still masked in the window); all row-shaped tensors here
    are indexed like ``rows``. Columns ``[start, end)`` of the canvas are the window. The block geometry
    (``block``, ``block_start``/``block_end``, per-row sub-blocks, ``step``, the step budget ``total_steps``)
    is everything a cache or a
    strategy may need to know of the schedule, so no component reads another's private progress.

    Logits come for the span ``[logits_start, logits_end)`` (the window unless a strategy widened it, see
    :meth:`widen`); :meth:`window_logits` cuts the window's part out of them.
    """

    rows: Tensor  # [b] long, indices into the batch
    start: int  # first canvas column of the window
    end: int  # one past the last canvas column of the window
    eligible: Tensor  # [b, end-start] bool: positions that may be committed now (masked, or provisional)
    quota: Tensor  # [b] long: tokens the schedule asks for in this step (top-k rules use it)
    step: int  # index of this step inside the current block (0 = the block's first step)
    mask_id: int  # the MASK token id, never a valid proposal
    block: int = 0  # index of the current block (0 for schedules without blocks)
    block_start: int | None = None  # canvas columns of the current block (union over rows whose blocks
    block_end: int | None = None  # follow their own positions); None: the window's columns
    sub_start: Tensor | None = None  # [b] first canvas column of each row's current sub-block (None: none)
    sub_end: Tensor | None = None  # [b] one past its last column
    logits_start: int | None = None  # span of the logits this step returns; None: the window's columns
    logits_end: int | None = None
    candidates: Candidates | None = None  # several canvases per row in this step's forward (see Candidates)
    reorder: bool = False  # causal models: the forward sees committed columns before pending ones, each at its
    # own position (WeDLM's topological reordering), so every pending column attends to every committed one
    total_steps: int | None = None  # the schedule's step budget T over the whole generation (None: no fixed budget)

    def __post_init__(self) -> None:
        for name, value in (("block_start", self.start), ("block_end", self.end),
                            ("logits_start", self.start), ("logits_end", self.end)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    @property
    def width(self) -> int:
        return self.end - self.start

    @property
    def first_step(self) -> bool:
        """The block's first step (where Fast-dLLM's caches refresh and per-block memory resets)."""
        return self.step == 0

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


@dataclass(frozen=True)
class Commit:
    """A decoding strategy's decision: which window positions to commit, with which tokens.

    Optional parts, each for a family of algorithms:

    - ``drafts`` (Jacobi decoding): eligible positions to fill with a *provisional* token from ``tokens``,
      which later steps may revise; committed tokens never change.
    - ``finish`` + ``fill`` (early exit: SchED, Prophet): rows to finish now; every position of theirs still
      pending in the logits span takes its token from ``fill`` ([b, S] over the span), and the row leaves the
      batch. The span must hold every pending position of a finishing row (widen it to the generation).
    - ``keep`` (candidate steps): the candidate whose K/V the cache keeps, per row.
    """

    select: Tensor  # [b, W] bool, rows as in the window
    tokens: Tensor  # [b, W] long, meaningful where ``select`` (or ``drafts``)
    drafts: Tensor | None = None  # [b, W] bool: provisional (revisable) tokens to write
    finish: Tensor | None = None  # [b] bool: rows that end now
    fill: Tensor | None = None  # [b, S] long: tokens for the finishing rows' pending positions in the span
    keep: Tensor | None = None  # [b] long: index of the candidate kept (candidate steps only)


@dataclass(frozen=True)
class ForwardPlan:
    """What one forward pass computes and what it reuses.

    Columns computed: the range ``[start, end)``, or, when ``columns`` is given, exactly those columns of
    each row (any set, any order; a row may repeat one of its columns to match the others' count, which
    rewrites the same K/V). With a KV store the model writes the computed columns' K/V into their slots and
    attends to slots ``[0, key_end)``: columns it did not compute are read as cached. A range plan may store
    only part of what it computes (``write_start``/``write_end``): a cache asked for logits beyond its own
    columns computes them as a peek, leaving its K/V (and so its approximation) as they would be without it.

    An ``ordered`` plan (causal models, WeDLM's reordered window) lists each row's columns in attention order:
    query ``i`` of a row attends to the slots before the row's smallest column (the cached prefix) and to the
    columns at list places ``<= i``, each keeping its own RoPE position. A row may repeat its *last* column to
    match the others' count (the repeat sees the same keys, so it rewrites the same K/V).
    """

    rows: Tensor  # [b] long: batch rows to run
    all_rows: bool  # rows is every row of the batch (lets the model slice instead of gather)
    start: int  # first canvas column computed (with ``columns``: their minimum)
    end: int  # one past the last canvas column computed (with ``columns``: their maximum + 1)
    kv: KVStore | None  # None: attend among the computed columns only, nothing cached
    key_end: int  # with kv: attend to slots [0, key_end)
    refresh: bool  # this forward (re)writes the cache for every column it will later read
    columns: Tensor | None = None  # [b, q] long: the columns each row computes (None: the range)
    write_start: int | None = None  # range plans: only columns [write_start, write_end) store their fresh
    write_end: int | None = None  # K/V (None: every computed column); the others are computed for logits only
    ordered: bool = False  # with ``columns`` on a causal model: attention is causal in the columns' order (each
    # query sees the slots before its row's first column and the columns up to itself in the list), not by position

    def __post_init__(self) -> None:
        if self.write_start is None:
            object.__setattr__(self, "write_start", self.start)
        if self.write_end is None:
            object.__setattr__(self, "write_end", self.end)

    @property
    def writes_all(self) -> bool:
        return self.write_start == self.start and self.write_end == self.end

    @property
    def buffer_rows(self) -> Tensor | None:
        """Row index for the KV store (None means all rows, a cheap slice)."""
        return None if self.all_rows else self.rows
