"""Soft inputs (a plan's ``SoftInputs``, run by every adapter on dlm's transformer) and dInfer's iteration
smoothing (``smoothing``), float64 on the 2-layer tiny LLaDA checkpoint.

The comparison with dInfer's own code (docs/fidelity.md) runs a few of its cases here when ``DLM_DINFER`` names a
dInfer checkout; the whole grid is ``python -m tests.reference_dinfer``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import Pipeline
from dlm.errors import CompositionError
from dlm.memory import SoftStore
from dlm.messages import ForwardPlan, SoftInputs
from dlm.models.layers import Transformer
from dlm.models.llada import LLaDAModel
from dlm.testing.contracts import run_check
from dlm.testing.joins import alone_outputs, joined_outputs
from tests import reference_dinfer
from tests.conftest import pipeline_config

SMOOTHING = {"name": "smoothing", "gen_length": 16, "block_length": 8, "steps": 16}
STRONG = {"cont_weight": 3.0, "cont_weight_init": 2.0, "threshold_decay": 0.1}  # soft inputs that move the argmax
CACHES = [{"name": "none"}, {"name": "prefix"}, {"name": "dual"},
          {"name": "vicinity", "prefix_look": 1, "after_look": 2, "warmup_steps": 2}]
DECODINGS = [{"name": "threshold", "threshold": 0.1}, {"name": "credit", "threshold": 0.1},
             {"name": "hierarchical", "threshold": 0.5, "low_threshold": 0.1}]
MIXED_PROMPTS = [[51, 59, 29, 5], [35, 34, 28], [33, 25, 40]]
prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=5), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def model(tiny_ckpt) -> LLaDAModel:
    return LLaDAModel.load(LLaDAModel.Config(path=tiny_ckpt), dtype=torch.float64, device=torch.device("cpu"))


def build(ckpt, model, iteration: dict, decoding: dict, cache: dict) -> Pipeline:
    return Pipeline.from_config(pipeline_config(ckpt, iteration=iteration, decoding=decoding, cache=cache),
                                model=model)


def outputs(pipe: Pipeline, prompts) -> tuple[list[list[int]], list[int]]:
    out = pipe.generate(input_ids=prompts)
    return [g.tolist() for g in out.generated], out.nfe


def start(ckpt, model, prompts=([5, 6, 7], [8, 9])):
    """A fresh two-row state (gen 8), its first window, and a whole-canvas plan for it."""
    pipe = Pipeline.from_config(pipeline_config(ckpt, iteration={"name": "blockwise", "gen_length": 8,
                                                                 "block_length": 8, "steps": 8}), model=model)
    state = pipe.start(input_ids=list(prompts))
    window = pipe.iteration.window(state)
    plan = ForwardPlan(rows=window.rows, all_rows=True, start=0, end=state.length, kv=None, key_end=state.length,
                       refresh=False).for_window(window)
    return state, window, plan


# --- the interface ------------------------------------------------------------------------------------------


def test_a_plan_without_soft_inputs_runs_the_network_as_before(tiny_ckpt, model, monkeypatch):
    """No embedding passed in (the network looks the tokens up once, itself) and logits only for the window: a
    pipeline without soft inputs does no extra work."""
    calls, lookups = [], []
    monkeypatch.setattr(model.net, "memo_first_layer", False)  # its look-ups of new ids are its own (test_first_layer)
    forward, embed = Transformer.forward, model.net.embed.forward
    monkeypatch.setattr(Transformer, "forward", lambda self, *a, **k: calls.append(k) or forward(self, *a, **k))
    monkeypatch.setattr(model.net.embed, "forward", lambda ids: lookups.append(ids.shape) or embed(ids))
    pipe = build(tiny_ckpt, model, {**SMOOTHING, "name": "blockwise"}, {"name": "low_confidence"}, {"name": "dual"})
    out = pipe.generate(input_ids=[[5, 6, 7]])
    assert len(calls) == len(lookups) == out.nfe[0] > 0
    assert not any(k.get("embeds") is not None for k in calls)
    cached = [k for k in calls if k["start"] > 0]  # dual's block-only steps: the block's 8 logits, no more
    assert cached and all((k["logits_from"], k["logits_to"]) == (0, 8) for k in cached)


def test_an_empty_soft_store_fed_everywhere_gives_the_plain_logits_bit_for_bit(tiny_ckpt, model):
    state, window, plan = start(tiny_ckpt, model)
    store = SoftStore(state.batch_size, state.length)
    fed = model.forward(state, plan.extend(SoftInputs(store, feed=torch.ones_like(state.canvas, dtype=torch.bool))))
    assert torch.equal(fed, model.forward(state, plan)) and store.values is None


def test_a_record_stores_the_scaled_expected_embedding_of_each_marked_stored_column(tiny_ckpt, model):
    """``scale · softmax(logits) @ E`` at the marked columns inside each row's write bounds, nothing elsewhere."""
    state, window, plan = start(tiny_ckpt, model)
    L = state.length
    logits_all = model.forward(state, replace(plan, logits_start=0, logits_end=L))  # [2, L, V]
    record = state.masked().clone()
    record[1, -1] = False  # a masked column the row does not ask to record
    store = SoftStore(state.batch_size, L)
    scale = torch.tensor([0.25, 2.0], dtype=torch.float64)
    bounds = replace(plan, write_start=torch.tensor([0, L - 3]), write_end=torch.tensor([L, L]))
    out = model.forward(state, bounds.extend(SoftInputs(store, feed=record, record=record, scale=scale)))
    assert torch.allclose(out, model.forward(state, plan), atol=1e-12)
    expected = scale[:, None, None] * (torch.softmax(logits_all, dim=-1) @ model.net.embed.weight)
    cols = torch.arange(L)[None, :]
    where = record & (cols >= torch.tensor([[0], [L - 3]]))
    assert torch.allclose(store.values[where], expected[where], atol=1e-12)
    assert not store.values[~where].any()


def test_candidate_steps_refuse_soft_inputs(tiny_ckpt, model):
    from dlm.messages import CandidateBatch

    state, window, plan = start(tiny_ckpt, model)
    batch = CandidateBatch(state.canvas, state.pad, window.rows, 1, None)
    soft = SoftInputs(SoftStore(state.batch_size, state.length), feed=state.masked())
    with pytest.raises(ValueError, match="candidate step cannot take soft inputs"):
        model.forward(state, plan.extend(batch, soft))


def test_the_kit_reports_an_adapter_that_declares_soft_inputs_but_ignores_them(tiny_ckpt):
    class Deaf(LLaDAModel):
        def forward(self, state, plan):
            return super().forward(state, plan.without(SoftInputs))

    outcome = run_check("model", Deaf, "soft_inputs", {"path": str(tiny_ckpt)})
    assert outcome.status == "failed" and "stored nothing" in outcome.detail


# --- the composition ----------------------------------------------------------------------------------------


def test_a_model_without_soft_inputs_is_refused_when_the_pipeline_is_built(tiny_ckpt, model):
    pipe = build(tiny_ckpt, model, SMOOTHING, DECODINGS[0], {"name": "none"})
    hard = LLaDAModel(model.config, model.net, model.capabilities, model.tokenizer)
    hard.capabilities = replace(model.capabilities, soft_inputs=False)
    with pytest.raises(CompositionError, match="iteration 'smoothing' cannot be used with model 'llada'.*only an adapter declaring"):
        Pipeline(hard, pipe.iteration, pipe.decoding, pipe.cache)


def test_a_decoding_rule_without_a_threshold_is_refused_naming_those_with_one(tiny_ckpt, model):
    with pytest.raises(CompositionError, match=r"iteration 'smoothing' cannot be used with decoding 'low_confidence'"
                                               r".*\(works with decoding .*credit.*\)"):
        build(tiny_ckpt, model, SMOOTHING, {"name": "low_confidence"}, {"name": "none"})


@settings(max_examples=4)
@given(prompts=prompts_st, decoding=st.sampled_from(DECODINGS), cache=st.sampled_from(CACHES))
def test_without_weights_or_decay_smoothing_is_the_plain_pipeline_at_threshold_one(tiny_ckpt, model, prompts,
                                                                                    decoding, cache):
    """Soft inputs of weight 0 are the hard inputs (the soft path runs: E + 0), and a floor that never falls
    raises every threshold to 1 (the decoding rules read the floor)."""
    inert = {**SMOOTHING, "cont_weight": 0.0, "cont_weight_init": 0.0, "threshold_decay": 0.0}
    smooth = outputs(build(tiny_ckpt, model, inert, decoding, cache), prompts)
    plain = {**SMOOTHING, "name": "blockwise"}
    assert smooth == outputs(build(tiny_ckpt, model, plain, {**decoding, "threshold": 1.0}, cache), prompts)


def test_soft_inputs_change_what_is_decoded(tiny_ckpt, model):
    """The same schedule with and without the soft embeddings: they move some argmax (the equalities above and
    dInfer's are not vacuous)."""
    soft = {**SMOOTHING, **STRONG}
    hard = {**soft, "cont_weight": 0.0, "cont_weight_init": 0.0}
    prompts = [[5, 6, 7], [8, 9, 10, 11], [12]]
    for cache in CACHES:
        a = outputs(build(tiny_ckpt, model, soft, DECODINGS[0], cache), prompts)
        b = outputs(build(tiny_ckpt, model, hard, DECODINGS[0], cache), prompts)
        assert a[0] != b[0], cache


@pytest.mark.parametrize("cache", CACHES, ids=lambda c: c["name"])
@settings(max_examples=3)
@given(prompts=st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=5), min_size=2, max_size=3))
def test_rows_in_a_batch_give_what_they_give_alone(tiny_ckpt, model, cache, prompts):
    """Rows leave blocks at different steps (threshold rule), so a batch mixes refreshing rows with cached ones
    and rows at different forward counts (weights, floors): each row's tokens and NFE are its own."""
    pipe = build(tiny_ckpt, model, {**SMOOTHING, **STRONG}, DECODINGS[0], cache)
    tokens, nfe = outputs(pipe, prompts + [MIXED_PROMPTS[len(prompts) % 3]])
    for r, prompt in enumerate(prompts):
        assert outputs(pipe, [prompt]) == ([tokens[r]], [nfe[r]])


@settings(max_examples=3)
@given(ids=st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=4), min_size=2, max_size=3),
       join_at=st.lists(st.integers(0, 10), min_size=3, max_size=3))
def test_rows_joining_a_running_generation_give_their_alone_output(tiny_ckpt, model, ids, join_at):
    pipe = build(tiny_ckpt, model, {**SMOOTHING, **STRONG}, DECODINGS[1], CACHES[3])
    assert pipe.joinable
    seeds = list(range(3, 3 + len(ids)))
    assert joined_outputs(pipe, ids, seeds, join_at[: len(ids)]) == alone_outputs(pipe, ids, seeds)


@settings(max_examples=3)
@given(prompts=prompts_st, every=st.integers(2, 4))
def test_column_plans_feed_and_record_as_range_plans_do(one_layer_ckpt, prompts, every):
    """dKV-Cache's cached steps are column plans computing every masked column: on a 1-layer model (cached K/V
    depend on their own token only) smoothing under ``dkv`` is smoothing under ``none``, soft inputs included."""
    dkv = {"name": "dkv", "refresh_every": every}
    iteration = {**SMOOTHING, **STRONG}
    got = outputs(build(one_layer_ckpt, None, iteration, DECODINGS[0], dkv), prompts)
    assert got[0] == outputs(build(one_layer_ckpt, None, iteration, DECODINGS[0], {"name": "none"}), prompts)[0]


def test_the_soft_store_follows_the_canvas_when_it_grows_or_shrinks_on_the_left(tiny_ckpt, model):
    """The engine shifts a running generation to make room for a longer prompt: the recorded soft embeddings move
    with their columns, so the rows give what they gave unshifted."""
    pipe = build(tiny_ckpt, model, {**SMOOTHING, **STRONG}, DECODINGS[0], CACHES[2])
    prompts = [[5, 6, 7], [8, 9, 10, 11]]
    want = outputs(pipe, prompts)
    state = pipe.start(input_ids=prompts)
    for n in (3, -2):  # columns added, then some of them dropped, each after a few steps
        for _ in range(3):
            pipe.step(state)
        assert state.shiftable and state.progress.soft.values is not None
        state = state.shift(n)
    out = pipe.output(pipe.run(state))
    assert ([g.tolist() for g in out.generated], out.nfe) == want


# --- dInfer's own code ----------------------------------------------------------------------------------------


@pytest.mark.skipif(reference_dinfer.find_dinfer() is None, reason="DLM_DINFER names no dInfer checkout")
def test_dinfer_iteration_smoothing_gives_the_same_tokens_and_nfe(tiny_ckpt, tmp_path):
    """A slice of docs/fidelity.md's grid on fid_a_nomask (the tiny checkpoint, MASK logit 0): dInfer's
    IterSmoothDiffusionLLM and IterSmoothWithVicinityCacheDiffusionLLM, unmodified, against ``smoothing`` (dInfer's
    wasted forwards emulated where it runs them)."""
    dinfer = reference_dinfer.load_dinfer(reference_dinfer.find_dinfer())
    ckpt = reference_dinfer.with_zero_mask_row(tiny_ckpt, tmp_path / "nomask")
    model = LLaDAModel.load(LLaDAModel.Config(path=ckpt), dtype=torch.float64, device=torch.device("cpu"))
    cases = [c for c in reference_dinfer.grid() if (c.gen_length, c.block_length) == (16, 4)
             and c.decoding["threshold"] == 0.05 and len(c.prompt) == 3]
    verdicts = [reference_dinfer.compare(dinfer, ckpt, case, model) for case in cases]
    assert set(verdicts) <= {"same", "same with wasted"}, verdicts
    assert verdicts.count("same") > len(cases) // 2
