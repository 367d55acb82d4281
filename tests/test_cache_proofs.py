"""Proofs of what the Fast-dLLM caches change (fast-dllm.md §8.4), on tiny random models in float64."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import CompositionError, Pipeline
from dlm.cache.dual import DualCache, DualCacheConfig
from dlm.messages import ForwardPlan
from dlm.models.kv import KVBuffer
from conftest import pipeline_config

prompts_st = st.lists(st.lists(st.integers(3, 80), min_size=1, max_size=8), min_size=1, max_size=3)


def make(ckpt, cache, decoding=None, **it):
    iteration = {"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 16, **it}
    return Pipeline.from_config(pipeline_config(
        ckpt, iteration=iteration, decoding=decoding or {"name": "low_confidence"}, cache={"name": cache}
    ))


def spy_logits(pipe):
    """Record (plan, canvas, window, logits) of every forward."""
    record = []
    orig_forward, orig_plan = pipe.model.forward, pipe.cache.plan
    windows = []

    def plan(state, window):
        windows.append(window)
        return orig_plan(state, window)

    def forward(state, plan):
        logits = orig_forward(state, plan)
        record.append((plan, state.canvas.clone(), windows[-1], logits.clone()))
        return logits

    pipe.cache.plan = plan
    pipe.model.forward = forward
    return record


def full_forward_logits(pipe, state_canvas, state, window):
    """Uncached logits of the window's logits span for the given canvas."""
    plan = ForwardPlan(rows=window.rows, all_rows=False, start=0, end=state_canvas.shape[1], kv=None,
                       key_end=state_canvas.shape[1], refresh=False, logits_start=window.logits_start,
                       logits_end=window.logits_end)
    saved = state.canvas
    state.canvas = state_canvas
    try:
        return pipe.model.__class__.forward(pipe.model, state, plan)
    finally:
        state.canvas = saved


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@settings(max_examples=6)
@given(prompts=prompts_st, decoding=st.sampled_from([{"name": "low_confidence"}, {"name": "threshold", "threshold": 0.6}]))
def test_one_layer_cached_logits_equal_uncached(one_layer_ckpt, cache, prompts, decoding):
    pipe = make(one_layer_ckpt, cache, decoding)
    record = spy_logits(pipe)
    out = pipe.generate(input_ids=prompts)
    assert any(not plan.refresh for plan, *_ in record), "no cached step ran"
    for plan, canvas, window, logits in record:
        ref = full_forward_logits(pipe, canvas, out.state, window)
        read = window.eligible  # the strategy reads only these logits (the others may be skipped: ReadRows)
        torch.testing.assert_close(logits[read], ref[read], rtol=0, atol=1e-10)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@settings(max_examples=6)
@given(prompts=prompts_st)
def test_refresh_logits_equal_full_forward(tiny_ckpt, cache, prompts):
    """Each row refreshes at the first step of each of its blocks (rows may be at different blocks under the
    threshold rule): its logits there are those of a full forward, whatever the other rows of the step do."""
    pipe = make(tiny_ckpt, cache, {"name": "threshold", "threshold": 0.7})
    record = spy_logits(pipe)
    out = pipe.generate(input_ids=prompts)
    refreshed = 0
    for plan, canvas, window, logits in record:
        first = window.first_step.to(logits.device)
        assert plan.refresh == bool(first.all())
        if bool(first.any()):
            full = full_forward_logits(pipe, canvas, out.state, window)
            read = window.eligible & first[:, None]  # the read logits of the refreshed rows
            torch.testing.assert_close(logits[read], full[read], rtol=0, atol=1e-10)
            refreshed += int(first.sum())
    assert refreshed == 2 * len(prompts)  # one per block of each row


@settings(max_examples=8)
@given(prompts=prompts_st, blocks=st.integers(1, 3), block_length=st.sampled_from([2, 4, 8]),
       tau=st.floats(0.0, 0.05))
def test_all_caches_identical_when_blocks_complete_at_refresh(tiny_ckpt, prompts, blocks, block_length, tau):
    """Top-k with one step per block, or a threshold below every confidence: every block is finished by
    its refresh forward, so none / prefix / dual must agree for any depth."""
    gen = blocks * block_length
    outs = {}
    for cache in ("none", "prefix", "dual"):
        for name, dec, steps in (("topk", {"name": "low_confidence"}, blocks), ("tau", {"name": "threshold", "threshold": tau}, gen)):
            o = make(tiny_ckpt, cache, dec, gen_length=gen, block_length=block_length, steps=steps).generate(input_ids=prompts)
            outs[(cache, name)] = ([s.tolist() for s in o.sequences], o.nfe)
    for name in ("topk", "tau"):
        assert outs[("none", name)] == outs[("prefix", name)] == outs[("dual", name)]
        assert outs[("none", name)][1] == [blocks] * len(prompts)


def test_caches_do_differ_on_deeper_models(tiny_ckpt):
    """The approximation is real: with 2 layers and one token per step the caches change some outputs."""
    prompts = [[i, i + 1, i + 2] for i in range(3, 40, 8)]
    none = make(tiny_ckpt, "none").generate(input_ids=prompts).sequences
    dual = make(tiny_ckpt, "dual").generate(input_ids=prompts).sequences
    assert any(a.tolist() != b.tolist() for a, b in zip(none, dual))


class RecordingKV(KVBuffer):
    writes: list

    def write(self, layer, rows, start, k, v, keep=None):
        self.writes.append((rows, start, start + k.shape[2]))
        super().write(layer, rows, start, k, v, keep=keep)


@settings(max_examples=8)
@given(prompts=prompts_st)
def test_dual_cache_writes_only_the_current_block_of_its_rows(tiny_ckpt, prompts):
    """Cached steps store each row's current block only (rows at different blocks: each its own), and no
    forward touches the K/V of rows it does not run."""
    pipe = make(tiny_ckpt, "dual", {"name": "threshold", "threshold": 0.8})
    log = []
    orig_new = pipe.env.new_kv

    def new_kv(batch, length):
        kv = orig_new(batch, length)
        kv.__class__ = RecordingKV
        kv.writes = log
        return kv

    pipe.env = dataclasses.replace(pipe.env, new_kv=new_kv)
    blocks = []
    orig_plan = pipe.cache.plan

    def plan(state, window):
        p = orig_plan(state, window)
        blocks.append((p, window.block_start, window.block_end, window.rows.clone(), window.first_step))
        return p

    pipe.cache.plan = plan
    changed = []
    orig_forward = pipe.model.forward

    def forward(state, p):
        before = (p.kv.keys.clone(), p.kv.values.clone())
        logits = orig_forward(state, p)
        diff = (p.kv.keys != before[0]).any(-1).any(2).any(0) | (p.kv.values != before[1]).any(-1).any(2).any(0)
        changed.append(diff)  # [B, L]: slots whose K/V this forward changed
        return logits

    pipe.model.forward = forward
    pipe.generate(input_ids=prompts)
    layers = pipe.model.net.spec.n_layers
    assert len(log) == layers * len(blocks)
    cached = 0
    for i, (p, s, e, rows, first) in enumerate(blocks):
        for w_rows, w_start, w_end in log[i * layers : (i + 1) * layers]:
            expected_rows = None if len(rows) == len(prompts) else rows
            assert (w_rows is None) == (expected_rows is None)
            if w_rows is not None:
                assert w_rows.tolist() == rows.tolist()
        others = torch.ones(len(prompts), dtype=torch.bool)
        others[rows] = False
        assert not bool(changed[i][others].any())
        assert p.refresh == bool(first.all())
        for r, row in enumerate(rows.tolist()):
            if not first[r]:  # a cached step of this row: it stores its own block, fresh
                cached += 1
                slots = changed[i][row].nonzero()[:, 0]
                assert len(slots) and int(slots.min()) >= int(s[r]) and int(slots.max()) < int(e[r])
    assert cached


def test_composition_is_checked_before_any_forward(tiny_ckpt):
    pipe = make(tiny_ckpt, "none")
    caps = pipe.model.capabilities
    pipe.model.capabilities = dataclasses.replace(caps, kv_cache=False)
    with pytest.raises(CompositionError, match="cache 'dual'.*cannot run through a KV buffer"):
        Pipeline(pipe.model, pipe.iteration, pipe.decoding, DualCache(DualCacheConfig()))
