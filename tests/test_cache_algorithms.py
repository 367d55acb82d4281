"""dInfer's vicinity refresh (``vicinity``) and dKV-Cache (``dkv``): their equivalences with ``dual`` and
``none``, exactness on a 1-layer model, and the columns their cached steps compute (float64, tiny models).

Rows joining a running generation at any step give their alone tokens and NFE under every cache manager
(``none``, ``prefix``, ``dual``, ``vicinity``, ``dkv`` on LLaDA; ``block`` on Fast-dLLM v2; ``append`` on a
causal Qwen2 decoder): hypothesis over join times."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import Pipeline
from dlm.cache.columns import StoreOnly
from dlm.testing.joins import alone_outputs, joined_outputs
from tests.conftest import pipeline_config

prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=1, max_size=3)
decoding_st = st.sampled_from([{"name": "low_confidence"}, {"name": "threshold", "threshold": 0.3}])
ITERATION = {"name": "blockwise", "gen_length": 24, "block_length": 8, "steps": 24}
MIXED_PROMPTS = [[51, 59, 29, 5], [35, 34, 28], [33, 25, 40]]  # rows that begin blocks at different steps


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
    firsts = [(p.start, p.end, p.refresh) for w, p in plans if bool(w.first_step[0])]
    assert firsts == [(0, length, True)] * 3
    assert all((p.start, p.end) == (max(0, int(w.block_start[0]) - 2), min(length, int(w.block_end[0]) + 5))
               for w, p in plans[4:] if not bool(w.first_step[0]))


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
    assert all(len(set(w.step.tolist())) == 1 for w, _ in plans)  # the two rows keep in step (top-k quota)
    refreshes = [int(w.step[0]) for w, p in plans if p.refresh]
    assert refreshes == [0, 1, 4, 0, 1, 4, 0, 1, 4]
    for i, (w, p) in enumerate(plans):
        if p.refresh:
            continue
        before, mask_id = canvases[i - 1]
        earlier = canvases[i - 2][0]
        for r, row in enumerate(p.rows.tolist()):
            stored = (before[row] == mask_id) | (earlier[row] != before[row])  # pending, or committed last step
            want = stored.clone()
            want[w.start : w.end] = True  # the window, whose logits the strategy reads (peeks where committed)
            got = torch.zeros_like(want)
            got[p.columns[r]] = True
            assert torch.equal(got, want)
            kept = p.kv.store[r] if isinstance(p.kv, StoreOnly) else want
            assert torch.equal(kept, stored)


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


def test_a_batch_whose_rows_disagree_on_refreshing_stores_each_rows_own_columns(tiny_ckpt, monkeypatch):
    """A step where some rows refresh and others do not is one range forward with per-row write bounds: a
    refreshing row stores the whole canvas, a cached one its block's vicinity."""
    from dlm.cache.vicinity import VicinityCache
    plans = spy_plans(monkeypatch, VicinityCache)
    cache = {"name": "vicinity", "warmup_steps": 1, "prefix_look": 1, "after_look": 2}
    run(tiny_ckpt, cache, {"name": "threshold", "threshold": 0.7}, MIXED_PROMPTS)
    mixed = [(w, p) for w, p in plans if isinstance(p.write_start, torch.Tensor)]  # rows disagree
    length = 4 + ITERATION["gen_length"]
    both = 0
    for w, p in mixed:
        bounds = [(int(p.write_start[r]), int(p.write_end[r])) for r in range(len(p.rows))]
        for r, (lo, hi) in enumerate(bounds):
            if bool(w.first_step[r]):  # refreshing: the whole canvas
                assert (lo, hi) == (0, length)
            elif (lo, hi) != (0, length):  # cached (past its warm-up): its block and vicinity
                assert (lo, hi) == (max(0, int(w.block_start[r]) - 1), min(length, int(w.block_end[r]) + 2))
        both += (0, length) in bounds and any(b != (0, length) for b in bounds)
        assert not p.refresh and p.start <= min(lo for lo, _ in bounds) and p.end >= max(hi for _, hi in bounds)
    assert both  # some step has a refreshing row beside a cached one


# --- rows joining a running generation give their alone output, under every cache manager ----------------

join_prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=5), min_size=2, max_size=3)
join_times_st = st.lists(st.integers(0, 14), min_size=3, max_size=3)
JOIN_ITERATION = {"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 16}
LLADA_CACHES = [
    {"name": "none"}, {"name": "prefix"}, {"name": "dual"},
    {"name": "vicinity", "warmup_steps": 2, "prefix_look": 1, "after_look": 2},
    {"name": "dkv", "refresh_every": 3},
]
_PIPELINES: dict = {}


def joins_pipeline(key: tuple, build) -> Pipeline:
    """One pipeline (and loaded model) per configuration for the whole module: hypothesis reruns are cheap."""
    if key not in _PIPELINES:
        _PIPELINES[key] = build()
    return _PIPELINES[key]


def assert_joins_give_alone(pipe: Pipeline, ids, join_at) -> None:
    assert pipe.joinable, "every component of this pipeline declares joinable"
    seeds = list(range(7, 7 + len(ids)))
    join_at = join_at[: len(ids)]
    assert joined_outputs(pipe, ids, seeds, join_at) == alone_outputs(pipe, ids, seeds)


@pytest.mark.parametrize("cache", LLADA_CACHES, ids=lambda c: c["name"])
@settings(max_examples=8)
@given(ids=join_prompts_st, join_at=join_times_st, decoding=decoding_st)
def test_rows_joining_a_running_generation_give_their_alone_output(tiny_ckpt, cache, ids, join_at, decoding):
    """2-layer float64 LLaDA, blockwise: a joining row starts at its block 0 while the others are further
    on (other blocks, other steps, other refresh decisions); each row's tokens and NFE are its alone ones."""
    key = ("llada", cache["name"], decoding["name"])
    pipe = joins_pipeline(key, lambda: Pipeline.from_config(
        pipeline_config(tiny_ckpt, iteration=JOIN_ITERATION, decoding=decoding, cache=cache)))
    assert_joins_give_alone(pipe, ids, join_at)


@pytest.fixture(scope="module")
def v2_ckpt(tmp_path_factory):
    """Fast-dLLM v2 layout (block-causal Qwen2, bd_size 4), 2 layers, float64 when loaded."""
    from dlm.tools.qwen2_checkpoints import EOT_ID, make_qwen2_checkpoint

    return make_qwen2_checkpoint(tmp_path_factory.mktemp("v2") / "ckpt", seed=21, bd_size=4, eos_token_id=EOT_ID,
                                 rope_form="parameters")


@pytest.fixture(scope="module")
def causal_ckpts(tmp_path_factory):
    """A plain causal Qwen2 (autoregressive, Jacobi) and one with a mask token (WeDLM)."""
    from dlm.tools.qwen2_checkpoints import make_qwen2_checkpoint

    return {"qwen2": make_qwen2_checkpoint(tmp_path_factory.mktemp("ar") / "ckpt", mask_token_id=None, extra_vocab=3,
                                           seed=31),
            "wedlm": make_qwen2_checkpoint(tmp_path_factory.mktemp("wedlm") / "ckpt", seed=32)}


def raw_pipeline(model: str, path, iteration: dict, decoding: dict, cache: dict) -> Pipeline:
    return Pipeline.from_config({"model": {"name": model, "path": str(path)}, "iteration": iteration,
                                 "decoding": decoding, "cache": cache, "dtype": "float64"})


@pytest.mark.parametrize("cache", [{"name": "block"}, {"name": "block", "sub_block_cache": True}],
                         ids=["block", "sub_block_cache"])
@settings(max_examples=8)
@given(ids=join_prompts_st, join_at=join_times_st,
       decoding=st.sampled_from([{"name": "strict_threshold", "threshold": 0.3}, {"name": "low_confidence"}]))
def test_rows_joining_block_diffusion_under_the_block_cache_give_their_alone_output(v2_ckpt, cache, ids, join_at,
                                                                                     decoding):
    """Fast-dLLM v2 (block-causal, shifted logits), block_diffusion with sub-blocks of 2: rows at different
    blocks, AR steps and sub-blocks (and, with the sub-block cache, rows refreshing beside rows reusing their
    block's K/V) each give their alone tokens and NFE."""
    iteration = {"name": "block_diffusion", "gen_length": 10, "sub_block_size": 2}
    key = ("v2", str(cache), decoding["name"])
    pipe = joins_pipeline(key, lambda: raw_pipeline("fast_dllm_v2", v2_ckpt, iteration, decoding, cache))
    assert_joins_give_alone(pipe, ids, join_at)


@pytest.mark.parametrize("model,iteration,decoding", [
    ("qwen2", {"name": "autoregressive", "gen_length": 8}, {"name": "low_confidence"}),
    ("qwen2", {"name": "jacobi", "gen_length": 8}, {"name": "low_confidence"}),
    ("wedlm", {"name": "wedlm", "gen_length": 8}, {"name": "threshold", "threshold": 0.3}),
], ids=["autoregressive", "jacobi", "wedlm"])
@settings(max_examples=8)
@given(ids=join_prompts_st, join_at=join_times_st)
def test_rows_joining_a_causal_decoder_under_the_append_cache_give_their_alone_output(causal_ckpts, model, iteration,
                                                                                      decoding, ids, join_at):
    """Causal Qwen2: each row's windows drift apart (its own first pending column); a joining row's prompt is
    prefilled beside rows appending one column, or a reordered window (WeDLM), and each row gives its alone
    tokens and NFE."""
    key = (model, iteration["name"], decoding["name"])
    pipe = joins_pipeline(key, lambda: raw_pipeline(model, causal_ckpts[model], iteration, decoding,
                                                    {"name": "append"}))
    assert_joins_give_alone(pipe, ids, join_at)
