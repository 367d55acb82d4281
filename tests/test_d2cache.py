"""d²Cache (``d2cache``): ``none`` where it recomputes everything (``rollout_p: 1``, or a 1-layer model), a real
approximation otherwise, the column sets it computes, batch rows as alone (also at candidate steps), the contract
kit, refusals, and the authors' own code's tokens and NFE (float64, tiny random checkpoints)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dlm import Pipeline, compat
from dlm.cache.d2cache import D2Cache, D2CacheConfig, density, nucleus
from dlm.messages import LayerPlans, ModelCapabilities
from dlm.testing import make_llada_checkpoint
from dlm.testing.contracts import check_component
from tests import reference_d2cache as ref
from tests.conftest import pipeline_config
from tests.layer_plan_cases import decoding_st, prompts_st, run
from tests.reference_harness import zero_mask_row


def d2(p=0.1, k=4, sigma=10.0, w=0):
    return {"name": "d2cache", "rollout_p": p, "current_k": k, "sigma": sigma, "inflate_w": w}


@settings(max_examples=3, deadline=None)
@given(prompts=prompts_st, decoding=decoding_st, k=st.integers(1, 9), w=st.sampled_from([0, 3]))
def test_the_whole_rollout_recomputes_every_column_which_is_none(tiny_ckpt, prompts, decoding, k, w):
    assert run(tiny_ckpt, d2(1.0, k, w=w), prompts, decoding) == run(tiny_ckpt, {"name": "none"}, prompts, decoding)


@settings(max_examples=4, deadline=None)
@given(prompts=prompts_st, decoding=decoding_st, k=st.integers(1, 9), p=st.sampled_from([0.0, 0.3]))
def test_a_one_layer_model_recomputes_every_changed_column_which_is_none(one_layer_ckpt, prompts, decoding, k, p):
    assert run(one_layer_ckpt, d2(p, k), prompts, decoding) == run(one_layer_ckpt, {"name": "none"}, prompts, decoding)


def test_the_cache_is_an_approximation_that_differs_from_none(tiny_ckpt):
    prompts = [[5, 6, 7, 8], [9, 10, 11], [31, 4, 17]]
    assert run(tiny_ckpt, d2(0.1, 8), prompts) != run(tiny_ckpt, {"name": "none"}, prompts)


@settings(max_examples=3, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=2, max_size=3),
       decoding=decoding_st, k=st.integers(1, 9), p=st.sampled_from([0.0, 0.2, 0.6]), w=st.sampled_from([0, 2]))
def test_batch_rows_give_what_they_give_alone(tiny_ckpt, prompts, decoding, k, p, w):
    tokens, nfe = run(tiny_ckpt, d2(p, k, w=w), prompts, decoding)  # padded rows; threshold: rows at other steps
    for i, prompt in enumerate(prompts):
        assert run(tiny_ckpt, d2(p, k, w=w), [prompt], decoding) == ([tokens[i]], [nfe[i]])


def test_each_forward_after_the_first_computes_the_chosen_masked_the_last_committed_and_the_rollouts_top(
        tiny_ckpt, monkeypatch):
    """3-token prompt, blocks of 8 in a 16-token response, k = 3, rollout_p = 0: the first forward runs the whole
    canvas (a refresh, probing all 19 columns, reading the region's logits); each later one stores the 3 masked
    columns chosen (while 3 remain), the column committed at the last step and the single most important other."""
    plans = []
    orig = D2Cache.plan

    def plan(self, state, window):
        out = orig(self, state, window)
        plans.append((out, state.pending()[0].clone()))
        return out

    monkeypatch.setattr(D2Cache, "plan", plan)
    run(tiny_ckpt, d2(0.0, 3), [[5, 6, 7]])
    (first, _), later = plans[0], plans[1:]
    policy = first.get(LayerPlans).policy
    assert first.refresh and first.columns is None and policy.probe.shape == (1, 19) and policy.outputs.shape == (1, 16)
    assert len(later) == 15
    for n, (plan, pending) in enumerate(later):
        policy = plan.get(LayerPlans).policy
        stored = policy.columns[0, policy.probe[0]].unique()
        assert not plan.refresh and policy.outputs is None
        masked = int(pending[stored].sum())
        assert masked == min(3, 15 - n) and len(stored) == masked + 2  # + the last commit, + the rollout's top


def test_the_density_weighs_committed_neighbours_and_the_nucleus_keeps_the_top_share():
    committed = torch.tensor([[True, True, False, False, False, False]])
    d = density(committed, 1.0, torch.float64)[0]
    assert d[0] > d[1] > d[2] > d[3] > d[4] > d[5] > 0  # beyond the right edge: as the last column, not committed
    assert density(committed.flip(1), 1.0, torch.float64)[0, 0] < density(committed.flip(1), 1.0, torch.float64)[0, 5]
    g = torch.arange(-18, 18, dtype=torch.float64)
    want = sum(math.exp(-((2 - j) ** 2) / 2.0) for j in range(-6, 2)) / torch.exp(-g**2 / 2).sum()
    assert torch.isclose(d[2], want)
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    allowed = torch.tensor([[True, True, True, True]])
    assert nucleus(scores, 0.8, allowed).tolist() == [[True, True, False, False]]
    assert nucleus(scores, 0.0, allowed).tolist() == [[True, False, False, False]]  # at least one
    assert nucleus(scores, 0.95, ~torch.eye(4, dtype=torch.bool)[0:1]).tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_it_runs_in_lower_precisions_with_the_forwards_of_one_token_a_step(tiny_ckpt, dtype):
    cfg = pipeline_config(tiny_ckpt, cache=d2(0.1, 4), dtype=dtype)
    out = Pipeline.from_config(cfg).generate(input_ids=[[5, 6, 7], [9, 10]])
    assert out.nfe == [16, 16] and all(2 not in g.tolist() for g in out.generated)  # MASK id 2: all committed


def test_candidate_steps_run_each_candidate_as_its_row_and_keep_the_kept_ones_memory(tiny_ckpt):
    """FreeDave's candidate steps: everything recomputed is ``none``; approximate, a row gives what it gives alone."""
    freedave, prompts = {"name": "freedave", "drafts": 3}, [[5, 6, 7], [9, 10, 11, 12]]
    assert run(tiny_ckpt, d2(1.0, 4), prompts, freedave) == run(tiny_ckpt, {"name": "none"}, prompts, freedave)
    tokens, nfe = run(tiny_ckpt, d2(0.1, 4), prompts, freedave)
    for i, prompt in enumerate(prompts):
        assert run(tiny_ckpt, d2(0.1, 4), [prompt], freedave) == ([tokens[i]], [nfe[i]])


def test_the_contract_kit_passes():
    check_component("cache", "d2cache", {"current_k": 4, "rollout_p": 0.2})


def test_bad_settings_are_refused_naming_the_field():
    for bad in ({"rollout_p": 1.5}, {"current_k": 0}, {"sigma": 0.0}, {"inflate_w": -1}, {"window": 3}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            D2CacheConfig(**bad)


def test_a_model_without_layer_plans_or_with_causal_attention_is_refused():
    caps = ModelCapabilities(mask_id=0, eos_ids=(1,), max_length=64, layer_plans=False)
    cache = D2Cache(D2CacheConfig())
    assert compat.model_problems("cache", cache, caps) == [D2Cache.requires["layer_plans"]]
    causal = dataclasses.replace(caps, layer_plans=True, attention="causal")
    assert "bidirectional" in " ".join(compat.model_problems("cache", cache, causal))


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def masked_ckpt(request, tmp_path_factory):
    """2 layers, d 32, 4 heads, the MASK row of the output head zeroed (the authors' loop may commit MASK)."""
    ckpt = make_llada_checkpoint(tmp_path_factory.mktemp("d2") / "llada", n_kv_heads=request.param, seed=1)
    return zero_mask_row(ckpt)


# (rollout_p, current_k, sigma, inflate_w), (gen_length, block_length), threshold; current_k >= block_length
GRID = [((0.1, 8, 10.0, 0), (16, 8), None), ((0.3, 4, 2.0, 0), (16, 4), None), ((0.1, 8, 10.0, 2), (24, 8), None),
        ((0.2, 12, 4.0, 0), (24, 4), None), ((0.1, 32, 10.0, 0), (32, 8), None), ((0.1, 8, 10.0, 0), (16, 8), 0.3),
        ((0.05, 8, 10.0, 4), (24, 8), 0.2), ((0.9, 24, 10.0, 0), (24, 24), None), ((0.0, 5, 3.0, 1), (20, 4), None)]


@pytest.mark.skipif(ref.source() is None, reason="needs a checkout of Kamichanw/d2Cache in DLM_D2CACHE_SRC and its "
                    "imports in DLM_REFERENCE_PYTHONPATH (tests/reference_d2cache.py)")
def test_the_authors_code_gives_the_same_tokens_and_nfe(masked_ckpt):
    generate, d2cache, model = ref.load(masked_ckpt)
    theirs = importlib.import_module("src.utils").certainty_density
    for committed in torch.rand(6, 3, 24, generator=torch.Generator().manual_seed(0)) < 0.5:  # their FFT, float32
        torch.testing.assert_close(density(committed, 3.0, torch.float64), theirs(committed, 3.0).double(), atol=1e-6,
                                   rtol=0)
    mask_id, differ = json.loads((masked_ckpt / "config.json").read_text())["mask_token_id"], 0
    for (p, k, sigma, w), (gen, block), threshold in GRID:
        iteration = {"name": "blockwise", "gen_length": gen, "block_length": block, "steps": gen}
        decoding = {"name": "low_confidence"} if threshold is None else {"name": "threshold", "threshold": threshold}
        for prompt in ([51, 59, 29], [35, 34, 28, 9, 77, 40, 12], [3]):
            want = ref.reference_generate(generate, d2cache, model, prompt, gen_length=gen, block_length=block,
                                          mask_id=mask_id, threshold=threshold, rollout_p=p, current_k=k, sigma=sigma,
                                          inflate_w=w)
            got = run(masked_ckpt, d2(p, k, sigma, w), [prompt], decoding, iteration)
            assert got == ([want[0]], [want[1]]), (p, k, sigma, w, gen, block, threshold, prompt)
            differ += got[0] != run(masked_ckpt, {"name": "none"}, [prompt], decoding, iteration)[0]
    assert differ > 0  # the grid exercises the approximation, not only exact cases
