"""Checks of a cache manager: ``plans`` (each plan stays within the canvas, names the window's rows,
covers the window's logits span, also when a strategy widens it to the whole generation region, returns that
span, and the model's KV writes stay inside the planned columns, checked by a model probe on every forward),
``exact_at_refresh`` (refresh and uncached whole-canvas forwards equal a full no-cache forward),
``deterministic``, ``batched``, ``concurrent`` (two generations through one pipeline at once; the cache object
keeps no per-run state) and ``joins`` (rows joining a running generation, for a cache declaring
``joinable = True``). The cache gets its model through :class:`~dlm.messages.CacheEnv` (``pipeline.env``)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from dlm.cache.none import NoCache, NoCacheConfig
from dlm.decoding.low_confidence import LowConfidence, LowConfidenceConfig
from dlm.iteration.blockwise import Blockwise, BlockwiseConfig
from dlm.messages import Commit, ForwardPlan, ReadRows, Window
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.testing.contracts.core import ATOL, RTOL, SMALL_ITERATION, _fail
from dlm.testing.contracts.fixtures import model_for
from dlm.testing.contracts.probes import (
    _batched_vs_single,
    _check_finished,
    _concurrent,
    _config,
    _generate,
    _holds_only_config,
    _joins,
    _ModelProbe,
    _not_joinable,
    _same_outputs,
)


def _full_plan(state: GenerationState, plan: ForwardPlan) -> ForwardPlan:
    return ForwardPlan(rows=plan.rows, all_rows=plan.all_rows, start=0, end=state.length, kv=None,
                       key_end=state.length, refresh=False, logits_start=plan.logits_start,
                       logits_end=plan.logits_end)


class _CacheProbe:
    """Delegates to a cache manager; records the window of each ``plan`` call (the model probe then checks the
    plan against it) and, after each step, that the manager object kept no per-run state."""

    def __init__(self, cache) -> None:
        self._cache, self.window = cache, None
        self.unchanged = _holds_only_config(cache, "the cache manager")

    def __getattr__(self, name: str):
        return getattr(self._cache, name)

    def plan(self, state: GenerationState, window: Window) -> ForwardPlan:
        self.unchanged()
        self.window = window
        return self._cache.plan(state, window)


def _where(window: Window) -> str:
    return f"blocks {window.block.tolist()} steps {window.step.tolist()}"


def _kv_snapshot(plan: ForwardPlan) -> tuple[Tensor, Tensor] | None:
    return None if plan.kv is None else (plan.kv.keys.clone(), plan.kv.values.clone())


def _kv_changed(plan: ForwardPlan, snap: tuple[Tensor, Tensor]) -> Tensor:
    """[B, L] bool: buffer slots whose keys or values differ from ``snap``."""
    dk = (plan.kv.keys != snap[0]).any(-1).any(2).any(0)  # [layers, B, H, L, D] -> [B, L]
    dv = (plan.kv.values != snap[1]).any(-1).any(2).any(0)
    return dk | dv


def _planned(state: GenerationState, plan: ForwardPlan, *, stored: bool = False) -> Tensor:
    """[B, L] bool: the (row, column) pairs the plan computes (``stored``: of those, the ones whose K/V it
    stores: a range plan's columns outside its write bounds are peeks)."""
    allowed = torch.zeros(state.batch_size, state.length, dtype=torch.bool, device=state.device)
    if plan.columns is None:
        allowed[plan.rows, plan.start : plan.end] = True
        if stored:
            cols = torch.arange(state.length, device=state.device)[None, :]
            lo, hi = (torch.as_tensor(v, device=state.device).reshape(-1, 1)
                      for v in (plan.write_start, plan.write_end))
            inside = torch.zeros_like(allowed)
            inside[plan.rows] = (cols >= lo) & (cols < hi)
            allowed &= inside
    else:
        allowed[plan.rows[:, None], plan.columns] = True
    return allowed


def _check_plan(state: GenerationState, plan: ForwardPlan, window: Window, shift: int) -> None:
    where = _where(window)
    if (plan.logits_start, plan.logits_end) != (window.logits_start, window.logits_end):
        _fail(f"{where}: the plan returns the logits of [{plan.logits_start}, {plan.logits_end}), the window asks "
              f"for [{window.logits_start}, {window.logits_end}) (leave them None: the pipeline fills them in)")
    for name in ("write_start", "write_end"):
        bound = getattr(plan, name)
        if isinstance(bound, torch.Tensor) and (bound.shape != plan.rows.shape or bound.dtype != torch.long):
            _fail(f"{where}: plan.{name} per row must be a long tensor [{len(plan.rows)}], got {bound.dtype} "
                  f"{tuple(bound.shape)}")
    if plan.columns is not None:
        cols = plan.columns
        if cols.dim() != 2 or cols.shape[0] != len(plan.rows) or cols.dtype != torch.long:
            _fail(f"{where}: plan.columns must be a long tensor [rows, q], got {cols.dtype} {tuple(cols.shape)}")
        if bool(((cols < 0) | (cols >= state.length)).any()):
            _fail(f"{where}: plan.columns names columns outside the canvas [0, {state.length})")
        if int(cols.min()) != plan.start or int(cols.max()) + 1 != plan.end:
            _fail(f"{where}: plan.start/end [{plan.start}, {plan.end}) are not the column sets' bounds")
        planned = _planned(state, plan)[plan.rows, window.logits_start - shift : window.logits_end - shift]
        if not bool(planned.all()):
            _fail(f"{where}: the column sets miss outputs the logits span [{window.logits_start}, "
                  f"{window.logits_end}) needs")
    if not (0 <= plan.start < plan.end <= state.length):
        _fail(f"{where}: plan computes columns [{plan.start}, {plan.end}) outside the canvas [0, {state.length})")
    if not torch.equal(plan.rows.cpu(), window.rows.cpu()):
        _fail(f"{where}: plan rows {plan.rows.tolist()} are not the window's rows {window.rows.tolist()}")
    if plan.all_rows != (len(plan.rows) == state.batch_size):
        _fail(f"{where}: plan.all_rows={plan.all_rows} but it names {len(plan.rows)} of {state.batch_size} rows")
    if plan.start > window.logits_start - shift or plan.end < window.logits_end - shift:
        _fail(f"{where}: plan [{plan.start}, {plan.end}) does not cover the logits span [{window.logits_start}, "
              f"{window.logits_end})")
    if plan.kv is not None:
        if not (plan.end <= plan.key_end <= state.length):
            _fail(f"{where}: key_end {plan.key_end} is outside [{plan.end}, {state.length}]")
        if plan.kv.keys.shape[1] != state.batch_size or plan.kv.length != state.length:
            _fail(f"{where}: the KV buffer holds {plan.kv.keys.shape[1]} rows x {plan.kv.length} columns, the "
                  f"canvas is {state.batch_size} x {state.length}")


def _cache_probe(shift: int, exact: bool, cache: _CacheProbe) -> Callable:
    """A model probe checking plans, buffer writes and (``exact``) refresh logits."""
    stats: dict[str, Any] = {"last": None, "exact_steps": True}

    def on_forward(state, plan, forward):
        window = cache.window
        _check_plan(state, plan, window, shift)
        prev = stats["last"]
        if prev is not None and plan.kv is not None and prev[0] is plan.kv:
            between = _kv_changed(plan, prev[1])  # changes made outside any forward (e.g. in plan())
            outside = between.clone()
            outside[plan.rows] = False
            if bool(outside.any()):
                _fail(f"{_where(window)}: the KV buffer changed between forwards in rows "
                      f"{outside.any(1).nonzero()[:, 0].tolist()}, which this step does not run")
        snap = _kv_snapshot(plan)
        logits = forward(state, plan)
        if snap is not None:
            stray = _kv_changed(plan, snap) & ~_planned(state, plan, stored=True)
            if bool(stray.any()):
                r, c = stray.nonzero()[0].tolist()
                _fail(f"{_where(window)}: the forward wrote KV slot (row {r}, column {c}) "
                      f"outside the planned rows {plan.rows.tolist()} and stored columns (write bounds)")
            stats["last"] = (plan.kv, _kv_snapshot(plan))
        full_uncached = plan.kv is None and plan.columns is None and plan.start == 0 and plan.end == state.length
        stats["exact_steps"] &= bool(plan.refresh or full_uncached)
        if exact and (plan.refresh or full_uncached):
            reference = forward(state, _full_plan(state, plan))
            read = plan.get(ReadRows)  # only these logits are read (the others may be skipped: zeros)
            got, want = (logits, reference) if read is None else (logits[read.mask], reference[read.mask])
            if not torch.allclose(got, want, rtol=RTOL, atol=ATOL):
                err = (got - want).abs().max().item()
                _fail(f"{_where(window)}: a refresh forward gives logits that differ from a "
                      f"full no-cache forward by {err:.3g}")
        return logits

    on_forward.stats = stats
    return on_forward


class _Staggered(LowConfidence):
    """Rows whose first proposal is an odd token commit their whole window at once, the others follow the
    quota: rows leave their blocks early (decided by a row's own content, so a row does alone what it does
    in any batch)."""

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        commit = super().select(state, window, logits, generator)
        first = window.eligible.int().argmax(dim=1, keepdim=True)  # each row's first eligible column
        odd = commit.tokens.gather(1, first) % 2 == 1
        return Commit(torch.where(odd, window.eligible, commit.select), commit.tokens)


class _WideLogits(LowConfidence):
    """Asks for the logits of the whole generation region every step (as early-exit rules do)."""

    def prepare(self, state: GenerationState, window: Window) -> Window:
        return window.widen(min(state.gen_start, window.start), state.length)

    def select(self, state: GenerationState, window: Window, logits: Tensor, generator: RowRNG) -> Commit:
        return super().select(state, window, window.window_logits(logits), generator)


def _cache_runs(cls, config_dict, exact: bool):
    model = model_for(cls(_config(cls, config_dict)))
    for iteration, decoding in (
        (BlockwiseConfig(**SMALL_ITERATION), LowConfidence(LowConfidenceConfig())),
        (BlockwiseConfig(**SMALL_ITERATION), _Staggered(LowConfidenceConfig())),
        (BlockwiseConfig(gen_length=16, block_length=4, steps=4), LowConfidence(LowConfidenceConfig())),
        (BlockwiseConfig(**SMALL_ITERATION), _WideLogits(LowConfidenceConfig())),
    ):
        cache = _CacheProbe(cls(_config(cls, config_dict)))
        on_forward = _cache_probe(model.capabilities.logit_shift, exact, cache)
        it = Blockwise(iteration)
        out = _generate(_ModelProbe(model, on_forward), it, decoding, cache)
        cache.unchanged()
        _check_finished(out, model.capabilities.mask_id)
        if exact and on_forward.stats["exact_steps"]:  # e.g. every block completed in its refresh
            reference = _generate(model, Blockwise(iteration), type(decoding)(LowConfidenceConfig()),
                                  NoCache(NoCacheConfig()))
            _same_outputs(out, reference, "every forward was exact (refresh or uncached), so tokens must equal the no-cache generation")


def _cache_plans(cls, config_dict):
    _cache_runs(cls, config_dict, exact=False)


def _cache_exact(cls, config_dict):
    _cache_runs(cls, config_dict, exact=True)


def _cache_make(cls, config_dict):
    model = model_for(cls(_config(cls, config_dict)))
    return lambda: (model, Blockwise(BlockwiseConfig(**SMALL_ITERATION)), LowConfidence(LowConfidenceConfig()),
                    cls(_config(cls, config_dict)))


def _cache_concurrent(cls, config_dict):
    _concurrent(_cache_make(cls, config_dict), "blockwise/low_confidence", own=3)


def _cache_joins(cls, config_dict):
    _not_joinable(cls(_config(cls, config_dict)))
    model = model_for(cls(_config(cls, config_dict)))
    for decoding in (LowConfidence, _Staggered):  # rows leaving their blocks early, others late
        _joins(lambda: (model, Blockwise(BlockwiseConfig(**SMALL_ITERATION)), decoding(LowConfidenceConfig()),
                        cls(_config(cls, config_dict))), f"blockwise/{decoding.__name__}")


def _cache_deterministic(cls, config_dict):
    make = _cache_make(cls, config_dict)
    a, b = _generate(*make()), _generate(*make())
    _same_outputs(a, b, "two generations with the same seed")
    if a.nfe != b.nfe:
        _fail(f"two generations with the same seed report NFE {a.nfe} and {b.nfe}")


def _cache_batched(cls, config_dict):
    _batched_vs_single(_cache_make(cls, config_dict), "blockwise/low_confidence")
