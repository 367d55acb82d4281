"""The interface extensions, each proven with the small component in tests/interface_components.py that
uses it: per-row strategy memory, the window's geometry, wide logits and finishing rows, per-row column
plans, candidate steps and provisional tokens. The contract kit passes each component and catches the
deliberately broken ones."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.cache import NoCache
from dlm.candidates import forward_candidates
from dlm.errors import DecodingError
from dlm.messages import Candidates, Commit, ForwardPlan
from dlm.pipeline import Pipeline
from dlm.state import GenerationState
from dlm.testing.contracts import ContractViolation, check_cache_manager, check_decoding_strategy, run_check
from tests.conftest import pipeline_config
from tests.interface_components import (
    AgreeTwice,
    BlockOnly,
    ColumnsMissingTheWindow,
    DraftAll,
    ExitWhenConfident,
    FirstCandidate,
    LeakyAgreeTwice,
    RecomputePending,
    SharedAgreeTwice,
)

prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=1, max_size=3)


def build(ckpt, *, strategy=None, cache_manager=None, **sections) -> Pipeline:
    """A pipeline from the shared float64 config, with component objects swapped in."""
    pipe = Pipeline.from_config(pipeline_config(ckpt, **sections))
    if strategy is not None:
        pipe.decoding = strategy
    if cache_manager is not None:
        pipe.cache = cache_manager
    return pipe


def run(pipe: Pipeline, prompts, trace=None):
    out = pipe.generate(input_ids=prompts, trace=trace)
    return [g.tolist() for g in out.generated], out.nfe


# --- 1. per-generation strategy memory ---------------------------------------------------------------


def test_a_strategy_with_per_row_memory_keeps_every_contract():
    check_decoding_strategy(AgreeTwice, {})


def test_the_kit_catches_memory_that_outlives_its_generation():
    outcome = run_check("decoding", LeakyAgreeTwice, "memory", {})
    assert outcome.status == "failed" and "a generation after another one" in outcome.detail


def test_the_kit_catches_memory_shared_between_rows():
    outcome = run_check("decoding", SharedAgreeTwice, "batched", {})
    assert outcome.status == "failed" and "alone" in outcome.detail


def test_memory_resets_at_each_block(tiny_ckpt):
    """AgreeTwice commits only the most confident position at a block's first step: nothing is stable yet."""
    pipe = build(tiny_ckpt, strategy=AgreeTwice(AgreeTwice.Config()),
                 iteration={"gen_length": 16, "block_length": 8, "steps": 16})
    steps = []
    pipe.generate(input_ids=[[5, 6, 7]], trace=lambda s: steps.append((s.last_window.first_step,
                                                                        int(s.tokens_per_step[-1][0]))))
    firsts = [n for first, n in steps if first]
    assert len(firsts) == 2 and firsts == [1, 1]
    assert any(n > 1 for first, n in steps if not first)  # stability does commit several later


# --- 2. the window carries the geometry ---------------------------------------------------------------


def test_generation_state_holds_no_iteration_progress_fields():
    fields = {f.name for f in dataclasses.fields(GenerationState)}
    assert not fields & {"block_start", "block_end", "step", "tick", "schedule"}


def test_blockwise_windows_name_their_block(tiny_ckpt):
    pipe = build(tiny_ckpt, iteration={"gen_length": 12, "block_length": 4, "steps": 6})
    seen = []
    pipe.generate(input_ids=[[5, 6], [7, 8, 9]], trace=lambda s: seen.append(s.last_window))
    gen_start = 3
    for w in seen:
        assert (w.block_start, w.block_end) == (gen_start + 4 * w.block, gen_start + 4 * w.block + 4)
        assert (w.start, w.end) == (w.block_start, w.block_end)
    assert [w.block for w in seen] == sorted(w.block for w in seen) and seen[-1].block == 2
    assert [w.step for w in seen if w.block == 1] == [0, 1]


# --- 3. logits beyond the window, finishing rows ---------------------------------------------------------


@settings(max_examples=8)
@given(prompts=prompts_st, cache=st.sampled_from(["none", "prefix", "dual"]))
def test_an_exit_that_never_fires_changes_nothing(tiny_ckpt, prompts, cache):
    base = build(tiny_ckpt, cache={"name": cache})
    wide = build(tiny_ckpt, cache={"name": cache}, strategy=ExitWhenConfident(ExitWhenConfident.Config(confidence=2.0)))
    assert run(wide, prompts) == run(base, prompts)


def test_an_exit_that_fires_at_once_finishes_rows_with_the_first_forwards_proposals(tiny_ckpt):
    prompts = [[5, 6, 7], [8, 9]]
    pipe = build(tiny_ckpt, strategy=ExitWhenConfident(ExitWhenConfident.Config(confidence=0.0)))
    out = pipe.generate(input_ids=prompts)
    assert out.nfe == [1, 1] and all(sum(s) == 16 for s in out.tokens_per_step)
    state = build(tiny_ckpt).iteration.start([torch.tensor(p) for p in prompts], pipe.model.capabilities, pipe.model.device)
    cols = torch.arange(state.length)[None, :]
    logits = pipe.model.net(state.canvas, (cols - state.pad[:, None]).clamp(min=0),
                            (cols >= state.pad[:, None])[:, None, None, :])[:, state.gen_start :]
    logits[..., state.mask_id] = -torch.inf
    assert torch.equal(torch.stack(out.generated), logits.argmax(dim=-1))


def test_a_finish_without_the_whole_region_in_the_span_is_refused(tiny_ckpt):
    pipe = build(tiny_ckpt)
    state = pipe.iteration.start([torch.tensor([5, 6])], pipe.model.capabilities, pipe.model.device)
    window = pipe.iteration.window(state)
    commit = Commit(window.eligible & False, torch.full_like(window.eligible, 7, dtype=torch.long),
                    finish=torch.tensor([True]), fill=torch.full((1, window.width), 7))
    with pytest.raises(DecodingError, match="outside its logits span"):
        state.commit(window, commit)


# --- 4. per-row column sets in the forward plan -----------------------------------------------------------


@settings(max_examples=8)
@given(prompts=prompts_st)
def test_recomputing_pending_columns_is_exact_on_a_one_layer_model(one_layer_ckpt, prompts):
    exact = build(one_layer_ckpt)
    columns = build(one_layer_ckpt, cache_manager=RecomputePending(RecomputePending.Config()))
    assert run(columns, prompts)[0] == run(exact, prompts)[0]


def test_a_column_set_plan_keeps_the_cache_contract():
    check_cache_manager(RecomputePending, {})


def test_a_column_set_equal_to_a_range_gives_the_range_plans_logits_and_writes(tiny_ckpt):
    pipe = build(tiny_ckpt)
    state = pipe.iteration.start([torch.tensor([5, 6, 7]), torch.tensor([8])], pipe.model.capabilities,
                                 pipe.model.device)
    window = pipe.iteration.window(state)
    rows = window.rows
    results = []
    for columns in (None, torch.arange(window.start, state.length).expand(len(rows), -1)):
        kv = pipe.model.new_kv(state.batch_size, state.length)
        plan = ForwardPlan(rows=rows, all_rows=True, start=window.start, end=state.length, kv=kv,
                           key_end=state.length, refresh=False, columns=columns)
        results.append((pipe.model.forward(state, plan, window), kv.keys.clone()))
    (a, ka), (b, kb) = results
    assert torch.allclose(a, b, rtol=0, atol=1e-12) and torch.allclose(ka, kb, rtol=0, atol=1e-12)


# --- 5. candidate steps --------------------------------------------------------------------------------


@settings(max_examples=6)
@given(prompts=prompts_st, cache=st.sampled_from(["none", "prefix", "dual"]))
def test_keeping_the_unchanged_candidate_is_the_plain_generation(tiny_ckpt, prompts, cache):
    base = build(tiny_ckpt, cache={"name": cache})
    cands = build(tiny_ckpt, cache={"name": cache}, strategy=FirstCandidate(FirstCandidate.Config()))
    assert run(cands, prompts) == run(base, prompts)


def test_each_candidate_gets_the_logits_of_its_own_canvas(tiny_ckpt):
    pipe = build(tiny_ckpt)
    state = pipe.iteration.start([torch.tensor([5, 6, 7]), torch.tensor([8])], pipe.model.capabilities,
                                 pipe.model.device)
    window = FirstCandidate(FirstCandidate.Config(token=9)).prepare(state, pipe.iteration.window(state))
    plan = NoCache(NoCache.Config()).plan(state, window)
    logits = forward_candidates(pipe.model, state, plan, window).logits  # [b, 2, W, V]
    for k in range(2):
        alone = dataclasses.replace(state, canvas=state.canvas.clone())
        region = alone.canvas[:, window.start : window.end]
        alone.canvas[:, window.start : window.end] = torch.where(window.candidates.select[:, k],
                                                                 window.candidates.tokens[:, k], region)
        plain = pipe.model.forward(alone, plan, dataclasses.replace(window, candidates=None))
        assert torch.allclose(logits[:, k], plain, rtol=0, atol=1e-12)


def test_a_candidate_strategy_keeps_its_contract():
    check_decoding_strategy(FirstCandidate, {})


def test_a_candidate_step_under_a_cache_must_name_the_kept_candidate(tiny_ckpt):
    pipe = build(tiny_ckpt, cache={"name": "dual"}, strategy=FirstCandidate(FirstCandidate.Config(keep=False)))
    with pytest.raises(DecodingError, match="Commit.keep"):
        pipe.generate(input_ids=[[5, 6]])


def test_candidates_shape_is_the_windows(tiny_ckpt):
    c = Candidates(torch.zeros(2, 3, 4, dtype=torch.bool), torch.zeros(2, 3, 4, dtype=torch.long))
    assert c.count == 3


# --- 6. provisional tokens ----------------------------------------------------------------------------


def test_drafts_are_revisable_and_committed_tokens_never_change(tiny_ckpt):
    pipe = build(tiny_ckpt, strategy=DraftAll(DraftAll.Config()))
    history = []

    def trace(state):
        final = ~state.pending()
        history.append((state.canvas.clone(), final.clone(), state.provisional.clone()))

    out = pipe.generate(input_ids=[[5, 6, 7], [8, 9]], trace=trace)
    for (c0, f0, _), (c1, _, _) in zip(history, history[1:]):
        assert torch.equal(c1[f0], c0[f0])  # what was final stays
    assert all(sum(s) == 16 for s in out.tokens_per_step) and out.nfe == [16, 16]
    assert bool(history[0][2].any())  # the first step left drafts
    assert not bool(history[-1][2].any())  # the last one committed them all
    assert all(not bool((g == pipe.model.capabilities.mask_id).any()) for g in out.generated)


def test_a_draft_of_the_mask_token_is_refused(tiny_ckpt):
    pipe = build(tiny_ckpt)
    state = pipe.iteration.start([torch.tensor([5, 6])], pipe.model.capabilities, pipe.model.device)
    window = pipe.iteration.window(state)
    select = torch.zeros_like(window.eligible)
    select[0, 0] = True
    tokens = torch.full_like(window.eligible, state.mask_id, dtype=torch.long)
    tokens[0, 0] = 7
    with pytest.raises(DecodingError, match="MASK"):
        state.commit(window, Commit(select, tokens, drafts=window.eligible & ~select))


def test_the_kit_rejects_a_broken_component_with_a_violation():
    with pytest.raises(ContractViolation):
        check_decoding_strategy(LeakyAgreeTwice, {})


def test_the_kit_catches_a_cache_that_ignores_a_widened_logits_span():
    outcome = run_check("cache", BlockOnly, "plans", {})
    assert outcome.status == "failed" and "logits span" in outcome.detail


def test_the_kit_catches_column_sets_that_miss_the_window():
    outcome = run_check("cache", ColumnsMissingTheWindow, "plans", {})
    assert outcome.status == "failed" and "column sets miss" in outcome.detail
