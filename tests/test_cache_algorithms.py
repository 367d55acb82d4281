"""dInfer's vicinity refresh (``vicinity``) and dKV-Cache (``dkv``): their equivalences with ``dual`` and
``none``, exactness on a 1-layer model, and the columns their cached steps compute (float64, tiny models)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import Pipeline
from tests.conftest import pipeline_config

prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=1, max_size=3)
decoding_st = st.sampled_from([{"name": "low_confidence"}, {"name": "threshold", "threshold": 0.3}])
ITERATION = {"name": "blockwise", "gen_length": 24, "block_length": 8, "steps": 24}
MIXED_PROMPTS = [[51, 59, 29, 5], [35, 34, 28], [33, 25, 40]]  # rows whose vicinity warm-ups end apart


def run(ckpt, cache, decoding, prompts, trace=None):
    pipe = Pipeline.from_config(pipeline_config(ckpt, iteration=ITERATION, decoding=decoding, cache=cache))
    out = pipe.generate(input_ids=prompts, trace=trace)
    return [g.tolist() for g in out.generated], out.nfe


def spy_plans(monkeypatch, cls):
    plans = []
    orig = cls.plan

    def plan(self, state, window):
        p = orig(self, state, window)
        plans.append((window, p))
        return p

    monkeypatch.setattr(cls, "plan", plan)
    return plans


@settings(max_examples=8)
@given(prompts=prompts_st, decoding=decoding_st)
def test_vicinity_without_warmup_or_look_is_dual(tiny_ckpt, prompts, decoding):
    vicinity = {"name": "vicinity", "warmup_steps": 0, "prefix_look": 0, "after_look": 0}
    assert run(tiny_ckpt, vicinity, decoding, prompts) == run(tiny_ckpt, {"name": "dual"}, decoding, prompts)


@settings(max_examples=8)
@given(prompts=prompts_st, decoding=decoding_st, warmup=st.integers(0, 6))
def test_a_vicinity_covering_the_canvas_is_none(tiny_ckpt, prompts, decoding, warmup):
    vicinity = {"name": "vicinity", "warmup_steps": warmup, "prefix_look": 100, "after_look": 100}
    assert run(tiny_ckpt, vicinity, decoding, prompts) == run(tiny_ckpt, {"name": "none"}, decoding, prompts)


@settings(max_examples=8)
@given(prompts=prompts_st, decoding=decoding_st, warmup=st.integers(0, 6), look=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_vicinity_is_exact_on_a_one_layer_model(one_layer_ckpt, prompts, decoding, warmup, look):
    vicinity = {"name": "vicinity", "warmup_steps": warmup, "prefix_look": look[0], "after_look": look[1]}
    assert run(one_layer_ckpt, vicinity, decoding, prompts) == run(one_layer_ckpt, {"name": "none"}, decoding, prompts)


def test_vicinity_warms_up_refreshes_then_computes_the_block_with_its_vicinity(tiny_ckpt, monkeypatch):
    from dlm.cache.vicinity import VicinityCache
    plans = spy_plans(monkeypatch, VicinityCache)
    cache = {"name": "vicinity", "warmup_steps": 3, "prefix_look": 2, "after_look": 5}
    run(tiny_ckpt, cache, {"name": "low_confidence"}, [[5, 6, 7]])
    full = [(p.start, p.end, p.refresh) for _, p in plans]
    length = 3 + 24
    # steps 0-2 warm up, step 3 refreshes; block 0 = [3, 11): later steps compute [1, 16); block 1 refreshes
    assert full[:5] == [(0, length, True)] * 4 + [(1, 16, False)]
    firsts = [(p.start, p.end, p.refresh) for w, p in plans if w.first_step]
    assert firsts == [(0, length, True)] * 3
    assert all((p.start, p.end) == (max(0, w.block_start - 2), min(length, w.block_end + 5))
               for w, p in plans[4:] if not w.first_step)


@settings(max_examples=8)
@given(prompts=prompts_st, decoding=decoding_st, every=st.integers(1, 5))
def test_dkv_is_exact_on_a_one_layer_model(one_layer_ckpt, prompts, decoding, every):
    dkv = {"name": "dkv", "refresh_every": every}
    assert run(one_layer_ckpt, dkv, decoding, prompts)[0] == run(one_layer_ckpt, {"name": "none"}, decoding, prompts)[0]


@settings(max_examples=8)
@given(prompts=prompts_st, decoding=decoding_st)
def test_dkv_refreshing_every_step_is_none(tiny_ckpt, prompts, decoding):
    dkv = {"name": "dkv", "refresh_every": 1}
    assert run(tiny_ckpt, dkv, decoding, prompts) == run(tiny_ckpt, {"name": "none"}, decoding, prompts)


def test_dkv_cached_steps_compute_the_pending_columns_those_committed_last_step_and_the_window(tiny_ckpt, monkeypatch):
    from dlm.cache.dkv import DKVCache
    plans = spy_plans(monkeypatch, DKVCache)
    canvases = []
    run(tiny_ckpt, {"name": "dkv", "refresh_every": 4}, {"name": "low_confidence"}, [[5, 6, 7], [8]],
        trace=lambda s: canvases.append((s.canvas.clone(), s.mask_id)))
    refreshes = [w.step for w, p in plans if p.refresh]
    assert refreshes == [0, 1, 4, 0, 1, 4, 0, 1, 4]
    for i, (w, p) in enumerate(plans):
        if p.refresh:
            continue
        before, mask_id = canvases[i - 1]
        earlier = canvases[i - 2][0]
        for r, row in enumerate(p.rows.tolist()):
            want = (before[row] == mask_id) | (earlier[row] != before[row])  # pending, or committed last step
            want[w.start : w.end] = True  # the window, whose logits the strategy reads
            got = torch.zeros_like(want)
            got[p.columns[r]] = True
            assert torch.equal(got, want)


@settings(max_examples=6)
@given(prompts=st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=2, max_size=3),
       warmup=st.integers(1, 6))
def test_vicinity_rows_in_a_batch_give_what_they_give_alone(tiny_ckpt, prompts, warmup):
    """Rows leave blocks at different steps under the threshold rule, so their warm-up ends at different
    steps: a batch then mixes refreshing and cached rows in one (column-set) plan."""
    cache = {"name": "vicinity", "warmup_steps": warmup, "prefix_look": 1, "after_look": 2}
    decoding = {"name": "threshold", "threshold": 0.3}
    tokens, nfe = run(tiny_ckpt, cache, decoding, prompts)
    for r, prompt in enumerate(prompts):
        assert run(tiny_ckpt, cache, decoding, [prompt]) == ([tokens[r]], [nfe[r]])


def test_a_batch_whose_rows_disagree_on_refreshing_runs_a_column_set_plan(tiny_ckpt, monkeypatch):
    from dlm.cache.vicinity import VicinityCache
    plans = spy_plans(monkeypatch, VicinityCache)
    cache = {"name": "vicinity", "warmup_steps": 3, "prefix_look": 1, "after_look": 2}
    run(tiny_ckpt, cache, {"name": "threshold", "threshold": 0.3}, MIXED_PROMPTS)
    assert any(p.columns is not None for _, p in plans)
