"""Jacobi decoding: the acceptance rule, exactness (greedy Jacobi = greedy autoregressive, in at most as many
forwards), the append cache keeping accepted drafts' K/V, and Jacobi Forcing's multi-block drafting and
rejection recycling (same greedy output and NFE bound, pseudo-active blocks, recycled drafts kept)."""

from __future__ import annotations

from collections import deque

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dlm.decoding.jacobi import JacobiDecoding
from dlm.decoding.recycling import RecyclingPools
from dlm.iteration.base import left_padded_canvas
from dlm.iteration.jacobi import Jacobi
from dlm.iteration.sliding import SlidingProgress
from dlm.messages import Candidates, Drafts, Geometry, Keep, Window
from dlm.rng import RowRNG
from dlm.tools.qwen2_checkpoints import make_qwen2_checkpoint
from tests.test_causal import load, pipeline, record_plans

prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def ar_ckpt(tmp_path_factory):
    return make_qwen2_checkpoint(tmp_path_factory.mktemp("jac") / "ckpt", mask_token_id=None, extra_vocab=3, seed=41)


@pytest.fixture(scope="module")
def peaked_ckpt(tmp_path_factory):
    """One layer with its attention output zeroed: each prediction depends on the current token only (a
    bigram model), whose greedy chain falls into a fixed point that wrong drafts also reach, so Jacobi accepts
    several drafts per forward (its speed-up)."""
    path = make_qwen2_checkpoint(tmp_path_factory.mktemp("jac1") / "ckpt", mask_token_id=None, extra_vocab=3,
                                 num_hidden_layers=1, seed=42)
    tensors = load_file(path / "model.safetensors")
    tensors = {k: torch.zeros_like(v) if "o_proj" in k else v for k, v in tensors.items()}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


def test_the_longest_matching_draft_prefix_plus_one_is_committed_and_the_rest_redrafted(ar_ckpt):
    model = load(ar_ckpt)
    state = left_padded_canvas([torch.tensor([5, 6])], 5, model.capabilities, torch.device("cpu"))
    state.canvas[0, 2:6] = torch.tensor([10, 11, 12, 13])  # drafts; column 6 still MASK
    window = Window(torch.arange(1), 2, 7, torch.ones(1, 5, dtype=torch.bool), torch.ones(1, dtype=torch.long),
                    model.capabilities.mask_id, Geometry.uniform(1, block_start=2, block_end=7))
    greedy = torch.tensor([10, 11, 20, 21, 22])  # matches 2 drafts, then differs
    logits = torch.full((1, 5, model.net.spec.vocab_out), -10.0, dtype=torch.float64)
    logits[0, torch.arange(5), greedy] = 10.0
    strategy = JacobiDecoding(JacobiDecoding.Config())
    state.memory["decoding"] = strategy.start(state)
    window = strategy.prepare(state, window)
    commit = strategy.select(state, window, logits, RowRNG(0, 1, torch.device("cpu")))
    assert commit.select[0].tolist() == [True, True, True, False, False]
    assert commit.get(Drafts).mask[0].tolist() == [False, False, False, True, True]
    assert commit.tokens[0].tolist() == greedy.tolist()


def run(path, iteration, decoding, prompts, cache):
    out = pipeline(path, iteration, decoding, cache=cache).generate(input_ids=prompts)
    return [g.tolist() for g in out.generated], out.nfe


@settings(max_examples=12)
@given(prompts=prompts_st, n=st.integers(1, 6), cache=st.sampled_from(["none", "append"]),
       early_stop=st.booleans(), peaked=st.booleans())
def test_greedy_jacobi_is_greedy_autoregressive_in_no_more_forwards(ar_ckpt, peaked_ckpt, prompts, n, cache,
                                                                   early_stop, peaked):
    path = peaked_ckpt if peaked else ar_ckpt
    ar, ar_nfe = run(path, {"name": "autoregressive", "gen_length": 12, "early_stop": early_stop},
                     {"name": "low_confidence"}, prompts, cache)
    jac, jac_nfe = run(path, {"name": "jacobi", "gen_length": 12, "n": n, "early_stop": early_stop},
                       {"name": "jacobi"}, prompts, cache)
    assert jac == ar
    assert all(j <= a for j, a in zip(jac_nfe, ar_nfe))


def test_jacobi_accepts_several_tokens_per_forward_on_a_predictable_model(peaked_ckpt):
    _, ar_nfe = run(peaked_ckpt, {"name": "autoregressive", "gen_length": 16, "early_stop": False},
                    {"name": "low_confidence"}, [[5, 6, 7]], "append")
    _, jac_nfe = run(peaked_ckpt, {"name": "jacobi", "gen_length": 16, "n": 8, "early_stop": False},
                     {"name": "jacobi"}, [[5, 6, 7]], "append")
    assert jac_nfe[0] < 12 and ar_nfe[0] == 16


def test_the_append_cache_computes_only_the_correction_and_the_draft(peaked_ckpt):
    """After the prompt, a forward computes at most the last committed column and the n drafts: accepted drafts
    keep the K/V computed when they were verified."""
    n = 4
    pipe = pipeline(peaked_ckpt, {"name": "jacobi", "gen_length": 16, "n": n, "early_stop": False}, {"name": "jacobi"})
    plans = record_plans(pipe)
    pipe.generate(input_ids=[[5, 6, 7]])
    assert (plans[0].start, plans[0].end) == (0, 3 + n)
    assert all(p.end - p.start <= n + 1 for p in plans[1:])
    # a forward ends at the window's first pending column + n; when the next one starts past that column, the
    # drafts accepted there kept their K/V
    assert any(p.start > q.end - n for q, p in zip(plans, plans[1:]))


@settings(max_examples=12)
@given(prompts=prompts_st, n=st.integers(1, 6), blocks=st.integers(1, 3), r=st.sampled_from([0.25, 0.5, 0.85, 1.0]),
       pool_size=st.sampled_from([0, 2, 4]), cache=st.sampled_from(["none", "append"]), early_stop=st.booleans(),
       peaked=st.booleans())
def test_multiblock_recycling_jacobi_is_greedy_autoregressive_in_no_more_forwards(
        ar_ckpt, peaked_ckpt, prompts, n, blocks, r, pool_size, cache, early_stop, peaked):
    path = peaked_ckpt if peaked else ar_ckpt
    ar, ar_nfe = run(path, {"name": "autoregressive", "gen_length": 12, "early_stop": early_stop},
                     {"name": "low_confidence"}, prompts, cache)
    jac, jac_nfe = run(path, {"name": "jacobi", "gen_length": 12, "n": n, "blocks": blocks, "r": r,
                              "early_stop": early_stop}, {"name": "jacobi", "pool_size": pool_size}, prompts, cache)
    assert jac == ar
    assert all(j <= a for j, a in zip(jac_nfe, ar_nfe))


def test_the_window_covers_the_next_blocks_once_r_of_the_current_block_is_committed(ar_ckpt):
    model = load(ar_ckpt)
    manager = Jacobi(Jacobi.Config(gen_length=16, n=4, blocks=2, r=0.5))
    state = left_padded_canvas([torch.tensor([5, 6])], 16, model.capabilities, torch.device("cpu"))
    state.progress = SlidingProgress.fresh(1)
    assert (manager.window(state).start, manager.window(state).end) == (2, 7)  # block 0 + 1 column
    state.canvas[0, 2:3] = 9  # one token of block 0 committed: 1 < ceil(0.5 * 4)
    assert (manager.window(state).start, manager.window(state).end) == (3, 7)
    state.canvas[0, 3:4] = 9  # two committed: block 1 is drafted too
    assert (manager.window(state).start, manager.window(state).end) == (4, 11)


def test_a_pool_ngram_continuing_the_last_committed_token_becomes_a_candidate_draft(ar_ckpt):
    model = load(ar_ckpt)
    state = left_padded_canvas([torch.tensor([5, 6])], 6, model.capabilities, torch.device("cpu"))
    state.canvas[0, 2:5] = torch.tensor([30, 31, 32])  # the regular draft
    pools = RecyclingPools.fresh(1, 4)
    pools.pools[0] = deque([[7, 6, 40, 41], [50]], maxlen=4)  # the newest n-gram ([50]) is never recycled
    window = Window(torch.arange(1), 2, 5, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, dtype=torch.long),
                    model.capabilities.mask_id, Geometry.uniform(1, block_start=2, block_end=5))
    cand = pools.attach(state, window).get(Candidates)
    assert cand.count == 2
    assert cand.select[0, 0].tolist() == [False, False, False]
    assert cand.select[0, 1].tolist() == [True, True, False]
    assert cand.tokens[0, 1].tolist() == [40, 41, 32]  # what followed 6, then the regular draft


def test_recycling_keeps_a_recycled_draft_and_saves_forwards_on_a_repetitive_model(peaked_ckpt):
    """The bigram model's greedy chain cycles, so earlier text predicts the draft: recycled candidates are
    kept, and the run takes fewer forwards than without the pool, with the same tokens."""
    def go(pool_size):
        pipe = pipeline(peaked_ckpt, {"name": "jacobi", "gen_length": 32, "n": 4, "early_stop": False},
                        {"name": "jacobi", "pool_size": pool_size})
        kept, select = [], pipe.decoding.select

        def recording(state, window, logits, generator):
            commit = select(state, window, logits, generator)
            keep = commit.get(Keep)
            kept.append(0 if keep is None else int(keep.index.max()))
            return commit

        pipe.decoding.select = recording
        out = pipe.generate(input_ids=[[5, 6, 7]])
        return out.generated[0].tolist(), int(out.nfe[0]), kept

    plain, plain_nfe, _ = go(0)
    recycled, recycled_nfe, kept = go(4)
    assert recycled == plain
    assert any(k > 0 for k in kept)
    assert recycled_nfe < plain_nfe
