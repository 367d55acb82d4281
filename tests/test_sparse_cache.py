"""Sparse-dLLM (``sparse``): ``dual`` with a delayed refresh when it keeps everything, a real eviction otherwise
(each layer keeping ``int(keep_ratio · n)`` columns), batch rows as alone, the contract kit, and the authors' own
code's tokens and NFE (float64, tiny random checkpoints)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.cache.dual import DualCache
from dlm.cache.prefix import row_range_plan
from dlm.cache.sparse import _Policy
from dlm.testing import make_llada_checkpoint
from dlm.testing.contracts import check_component
from tests import reference_sparse_dllm as ref
from tests.layer_plan_cases import decoding_st, prompts_st, run
from tests.reference_harness import zero_mask_row


def sparse(keep_ratio=0.5, kernel_size=3):
    return {"name": "sparse", "keep_ratio": keep_ratio, "kernel_size": kernel_size}


class DelayedDual(DualCache):
    """``dual`` refreshing at a block's first two steps (Sparse-dLLM's schedule, nothing evicted)."""

    def plan(self, state, window):
        m, full = self.memory(state), window.step <= 1
        lo = torch.where(full, 0, self.cached_start(state, window))
        hi = torch.where(full, state.length, window.block_end)
        return row_range_plan(state, window, m.kv, lo, hi, shift=m.shift, refresh=full)


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    return make_llada_checkpoint(tmp_path_factory.mktemp("one") / "llada", n_layers=1, n_kv_heads=2, seed=3)


@settings(max_examples=4, deadline=None)
@given(prompts=prompts_st, decoding=decoding_st)
def test_keeping_everything_is_dual_on_a_one_layer_model(one_layer, prompts, decoding):
    assert run(one_layer, sparse(1.0), prompts, decoding) == run(one_layer, {"name": "dual"}, prompts, decoding)


@settings(max_examples=4, deadline=None)
@given(prompts=prompts_st, decoding=decoding_st, kernel=st.sampled_from([1, 3]))
def test_keeping_everything_is_dual_refreshing_at_the_first_two_steps(tiny_ckpt, prompts, decoding, kernel,
                                                                      monkeypatch):
    monkeypatch.setattr(DualCache, "plan", DelayedDual.plan)
    want = run(tiny_ckpt, {"name": "dual"}, prompts, decoding)
    monkeypatch.undo()
    assert run(tiny_ckpt, sparse(1.0, kernel), prompts, decoding) == want


def test_evicting_half_differs_from_keeping_everything(tiny_ckpt):
    prompts = [[5, 6, 7, 8, 9, 10], [9, 10, 11], [31, 4, 17, 40]]
    assert run(tiny_ckpt, sparse(0.5), prompts) != run(tiny_ckpt, sparse(1.0), prompts)


@settings(max_examples=4, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=2, max_size=3),
       keep=st.sampled_from([0.3, 0.5, 0.8]), decoding=decoding_st)
def test_batch_rows_give_what_they_give_alone(tiny_ckpt, prompts, keep, decoding):
    tokens, nfe = run(tiny_ckpt, sparse(keep), prompts, decoding)  # threshold: rows at different steps share forwards
    for i, p in enumerate(prompts):
        assert run(tiny_ckpt, sparse(keep), [p], decoding) == ([tokens[i]], [nfe[i]])


def test_each_layer_keeps_its_share_of_the_prefix_and_suffix_and_attends_to_them_and_the_block(tiny_ckpt,
                                                                                                 monkeypatch):
    """3-token prompt, blocks of 8 in a 16-token response: block 0 scores the 3 + 8 columns outside it and keeps
    int(11 · 0.5) = 5 per layer, block 1 the 11 columns before it; cached steps see those and their block only."""
    seen = []
    orig = _Policy.step

    def step(self, layer):
        out = orig(self, layer)
        seen.append((layer.layer, out.probe is not None, None if out.keys is None else out.keys[0].tolist()))
        return out

    monkeypatch.setattr(_Policy, "step", step)
    run(tiny_ckpt, sparse(0.5), [[5, 6, 7]])
    probes = [s for s in seen if s[1]]
    cached = [s for s in seen if s[2] is not None]
    assert len(probes) == 2 * 2 and len(cached) == 2 * 2 * 6  # 2 blocks · 2 layers; 6 cached steps a block
    for n, (_, _, keys) in enumerate(cached):
        block = slice(3, 11) if n < 12 else slice(11, 19)
        assert all(keys[block]) and sum(keys) == 8 + 5


def test_the_contract_kit_passes():
    check_component("cache", "sparse", {"keep_ratio": 0.5})


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def masked_ckpt(request, tmp_path_factory):
    """2 layers, d 32, 4 heads, the MASK row of the output head zeroed (the authors' loop commits a MASK argmax)."""
    ckpt = make_llada_checkpoint(tmp_path_factory.mktemp("sp") / "llada", n_kv_heads=request.param, seed=1)
    return zero_mask_row(ckpt)


GRID = [((0.5, 3), (16, 8, 16)), ((0.3, 3), (24, 8, 24)), ((0.7, None), (16, 4, 8)), ((0.5, 3), (24, 12, 12))]


@pytest.mark.skipif(ref.source() is None, reason="needs a checkout of OpenMOSS/Sparse-dLLM in DLM_SPARSE_DLLM_SRC "
                    "(tests/reference_sparse_dllm.py)")
def test_the_authors_code_gives_the_same_tokens_and_nfe(masked_ckpt):
    mask_id, differ = json.loads((masked_ckpt / "config.json").read_text())["mask_token_id"], 0
    for (keep, kernel), (gen, block, steps) in GRID:
        generate, model = ref.load(masked_ckpt, block_length=block, keep_ratio=keep, kernel_size=kernel)
        iteration = {"name": "blockwise", "gen_length": gen, "block_length": block, "steps": steps}
        for prompt in ([51, 59, 29], [35, 34, 28, 9, 77, 40, 12]):
            want = ref.reference_generate(generate, model, prompt, steps=steps, gen_length=gen, block_length=block,
                                          mask_id=mask_id)
            got = run(masked_ckpt, sparse(keep, kernel or 1), [prompt], iteration=iteration)
            assert got == ([want[0]], [want[1]]), (keep, kernel, gen, block, steps, prompt)
            differ += got[0] != run(masked_ckpt, sparse(1.0), [prompt], iteration=iteration)[0]
    assert differ > 0  # the grid exercises the eviction, not only cases where it changes nothing
