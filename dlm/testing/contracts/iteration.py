"""Checks of an iteration manager: ``windows`` (each window lies in the generation region, names rows
that are not done, marks only masked positions eligible, and carries per-row geometry: ``[b]`` host tensors
indexed like its rows), ``never_rewrites`` (prompt and committed tokens never change), ``terminates``,
``deterministic``, ``batched``, ``concurrent`` (two generations through one pipeline at once; the manager
keeps its progress on the state, never on itself) and ``joins`` (rows started with ``gen_start`` join a
running generation, for a manager declaring ``joinable = True``); :class:`_IterationProbe` wraps the
manager's ``window`` to check each step."""

from __future__ import annotations

import torch

from dlm.cache.none import NoCache, NoCacheConfig
from dlm.decoding.low_confidence import LowConfidence, LowConfidenceConfig
from dlm.iteration.base import IterationManager
from dlm.messages import Window
from dlm.pipeline import GenerationOutput
from dlm.state import GenerationState
from dlm.testing.contracts.core import _fail
from dlm.testing.contracts.fixtures import model_for
from dlm.testing.contracts.probes import (
    _batched_vs_single,
    _check_finished,
    _concurrent,
    _config,
    _generate,
    _joins,
    _not_joinable,
    _same_outputs,
)


class _IterationProbe:
    """Wraps an iteration manager's ``window`` to check each window and the canvas changes before it."""

    def __init__(self, manager: IterationManager) -> None:
        self.manager, self.previous, self.windows = manager, None, 0
        self._window = manager.window
        manager.window = self.window  # instance attribute: the pipeline calls this one

    def window(self, state: GenerationState) -> Window:
        self.check_canvas(state)
        window = self._window(state)
        self.windows += 1
        rows = window.rows.cpu()
        where = f"window {self.windows}"
        if len(rows) == 0 or len(set(rows.tolist())) != len(rows) or int(rows.min()) < 0 or int(rows.max()) >= state.batch_size:
            _fail(f"{where}: rows {rows.tolist()} must be distinct batch rows and at least one")
        if bool(state.done[window.rows].any()):
            _fail(f"{where}: names rows that are done: {window.rows[state.done[window.rows]].tolist()}")
        if not (state.gen_start <= window.start < window.end <= state.length):
            _fail(f"{where}: [{window.start}, {window.end}) is not inside the generation region "
                  f"[{state.gen_start}, {state.length})")
        if window.eligible.shape != (len(rows), window.width) or window.eligible.dtype != torch.bool:
            _fail(f"{where}: eligible must be bool {(len(rows), window.width)}, got {tuple(window.eligible.shape)}")
        masked = state.masked()[window.rows, window.start : window.end]
        if bool((window.eligible & ~masked).any()):
            _fail(f"{where}: marks positions eligible that are not masked (they would be rewritten)")
        if window.quota.shape != (len(rows),) or bool((window.quota < 0).any()):
            _fail(f"{where}: quota must be [{len(rows)}] and non-negative, got {window.quota.tolist()}")
        if window.mask_id != state.mask_id:
            _fail(f"{where}: mask_id {window.mask_id} is not the model's {state.mask_id}")
        _check_geometry(window, where)
        return window

    def check_canvas(self, state: GenerationState) -> None:
        canvas, done = state.canvas.clone(), state.done.clone()
        if self.previous is not None:
            before, was_done = self.previous
            changed = canvas != before
            if bool(changed[:, : state.gen_start].any()):
                _fail(f"after window {self.windows}: a prompt or padding column changed")
            if bool(changed[was_done].any()):
                _fail(f"after window {self.windows}: a finished row changed")
            gen, old = canvas[:, state.gen_start :], before[:, state.gen_start :]
            ends = torch.isin(gen, torch.tensor(state.eos_ids, device=gen.device))
            first_end = torch.where(ends.any(1), ends.int().argmax(1), gen.shape[1])
            after_end = torch.arange(gen.shape[1], device=gen.device)[None, :] > first_end[:, None]
            rewritten = (old != state.mask_id) & (gen != old) & ~(after_end & ends)
            if bool(rewritten.any()):
                r, c = rewritten.nonzero()[0].tolist()
                _fail(f"after window {self.windows}: row {r} generation column {c} was rewritten from "
                      f"{int(old[r, c])} to {int(gen[r, c])}")
        self.previous = (canvas, done)


def _check_geometry(window: Window, where: str) -> None:
    """Per-row geometry: ``[b]`` long host tensors, each row's block a span of the canvas."""
    g, b = window.geometry, len(window.rows)
    for name in ("step", "block", "block_start", "block_end"):
        value = getattr(g, name, None)
        if not isinstance(value, torch.Tensor) or value.shape != (b,) or value.dtype != torch.long:
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
            _fail(f"{where}: geometry.{name} must be a [b={b}] long tensor, one entry per window row; got {got}")
        if value.device.type != "cpu":
            _fail(f"{where}: geometry.{name} must live on the host (CPU), not {value.device}")
    if bool((g.step < 0).any()) or bool((g.block < 0).any()):
        _fail(f"{where}: negative step or block in the geometry: {g.step.tolist()}, {g.block.tolist()}")
    if bool((g.block_start > g.block_end).any()):
        _fail(f"{where}: a row's block ends before it starts: {g.block_start.tolist()} > {g.block_end.tolist()}")


def _iteration_make(cls, config_dict):
    model = model_for(cls(_config(cls, config_dict)))
    return lambda: (model, cls(_config(cls, config_dict)), LowConfidence(LowConfidenceConfig()),
                    NoCache(NoCacheConfig()))


def _iteration_run(cls, config_dict) -> tuple[GenerationOutput, _IterationProbe]:
    model, manager, decoding, cache = _iteration_make(cls, config_dict)()
    probe = _IterationProbe(manager)
    out = _generate(model, manager, decoding, cache)
    probe.check_canvas(out.state)
    return out, probe


def _iteration_windows(cls, config_dict):
    _, probe = _iteration_run(cls, config_dict)
    if probe.windows == 0:
        _fail("the generation ran no step")


def _iteration_never_rewrites(cls, config_dict):
    _iteration_run(cls, config_dict)


def _iteration_terminates(cls, config_dict):
    out, _ = _iteration_run(cls, config_dict)
    if not bool(out.state.done.all()):
        _fail("the generation loop ended with rows not marked done")
    _check_finished(out, out.state.mask_id)


def _iteration_deterministic(cls, config_dict):
    make = _iteration_make(cls, config_dict)
    _same_outputs(_generate(*make(), seed=3), _generate(*make(), seed=3), "two generations with seed 3")


def _iteration_batched(cls, config_dict):
    _batched_vs_single(_iteration_make(cls, config_dict), "generation with low_confidence/none")


def _iteration_concurrent(cls, config_dict):
    _concurrent(_iteration_make(cls, config_dict), "low_confidence/none", own=1)


def _iteration_joins(cls, config_dict):
    _not_joinable(cls(_config(cls, config_dict)))
    _joins(_iteration_make(cls, config_dict), "low_confidence/none")
