"""The interface extensions of plugin API 2.0, each proven with the small component in
tests/interface_components.py that uses it: per-row strategy memory kept on the state, per-row window
geometry, wide logits and finishing rows, per-row column plans, candidate steps planned by the cache and
provisional tokens. The contract kit passes each component and catches the deliberately broken ones; a 1.x
strategy still runs (with a DeprecationWarning) and the moved names still import."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dlm.messages
from dlm.cache import NoCache
from dlm.decoding import DecodingStrategy, propose, top_k_select
from dlm.decoding.low_confidence import LowConfidence
from dlm.errors import DecodingError
from dlm.messages import Candidates, Commit, Drafts, Finish, ForwardPlan
from dlm.pipeline import Pipeline
from dlm.state import GenerationState
from dlm.testing.contracts import ContractViolation, check_cache_manager, check_decoding_strategy, run_check
from dlm.testing.joins import alone_outputs, joined_outputs
from tests.conftest import pipeline_config
from tests.interface_components import (
    AgreeMemory,
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


def whole_plan(state: GenerationState, window, **fields) -> ForwardPlan:
    plan = ForwardPlan(rows=window.rows, all_rows=len(window.rows) == state.batch_size, start=0, end=state.length,
                       kv=None, key_end=state.length, refresh=False)
    return dataclasses.replace(plan, **fields).for_window(window)


# --- 1. per-row strategy memory, on the state ---------------------------------------------------------


def test_a_strategy_with_per_row_memory_keeps_every_contract():
    report = check_decoding_strategy(AgreeTwice, {})
    assert {o.check: o.status for o in report.outcomes}["joins"] == "passed"


def test_the_memory_is_on_the_state_and_the_strategy_holds_only_its_config(tiny_ckpt):
    strategy = AgreeTwice(AgreeTwice.Config())
    pipe = build(tiny_ckpt, strategy=strategy)
    state = pipe.start(input_ids=[[5, 6, 7], [8, 9]])
    assert isinstance(state.memory["decoding"], AgreeMemory) and vars(strategy) == {"config": strategy.config}
    pipe.run(state)
    assert vars(strategy) == {"config": strategy.config}
    kept = state.take([1])  # a row leaving keeps its own memory row
    assert torch.equal(kept.memory["decoding"].previous, state.memory["decoding"].previous[1:])


def test_the_kit_catches_memory_that_outlives_its_generation():
    outcome = run_check("decoding", LeakyAgreeTwice, "memory", {})
    assert outcome.status == "failed" and "memory belongs on the state" in outcome.detail


def test_the_kit_catches_memory_shared_between_rows():
    outcome = run_check("decoding", SharedAgreeTwice, "batched", {})
    assert outcome.status == "failed" and "alone" in outcome.detail


def test_memory_resets_at_each_block(tiny_ckpt):
    """AgreeTwice commits only the most confident position at a block's first step: nothing is stable yet."""
    pipe = build(tiny_ckpt, strategy=AgreeTwice(AgreeTwice.Config()),
                 iteration={"gen_length": 16, "block_length": 8, "steps": 16})
    steps = []
    pipe.generate(input_ids=[[5, 6, 7]], trace=lambda s: steps.append((bool(s.last_window.first_step.all()),
                                                                        int(s.last_commits[0]))))
    firsts = [n for first, n in steps if first]
    assert len(firsts) == 2 and firsts == [1, 1]
    assert any(n > 1 for first, n in steps if not first)  # stability does commit several later


def test_rows_joining_with_memory_give_what_they_give_alone(tiny_ckpt):
    pipe = build(tiny_ckpt, strategy=AgreeTwice(AgreeTwice.Config()))
    ids, seeds = [[5, 6, 7], [8, 9], [10, 11, 12, 13]], [0, 1, 2]
    assert joined_outputs(pipe, ids, seeds, [0, 3, 9]) == alone_outputs(pipe, ids, seeds)


# --- 2. the window carries each row's geometry ------------------------------------------------------------


def test_generation_state_holds_no_iteration_progress_fields():
    fields = {f.name for f in dataclasses.fields(GenerationState)}
    assert not fields & {"block_start", "block_end", "step", "tick", "schedule"}


def test_blockwise_windows_name_each_rows_block(tiny_ckpt):
    pipe = build(tiny_ckpt, iteration={"gen_length": 12, "block_length": 4, "steps": 6})
    seen = []
    pipe.generate(input_ids=[[5, 6], [7, 8, 9]], trace=lambda s: seen.append(s.last_window))
    gen_start = 3
    for w in seen:
        b = len(w.rows)
        for name in ("step", "block", "block_start", "block_end", "first_step"):
            value = getattr(w, name)
            assert value.shape == (b,) and value.device.type == "cpu", name
        assert torch.equal(w.block_start, gen_start + 4 * w.block) and torch.equal(w.block_end, w.block_start + 4)
        assert (w.start, w.end) == (int(w.block_start.min()), int(w.block_end.max()))
    blocks = [int(w.block.max()) for w in seen]
    assert blocks == sorted(blocks) and blocks[-1] == 2
    assert [w.step.tolist() for w in seen if int(w.block[0]) == 1] == [[0, 0], [1, 1]]


def test_rows_of_one_step_may_be_at_different_blocks_and_steps(tiny_ckpt):
    pipe = build(tiny_ckpt, iteration={"gen_length": 16, "block_length": 4, "steps": 8})
    early = pipe.start(input_ids=[[5, 6, 7]], gen_start=4)
    for _ in range(3):
        pipe.step(early)
    state = early.cat(pipe.start(input_ids=[[8, 9]], gen_start=4))
    pipe.step(state)
    w = state.last_window
    assert w.rows.tolist() == [0, 1] and w.block.tolist() == [1, 0] and w.step.tolist() == [1, 0]
    assert w.first_step.tolist() == [False, True]
    assert w.block_start.tolist() == [8, 4] and (w.start, w.end) == (4, 12)
    assert not bool(w.eligible[0, :4].any()) and not bool(w.eligible[1, 4:].any())  # each row in its own block


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
    state = build(tiny_ckpt).start(input_ids=prompts)
    window = pipe.iteration.window(state)
    logits = pipe.model.forward(state, whole_plan(state, window, logits_start=state.gen_start,
                                                  logits_end=state.length)).clone()
    logits[..., state.mask_id] = -torch.inf
    assert torch.equal(torch.stack(out.generated), logits.argmax(dim=-1))


def test_a_finish_without_the_whole_region_in_the_span_is_refused(tiny_ckpt):
    pipe = build(tiny_ckpt)
    state = pipe.start(input_ids=[[5, 6]])
    window = pipe.iteration.window(state)
    commit = Commit(window.eligible & False, torch.full_like(window.eligible, 7, dtype=torch.long),
                    Finish(torch.tensor([True]), torch.full((1, window.width), 7)))
    with pytest.raises(DecodingError, match="outside its logits span"):
        state.commit(window, commit)


def test_an_exit_keeps_every_contract_and_joins():
    report = check_decoding_strategy(ExitWhenConfident, {"confidence": 0.9})
    assert {o.check: o.status for o in report.outcomes}["joins"] == "passed"


# --- 4. per-row column sets in the forward plan -----------------------------------------------------------


@settings(max_examples=8)
@given(prompts=prompts_st)
def test_recomputing_pending_columns_is_exact_on_a_one_layer_model(one_layer_ckpt, prompts):
    exact = build(one_layer_ckpt)
    columns = build(one_layer_ckpt, cache_manager=RecomputePending(RecomputePending.Config()))
    assert run(columns, prompts)[0] == run(exact, prompts)[0]


def test_a_column_set_plan_keeps_the_cache_contract():
    report = check_cache_manager(RecomputePending, {})
    joins = {o.check: o for o in report.outcomes}["joins"]
    assert joins.status == "skipped" and "joinable = False" in joins.detail  # it says why in its docstring


def test_a_column_set_equal_to_a_range_gives_the_range_plans_logits_and_writes(tiny_ckpt):
    pipe = build(tiny_ckpt)
    state = pipe.start(input_ids=[[5, 6, 7], [8]])
    window = pipe.iteration.window(state)
    rows = window.rows
    results = []
    for columns in (None, torch.arange(window.start, state.length).expand(len(rows), -1)):
        kv = pipe.model.new_kv(state.batch_size, state.length)
        plan = ForwardPlan(rows=rows, all_rows=True, start=window.start, end=state.length, kv=kv,
                           key_end=state.length, refresh=False, columns=columns).for_window(window)
        results.append((pipe.model.forward(state, plan), kv.keys.clone()))
    (a, ka), (b, kb) = results
    assert torch.allclose(a, b, rtol=0, atol=1e-12) and torch.allclose(ka, kb, rtol=0, atol=1e-12)


# --- 5. candidate steps, planned by the cache ------------------------------------------------------------


@settings(max_examples=6)
@given(prompts=prompts_st, cache=st.sampled_from(["none", "prefix", "dual"]))
def test_keeping_the_unchanged_candidate_is_the_plain_generation(tiny_ckpt, prompts, cache):
    base = build(tiny_ckpt, cache={"name": cache})
    cands = build(tiny_ckpt, cache={"name": cache}, strategy=FirstCandidate(FirstCandidate.Config()))
    assert run(cands, prompts) == run(base, prompts)


def test_each_candidate_gets_the_logits_of_its_own_canvas(tiny_ckpt):
    pipe = build(tiny_ckpt)
    state = pipe.start(input_ids=[[5, 6, 7], [8]])
    window = FirstCandidate(FirstCandidate.Config(token=9)).prepare(state, pipe.iteration.window(state))
    cache = NoCache(NoCache.Config())
    plan = cache.plan(state, window).for_window(window)
    logits = pipe.model.forward(state, cache.plan_candidates(state, plan, window))  # [b, 2, W, V]
    cand = window.get(Candidates)
    assert logits.shape[:3] == (2, 2, window.width)
    for k in range(2):
        alone = dataclasses.replace(state, canvas=state.canvas.clone())
        region = alone.canvas[:, window.start : window.end]
        alone.canvas[:, window.start : window.end] = torch.where(cand.select[:, k], cand.tokens[:, k], region)
        plain = pipe.model.forward(alone, plan)
        assert torch.allclose(logits[:, k], plain, rtol=0, atol=1e-12)


def test_a_candidate_strategy_keeps_its_contract():
    check_decoding_strategy(FirstCandidate, {})


def test_a_candidate_step_under_a_cache_must_name_the_kept_candidate(tiny_ckpt):
    pipe = build(tiny_ckpt, cache={"name": "dual"}, strategy=FirstCandidate(FirstCandidate.Config(keep=False)))
    with pytest.raises(DecodingError, match="Keep"):
        pipe.generate(input_ids=[[5, 6]])


def test_candidates_shape_is_the_windows():
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
    state = pipe.start(input_ids=[[5, 6]])
    window = pipe.iteration.window(state)
    select = torch.zeros_like(window.eligible)
    select[0, 0] = True
    tokens = torch.full_like(window.eligible, state.mask_id, dtype=torch.long)
    tokens[0, 0] = 7
    with pytest.raises(DecodingError, match="MASK"):
        state.commit(window, Commit(select, tokens, Drafts(window.eligible & ~select)))


def test_a_drafting_strategy_keeps_its_contract():
    check_decoding_strategy(DraftAll, {})


# --- the kit catches the broken ones -------------------------------------------------------------------


def test_the_kit_rejects_a_broken_component_with_a_violation():
    with pytest.raises(ContractViolation, match="plugin API 2.0"):
        check_decoding_strategy(LeakyAgreeTwice, {})


def test_the_kit_catches_a_cache_that_ignores_a_widened_logits_span():
    outcome = run_check("cache", BlockOnly, "plans", {})
    assert outcome.status == "failed" and "logits span" in outcome.detail


def test_the_kit_catches_column_sets_that_miss_the_window():
    outcome = run_check("cache", ColumnsMissingTheWindow, "plans", {})
    assert outcome.status == "failed" and "column sets miss" in outcome.detail


# --- plugin API 1.x names, kept for one minor release ---------------------------------------------------


def test_an_old_style_strategy_still_works_with_a_deprecation_warning(tiny_ckpt):
    with pytest.warns(DeprecationWarning, match=r"select\(state, window, logits, generator\)"):

        class OldTopK(DecodingStrategy):  # plugin API 1.x: select(logits, window, generator)
            Config = LowConfidence.Config

            def select(self, logits, window, generator):
                tokens, confidence = propose(logits, mask_id=window.mask_id, temperature=0.0, generator=generator,
                                             rows=window.rows)
                return Commit(top_k_select(confidence, window.eligible, window.quota.clamp(min=1)), tokens)

    prompts = [[5, 6, 7], [8, 9]]
    old = build(tiny_ckpt, strategy=OldTopK(OldTopK.Config()))
    assert run(old, prompts) == run(build(tiny_ckpt), prompts)  # the same rule as low_confidence


def test_importing_window_from_dlm_decoding_warns_and_gives_the_messages_window():
    import dlm.decoding

    with pytest.warns(DeprecationWarning, match="dlm.messages"):
        window = dlm.decoding.Window
    assert window is dlm.messages.Window
    with pytest.warns(DeprecationWarning):
        from dlm.decoding import Window  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from dlm.messages import Window as Home  # noqa: F401  the one home: no warning
