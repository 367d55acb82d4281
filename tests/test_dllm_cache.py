"""dLLM-Cache (``dllm_cache``): exact at its exact settings, a real approximation otherwise, the columns each layer
recomputes, batch rows as alone, and the authors' own code's tokens and NFE (float64, tiny random checkpoints)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.cache.dllm_cache import _Policy
from dlm.testing import make_llada_checkpoint
from tests import reference_dllm_cache as ref
from tests.layer_plan_cases import decoding_st, prompts_st, run
from tests.reference_harness import zero_mask_row


def dllm(kp, kr, rho):
    return {"name": "dllm_cache", "prompt_interval_steps": kp, "gen_interval_steps": kr, "transfer_ratio": rho}


@settings(max_examples=8, deadline=None)
@given(prompts=prompts_st, decoding=decoding_st, rho=st.sampled_from([0.0, 0.25, 1.0]))
def test_both_intervals_at_one_is_none(tiny_ckpt, prompts, decoding, rho):
    assert run(tiny_ckpt, dllm(1, 1, rho), prompts, decoding) == run(tiny_ckpt, {"name": "none"}, prompts, decoding)


@settings(max_examples=8, deadline=None)
@given(prompts=prompts_st, decoding=decoding_st, kr=st.integers(2, 9))
def test_the_prompt_every_forward_and_the_whole_response_by_similarity_is_none(tiny_ckpt, prompts, decoding, kr):
    assert run(tiny_ckpt, dllm(1, kr, 1.0), prompts, decoding) == run(tiny_ckpt, {"name": "none"}, prompts, decoding)


def test_the_cache_is_an_approximation_that_differs_from_none(tiny_ckpt):
    prompts = [[5, 6, 7, 8], [9, 10, 11], [31, 4, 17]]
    assert run(tiny_ckpt, dllm(100, 7, 0.25), prompts) != run(tiny_ckpt, {"name": "none"}, prompts)


@settings(max_examples=8, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=2, max_size=3),
       kp=st.integers(1, 5), kr=st.integers(1, 5), rho=st.sampled_from([0.0, 0.2, 0.5]))
def test_batch_rows_give_what_they_give_alone(tiny_ckpt, prompts, kp, kr, rho):
    tokens, nfe = run(tiny_ckpt, dllm(kp, kr, rho), prompts)
    for i, p in enumerate(prompts):
        assert run(tiny_ckpt, dllm(kp, kr, rho), [p]) == ([tokens[i]], [nfe[i]])


def test_each_layer_recomputes_the_parts_due_and_the_least_similar_response_columns(tiny_ckpt, monkeypatch):
    """3-token prompt, 16-token response, K_p = 3, K_r = 2, ρ = 0.25: layer 1 of forward f computes the prompt when
    3 | f, the whole response when 2 | f, else int(16 · 0.25) = 4 response columns; layer 0 always everything."""
    seen = []
    orig = _Policy.step

    def step(self, layer):
        out = orig(self, layer)
        seen.append((layer.layer, None if out is None else out.compute[0].tolist(), out and out.values is not None))
        return out

    monkeypatch.setattr(_Policy, "step", step)
    run(tiny_ckpt, dllm(3, 2, 0.25), [[5, 6, 7]])
    assert len(seen) == 2 * 16 and all(s == (0, None, None) for s in seen[0::2])
    for f, (layer, compute, values) in enumerate(seen[1::2]):
        if f % 6 == 0:  # both parts due: the layer runs as without a policy
            assert compute is None
            continue
        prompt, response = compute[:3], compute[3:]
        assert prompt == [f % 3 == 0] * 3
        assert sum(response) == (16 if f % 2 == 0 else 4) and values == (f % 2 != 0)


@pytest.fixture(scope="module")
def mha_ckpt(tmp_path_factory):
    """2 layers, d 32, 4 heads and 4 KV heads (the authors' hook assumes as many KV heads as heads), the MASK row of
    the output head zeroed (their loop commits a MASK argmax)."""
    ckpt = make_llada_checkpoint(tmp_path_factory.mktemp("mha") / "llada", n_heads=4, n_kv_heads=4, seed=1)
    return zero_mask_row(ckpt)


GRID = [((100, 7, 0.25), (16, 8, 16)), ((5, 2, 0.25), (16, 4, 8)), ((3, 4, 0.5), (24, 8, 24)),
        ((2, 5, 0.0), (24, 24, 12))]


@pytest.mark.skipif(ref.sources() is None, reason="needs checkouts of maomaocun/dLLM-cache and NVlabs/Fast-dLLM in "
                    "DLM_DLLM_CACHE_SRC and DLM_FAST_DLLM_SRC (tests/reference_dllm_cache.py; docs/fidelity.md)")
def test_the_authors_code_gives_the_same_tokens_and_nfe(mha_ckpt):
    generate, cache_cls, model = ref.load(mha_ckpt)
    differ = 0
    for (kp, kr, rho), (gen, block, steps) in GRID:
        iteration = {"name": "blockwise", "gen_length": gen, "block_length": block, "steps": steps}
        for prompt in ([51, 59, 29], [35, 34, 28, 9, 77, 40, 12]):
            want = ref.reference_generate(generate, cache_cls, model, prompt, steps=steps, gen_length=gen,
                                          block_length=block, prompt_interval_steps=kp, gen_interval_steps=kr,
                                          transfer_ratio=rho, mask_id=2)
            got = run(mha_ckpt, dllm(kp, kr, rho), [prompt], iteration=iteration)
            assert got == ([want[0]], [want[1]]), (kp, kr, rho, gen, block, steps, prompt)
            differ += got[0] != run(mha_ckpt, {"name": "none"}, [prompt], iteration=iteration)[0]
    assert differ > 0  # the grid exercises the approximation, not only exact cases
