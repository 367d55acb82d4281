"""Checks of a model adapter: ``capabilities`` (consistent declarations), ``logits`` (shape
[rows, S, vocab] over the plan's logits span, finite), ``kv_forward`` (forwards through a KV buffer equal the
plain forward), ``soft_inputs`` (for an adapter declaring them, :class:`~dlm.messages.SoftInputs`: an empty store
fed changes nothing, a record stores finite embeddings at exactly the marked columns, each row's as alone, and
feeding them changes the logits), ``deterministic``, ``batched`` (a left-padded batch gives each prompt's logits alone),
``concurrent`` (two generations through one pipeline at once) and ``joins`` (rows joining a running
generation: every pipeline whose other components are joinable joins rows, whatever the model, so the model
must compute each row as it would alone). ``model.forward(state, plan)`` gets everything from the plan,
the logits span included (``plan.for_window(window)``)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from dlm.cache.none import NoCache, NoCacheConfig
from dlm.decoding.low_confidence import LowConfidence, LowConfidenceConfig
from dlm.iteration.blockwise import Blockwise, BlockwiseConfig
from dlm.iteration.canvases import Canvases, CanvasesConfig
from dlm.memory import SoftStore
from dlm.messages import ForwardPlan, SoftInputs, Window
from dlm.models.base import ModelAdapter
from dlm.rng import RowRNG
from dlm.state import GenerationState
from dlm.testing.contracts.core import ATOL, CPU, DTYPE, PROMPTS, RTOL, SMALL_ITERATION, NotApplicable, _fail
from dlm.testing.contracts.probes import _check_finished, _concurrent, _config, _generate, _joins, _same_outputs


def _load_model(cls, config_dict) -> ModelAdapter:
    return cls.load(_config(cls, config_dict), dtype=DTYPE, device=CPU)


def _model_state(model: ModelAdapter, prompts=PROMPTS) -> tuple[GenerationState, Window]:
    """A state at its first window: blockwise on a masked model, one canvas of noise on a noise-canvas model."""
    if model.capabilities.canvas == "noise":
        iteration = Canvases(CanvasesConfig(gen_length=model.capabilities.block_size))
    else:
        iteration = Blockwise(BlockwiseConfig(**SMALL_ITERATION))
    state = iteration.start([torch.tensor(p) for p in prompts], model.capabilities, CPU)
    # a canvas' noise comes from the row's stream: one seed for every row, so a prompt draws the same in a batch
    state.rng = RowRNG([0] * state.batch_size, state.batch_size, CPU)
    return state, iteration.window(state)


def _whole(state: GenerationState, window: Window, kv=None) -> ForwardPlan:
    return ForwardPlan(rows=window.rows, all_rows=len(window.rows) == state.batch_size, start=0, end=state.length,
                       kv=kv, key_end=state.length, refresh=kv is not None).for_window(window)


def _model_make(model: ModelAdapter):
    return lambda: (model, Blockwise(BlockwiseConfig(**SMALL_ITERATION)), LowConfidence(LowConfidenceConfig()),
                    NoCache(NoCacheConfig()))


def _model_capabilities(cls, config_dict):
    caps = _load_model(cls, config_dict).capabilities
    if not caps.eos_ids or caps.mask_id in caps.eos_ids:
        _fail(f"eos_ids {caps.eos_ids} must be non-empty and must not contain mask_id {caps.mask_id}")
    if caps.max_length < 1 or caps.logit_shift not in (0, 1):
        _fail(f"max_length {caps.max_length} must be positive and logit_shift {caps.logit_shift} 0 or 1")
    if caps.attention == "block_causal" and not caps.block_size:
        _fail("a block-causal model must declare its block_size")


def _model_logits(cls, config_dict):
    model = _load_model(cls, config_dict)
    state, window = _model_state(model)
    logits = model.forward(state, _whole(state, window))
    vocab = logits.shape[-1] if logits.dim() == 3 else -1
    if tuple(logits.shape) != (len(window.rows), window.width, vocab):
        _fail(f"logits have shape {tuple(logits.shape)}, expected [rows={len(window.rows)}, S={window.width}, vocab]")
    if not bool(torch.isfinite(logits).all()):
        _fail("logits hold NaN or infinite values")
    # the generation region's logits (a noise-canvas model: up to the canvas's end, the later columns hold no token)
    end = window.end if model.capabilities.canvas == "noise" else state.length
    wide = model.forward(state, replace(_whole(state, window), logits_start=state.gen_start, logits_end=end))
    if tuple(wide.shape) != (len(window.rows), end - state.gen_start, vocab):
        _fail(f"a plan asking for the logits of [{state.gen_start}, {end}) gets shape {tuple(wide.shape)}, "
              f"expected [rows={len(window.rows)}, S={end - state.gen_start}, vocab]")
    lo = window.start - state.gen_start
    if not torch.allclose(wide[:, lo : lo + window.width], logits, rtol=RTOL, atol=ATOL):
        _fail("the logits of a wider span differ from the window's logits on the window's columns")
    if model.capabilities.canvas == "masked" and not 0 <= model.capabilities.mask_id < vocab:  # noise: a placeholder
        _fail(f"mask_id {model.capabilities.mask_id} is outside the vocabulary of {vocab} logits")


def _model_kv_forward(cls, config_dict):
    model = _load_model(cls, config_dict)
    if not model.capabilities.kv_cache:
        raise NotApplicable("the model declares kv_cache=False")
    state, window = _model_state(model)
    plain = model.forward(state, _whole(state, window))
    kv = model.new_kv(state.batch_size, state.length)
    through = model.forward(state, _whole(state, window, kv))
    if not torch.allclose(through, plain, rtol=RTOL, atol=ATOL):
        _fail("a whole-canvas forward through a KV buffer differs from the plain forward")
    shift = model.capabilities.logit_shift
    block = ForwardPlan(rows=window.rows, all_rows=True, start=window.start - shift, end=window.end - shift, kv=kv,
                        key_end=state.length, refresh=False).for_window(window)
    cached = model.forward(state, block)
    if not torch.allclose(cached, plain, rtol=RTOL, atol=ATOL):
        _fail("a window-only forward reading the K/V it just wrote differs from the plain forward "
              f"(max error {(cached - plain).abs().max().item():.3g})")


def _recorded(model: ModelAdapter, prompts) -> tuple[Tensor, Tensor, Tensor]:
    """A whole-canvas forward of ``prompts`` recording soft inputs at the pending columns (MASK, or a noise
    canvas' drafts; scale 0.5): the plain logits, the logits of the recording forward, and the store's values."""
    state, window = _model_state(model, prompts)
    plan = _whole(state, window)
    plain = model.forward(state, plan)
    masked = state.pending()[window.rows]
    store = SoftStore(state.batch_size, state.length)
    empty = model.forward(state, plan.extend(SoftInputs(store, feed=masked)))
    if not torch.equal(empty, plain):
        _fail("a forward fed an empty soft store differs from the plain forward")
    scale = torch.full((len(window.rows),), 0.5, dtype=torch.float64)
    recording = model.forward(state, plan.extend(SoftInputs(store, feed=masked, record=masked, scale=scale)))
    if store.values is None:
        _fail("a forward recording soft inputs stored nothing")
    return plain, recording, store.values


def _model_soft_inputs(cls, config_dict):
    model = _load_model(cls, config_dict)
    if not model.capabilities.soft_inputs:
        raise NotApplicable("the model does not declare soft_inputs")
    plain, recording, values = _recorded(model, PROMPTS)
    if not torch.allclose(recording, plain, rtol=RTOL, atol=ATOL):
        _fail("recording soft inputs changed the logits returned by the forward")
    state, window = _model_state(model)
    written = values.abs().sum(dim=-1) != 0  # [B, L]
    if not torch.equal(written, state.pending()) or not bool(torch.isfinite(values).all()):
        _fail("a record over the whole canvas must store finite embeddings at exactly the pending columns")
    for r, prompt in enumerate(PROMPTS):
        alone = _recorded(model, [prompt])[2][0]
        pad = int(state.pad[r])
        if not torch.allclose(values[r, pad:], alone, rtol=RTOL, atol=ATOL):
            _fail(f"prompt {r}: the soft embeddings recorded in a left-padded batch differ from those alone")
    masked = state.pending()[window.rows]
    fed = model.forward(state, _whole(state, window).extend(SoftInputs(SoftStore(*values.shape[:2], values),
                                                                         feed=masked)))
    if torch.allclose(fed, plain, rtol=RTOL, atol=ATOL):
        _fail("feeding the recorded soft embeddings gives the plain logits: the store is not read")


def _model_deterministic(cls, config_dict):
    model = _load_model(cls, config_dict)
    state, window = _model_state(model)
    if not torch.equal(model.forward(state, _whole(state, window)),
                       model.forward(state, _whole(state, window))):
        _fail("two identical forwards give different logits")
    make = _model_make(model)
    out = _generate(*make())
    _check_finished(out, model.capabilities.mask_id)
    _same_outputs(out, _generate(*make()), "two generations with the same seed")


def _model_batched(cls, config_dict):
    model = _load_model(cls, config_dict)
    state, window = _model_state(model)
    batched = model.forward(state, _whole(state, window))
    for r, prompt in enumerate(PROMPTS):
        s1, w1 = _model_state(model, [prompt])
        alone = model.forward(s1, _whole(s1, w1))
        if not torch.allclose(batched[r], alone[0], rtol=RTOL, atol=ATOL):
            _fail(f"prompt {r}: logits in a left-padded batch differ from its logits alone by "
                  f"{(batched[r] - alone[0]).abs().max().item():.3g}")


def _model_concurrent(cls, config_dict):
    model = _load_model(cls, config_dict)
    _concurrent(_model_make(model), "blockwise/low_confidence/none")


def _model_joins(cls, config_dict):
    model = _load_model(cls, config_dict)
    problem = Blockwise(BlockwiseConfig(**SMALL_ITERATION)).check(model.capabilities)
    if problem is not None:
        raise NotApplicable(f"blockwise cannot drive this model: {problem}")
    _joins(_model_make(model), "blockwise/low_confidence/none")
