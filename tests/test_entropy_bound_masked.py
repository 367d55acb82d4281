"""entropy_bound on a masked model (LLaDA layout): an entropy-bound acceptance among the masked positions, a valid
composition; rows of a left-padded batch give what they give alone, and every step commits at least one eligible
position and nothing else."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from dlm.decoding.entropy_bound import EntropyBound, EntropyBoundConfig
from dlm.errors import CompositionError
from dlm.messages import Geometry, Window
from dlm.pipeline import Pipeline
from dlm.rng import RowRNG
from dlm.state import GenerationState

PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19]]  # left-padded: lengths differ


def pipeline(ckpt, seed=0, **decoding):
    return Pipeline.from_config({
        "model": {"name": "llada", "path": str(ckpt)},
        "iteration": {"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 16},
        "decoding": {"name": "entropy_bound", **decoding}, "cache": {"name": "none"},
        "seed": seed, "dtype": "float64", "device": "cpu"})


@pytest.mark.parametrize("decoding", [{}, {"entropy_bound": 1.5, "t_min": 0.2, "t_max": 1.0}])
def test_rows_of_a_left_padded_batch_give_what_they_give_alone(tiny_ckpt, decoding):
    # rows commit at different rates, so a batch's window spans two blocks when one row moved on: each row must
    # draw at its own eligible positions only (the bug that kept masked models refused)
    batch = pipeline(tiny_ckpt, 0, **decoding).generate(input_ids=PROMPTS)
    for r, prompt in enumerate(PROMPTS):
        alone = pipeline(tiny_ckpt, r, **decoding).generate(input_ids=[prompt])
        assert batch.generated[r].tolist() == alone.generated[0].tolist(), r
        assert batch.nfe[r] == alone.nfe[0]
    assert len({tuple(s) for s in batch.tokens_per_step}) > 1  # the rows did move at different paces


def test_every_step_commits_at_least_one_eligible_position_and_nothing_else(tiny_ckpt):
    pipe = pipeline(tiny_ckpt, 3, entropy_bound=0.5)
    before = {}

    def trace(state: GenerationState) -> None:
        w = state.last_window
        now = state.canvas.clone()
        if before:
            changed = (now != before["canvas"])[w.rows, w.start:w.end]
            assert changed.sum(dim=1).min() >= 1  # every window row commits
            assert not (changed & ~w.eligible).any()  # only eligible positions
            outside = (now != before["canvas"]).clone()
            outside[w.rows, w.start:w.end] = False
            assert not outside.any()
        before["canvas"] = now

    state = pipe.start(input_ids=PROMPTS)
    before["canvas"] = state.canvas.clone()
    steps = 0
    while not pipe.done(state):
        pipe.step(state)
        trace(state)
        steps += 1
    assert steps < 32 and not (state.canvas == state.mask_id).any()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 4), w=st.integers(1, 9), bound=st.floats(0.01, 5.0),
       scale=st.floats(0.0, 20.0), step=st.integers(0, 60))
def test_the_acceptance_commits_at_least_one_eligible_position_never_mask(seed, b, w, bound, scale, step):
    g = torch.Generator().manual_seed(seed)
    vocab, mask = 12, 2
    logits = torch.randn(b, w, vocab, generator=g, dtype=torch.float64) * scale
    eligible = torch.rand(b, w, generator=g) < 0.5
    eligible[0, 0] = True
    canvas = torch.full((b, w + 1), 5)
    canvas[:, 1:] = torch.where(eligible, mask, 5)
    zeros = torch.zeros(b, dtype=torch.long)
    state = GenerationState(canvas=canvas, pad=zeros, prompt_lengths=zeros + 1, gen_start=1, gen_length=w,
                            mask_id=mask, eos_ids=(0,), nfe=zeros.clone(), done=torch.zeros(b, dtype=torch.bool))
    window = Window(rows=torch.arange(b), start=1, end=w + 1, eligible=eligible, quota=torch.ones(b, dtype=torch.long),
                    mask_id=mask, geometry=Geometry.uniform(b, step=step, block=0, block_start=1, block_end=w + 1,
                                                            total_steps=16))
    strategy = EntropyBound(EntropyBoundConfig(entropy_bound=bound))
    state.memory["decoding"] = strategy.start(state)
    commit = strategy.select(state, window, logits, RowRNG(seed, b, "cpu"))
    assert not (commit.select & ~eligible).any()
    assert (commit.select.sum(dim=1) >= eligible.any(dim=1).long()).all()
    assert not (commit.tokens[commit.select] == mask).any()
    state.commit(window, commit)  # the state's own checks agree


def test_the_adaptive_stop_is_refused_on_a_masked_model_naming_it(tiny_ckpt):
    with pytest.raises(CompositionError, match="stability_threshold, confidence_threshold"):
        pipeline(tiny_ckpt, 0, stability_threshold=2)


def test_the_canvases_iteration_is_refused_on_a_masked_model_naming_both(tiny_ckpt):
    with pytest.raises(CompositionError, match="iteration 'canvases' cannot be used with model"):
        Pipeline.from_config({"model": {"name": "llada", "path": str(tiny_ckpt)},
                              "iteration": {"name": "canvases", "gen_length": 16, "canvas_length": 8},
                              "decoding": {"name": "entropy_bound"}, "cache": {"name": "none"}, "device": "cpu"})
