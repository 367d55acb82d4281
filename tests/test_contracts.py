"""The contract suite: every registered component of every group keeps its interface's contract.

Components are discovered through the entry points (dlm.registry.entries), so a new built-in or an
installed plugin is covered without editing this file. The second half checks the kit itself: a component
that breaks a rule must be reported by the check that owns that rule.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from dlm.cache.dual import DualCache
from dlm.cache.none import NoCache
from dlm.decoding.base import DecodingStrategy
from dlm.decoding.entropy_bound import EntropyBound
from dlm.decoding.low_confidence import LowConfidence
from dlm.iteration.blockwise import Blockwise
from dlm.messages import PLUGIN_API, Commit, Drafts, ForwardPlan, Geometry
from dlm.models.llada import LLaDAModel
from dlm.registry import GROUPS, entries
from dlm.testing.contracts import (
    CHECKS,
    ContractReport,
    ContractViolation,
    check_component,
    check_decoding_strategy,
    contract_test,
    run_check,
    tiny_checkpoint,
)

CASES = [
    pytest.param(kind, name, check, id=f"{kind}-{name}-{check}")
    for kind in GROUPS
    for name in entries(kind)
    for check in CHECKS[kind]
]


@pytest.mark.parametrize("kind,name,check", CASES)
def test_registered_component_keeps_its_contract(kind, name, check):
    outcome = run_check(kind, name, check)
    if outcome.status == "skipped":
        pytest.skip(outcome.detail)
    assert outcome.status == "passed", f"{kind} {name!r} [{check}]: {outcome.detail}"


def test_every_group_has_a_check_list():
    assert set(CHECKS) == set(GROUPS)
    for kind in GROUPS:
        for check in ("config", "batched", "deterministic", "concurrent", "joins"):
            assert check in CHECKS[kind], (kind, check)


# --- the kit catches what it promises to catch ---------------------------------------------------------


def failing(kind: str, cls: type, config=None) -> dict[str, str]:
    """check name -> detail, for the checks that fail."""
    return {o.check: o.detail for o in (run_check(kind, cls, c, config) for c in CHECKS[kind]) if o.status == "failed"}


class CommitsMask(LowConfidence):
    def select(self, state, window, logits, generator):
        commit = super().select(state, window, logits, generator)
        return Commit(commit.select, torch.full_like(commit.tokens, window.mask_id))


class CommitsNothing(LowConfidence):
    def select(self, state, window, logits, generator):
        commit = super().select(state, window, logits, generator)
        return Commit(torch.zeros_like(commit.select), commit.tokens)


class CommitsIneligible(LowConfidence):
    def select(self, state, window, logits, generator):
        commit = super().select(state, window, logits, generator)
        return Commit(commit.select | ~window.eligible, commit.tokens)


class LooseConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    temperature: float = 0.0


class CommitsAllWithLooseConfig(DecodingStrategy):
    Config = LooseConfig

    def select(self, state, window, logits, generator):
        return Commit(window.eligible.clone(), torch.full_like(window.eligible, 7, dtype=torch.long))


class UsesGlobalRandomness(LowConfidence):
    def select(self, state, window, logits, generator):
        commit = super().select(state, window, logits, generator)
        noise = torch.randint(3, 20, commit.tokens.shape)  # not from the per-row generator
        return Commit(commit.select, noise)


class DependsOnTheBatch(LowConfidence):
    def select(self, state, window, logits, generator):
        commit = super().select(state, window, logits, generator)
        return Commit(commit.select, commit.tokens + (len(window.rows) > 1))


class CountsStepsOnSelf(LowConfidence):
    """Broken: run memory on the strategy object (a step counter), so generations sharing it interfere."""

    def start(self, state):
        self.count = 0

    def select(self, state, window, logits, generator):
        self.count += 1
        commit = super().select(state, window, logits, generator)
        if self.count % 2:  # odd steps commit the whole window
            return Commit(window.eligible.clone(), commit.tokens)
        return commit


class ReadsTheFirstRowsStep(LowConfidence):
    """Broken but declares joinable: decides every row's step from the first row's geometry (right while all
    rows of a batch move together, wrong once rows join at other steps)."""

    joinable = True

    def select(self, state, window, logits, generator):
        commit = super().select(state, window, logits, generator)
        if int(window.step[0]) % 2 == 0:
            return commit
        return Commit(window.eligible.clone(), commit.tokens)


class NotJoinable(LowConfidence):
    joinable = False


def test_kit_reports_a_strategy_committing_mask():
    assert "MASK" in failing("decoding", CommitsMask)["commits"]


def test_kit_reports_a_strategy_committing_nothing():
    assert "committed nothing" in failing("decoding", CommitsNothing)["commits"]


def test_kit_reports_a_strategy_committing_ineligible_positions():
    assert "not eligible" in failing("decoding", CommitsIneligible)["commits"]


def test_kit_reports_a_config_that_is_not_frozen_nor_strict():
    assert "frozen" in failing("decoding", CommitsAllWithLooseConfig)["config"]


def test_kit_reports_randomness_outside_the_generator():
    assert "deterministic" in failing("decoding", UsesGlobalRandomness)


def test_kit_reports_a_strategy_that_depends_on_the_batch():
    assert "batch" in failing("decoding", DependsOnTheBatch)["batched"]


def test_kit_reports_run_memory_kept_on_the_strategy_object():
    found = failing("decoding", CountsStepsOnSelf)
    assert "memory belongs on the state" in found["memory"]
    assert "concurrent" in found and "alone" in found["concurrent"]


def test_kit_reports_a_joinable_strategy_reading_one_rows_geometry_for_all():
    found = failing("decoding", ReadsTheFirstRowsStep)
    assert "joining a running generation" in found["joins"]
    assert "synthetic case" in found["batched"]  # synthetic windows hold rows at different steps too


def test_joins_does_not_apply_to_a_component_that_is_not_joinable():
    outcome = run_check("decoding", NotJoinable, "joins")
    assert outcome.status == "skipped" and "joinable = False" in outcome.detail


class PlansFirstRowOnly(NoCache):
    def plan(self, state, window):
        plan = super().plan(state, window)
        return ForwardPlan(window.rows[:1], False, plan.start, plan.end, plan.kv, plan.key_end, plan.refresh)


class StaleRefresh(DualCache):
    """Claims a refresh at every step but only ever computes the block after the first one."""

    def plan(self, state, window):
        plan = super().plan(state, window)
        return ForwardPlan(plan.rows, plan.all_rows, plan.start, plan.end, plan.kv, plan.key_end, True)


class WritesOtherRows(DualCache):
    def plan(self, state, window):
        self.memory(state).kv.keys[:, :, :, 0] += 1.0  # touches every row's slot 0 between forwards
        return super().plan(state, window)


class BufferOnSelf(DualCache):
    """Broken: keeps the run's KV store on the cache object (plugin API 1.x style)."""

    def start(self, state, env):
        memory = super().start(state, env)
        self.kv = memory.kv
        return memory

    def plan(self, state, window):
        plan = super().plan(state, window)
        return dataclasses.replace(plan, kv=self.kv)


class ReturnsAnotherSpan(NoCache):
    def plan(self, state, window):
        return dataclasses.replace(super().plan(state, window), logits_start=window.start + 1,
                                   logits_end=window.end)


def test_kit_reports_a_plan_naming_rows_outside_the_window():
    assert "rows" in failing("cache", PlansFirstRowOnly)["plans"]


def test_kit_reports_a_refresh_that_is_not_exact():
    assert "full no-cache forward" in failing("cache", StaleRefresh)["exact_at_refresh"]


def test_kit_reports_buffer_writes_outside_the_planned_rows():
    assert "KV buffer changed" in failing("cache", WritesOtherRows)["plans"]


def test_kit_reports_a_cache_keeping_its_buffer_on_itself():
    found = failing("cache", BufferOnSelf)
    assert "memory belongs on the state" in found["plans"]
    assert "concurrent" in found


def test_kit_reports_a_plan_returning_another_logits_span():
    assert "returns the logits of" in failing("cache", ReturnsAnotherSpan)["plans"]


class RewritesCommitted(Blockwise):
    def advance(self, state):
        gen = state.canvas[:, state.gen_start :]
        gen[:, 0] = torch.where(gen[:, 0] == state.mask_id, gen[:, 0], 3 + (gen[:, 0] + 1) % 50)
        super().advance(state)


class NeverEnds(Blockwise):
    def advance(self, state):
        pass  # never moves on from the first block, nor learns that it is complete


def test_kit_reports_an_iteration_manager_that_never_ends():
    found = failing("iteration", NeverEnds, {"gen_length": 16, "block_length": 8, "steps": 16})
    assert "terminates" in found
    assert "did not end" in found["deterministic"]  # every kit generation is bounded, so none can hang


def test_kit_reports_an_iteration_manager_rewriting_committed_tokens():
    assert "rewritten" in failing("iteration", RewritesCommitted, {"gen_length": 16, "block_length": 8, "steps": 16})[
        "never_rewrites"
    ]


class EligibleEverywhere(Blockwise):
    def window(self, state):
        w = super().window(state)
        return dataclasses.replace(w, eligible=torch.ones_like(w.eligible))


class OneGeometryForAll(Blockwise):
    """Broken: the window's geometry is one entry for the whole batch (plugin API 1.x ints)."""

    def window(self, state):
        w = super().window(state)
        g = w.geometry
        return dataclasses.replace(w, geometry=Geometry(g.step[:1], g.block[:1], g.block_start[:1], g.block_end[:1],
                                                        g.total_steps))


def test_kit_reports_windows_with_committed_eligible_positions():
    found = failing("iteration", EligibleEverywhere, {"gen_length": 16, "block_length": 8, "steps": 16})
    assert "committed" in found["windows"]


def test_kit_reports_geometry_that_is_not_per_row():
    found = failing("iteration", OneGeometryForAll, {"gen_length": 16, "block_length": 8, "steps": 16})
    assert "one entry per window row" in found["windows"]


class NaNModel(LLaDAModel):
    def forward(self, state, plan):
        return super().forward(state, plan) * float("nan")


def test_kit_reports_non_finite_logits():
    assert "NaN" in failing("model", NaNModel, {"path": str(tiny_checkpoint())})["logits"]


def test_check_functions_raise_naming_every_failed_check_and_the_api_version():
    with pytest.raises(ContractViolation) as err:
        check_decoding_strategy(CommitsMask)
    assert "CommitsMask" in str(err.value) and "[commits]" in str(err.value)
    assert f"plugin API {PLUGIN_API}" in str(err.value)


def test_check_component_reports_each_check_of_a_good_component():
    report = check_component("decoding", "threshold", {"threshold": 0.5})
    assert [o.check for o in report.outcomes] == list(CHECKS["decoding"])
    assert not report.failures
    assert report.api == PLUGIN_API == "2.0"


def test_a_report_names_the_plugin_api_it_checked_against():
    assert ContractReport("cache", "x").api == PLUGIN_API


def test_contract_test_is_a_parametrized_pytest_function():
    test = contract_test("decoding", LowConfidence)
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    assert list(mark.args[1]) == list(CHECKS["decoding"])
    test("config")  # a passing check returns quietly
    with pytest.raises(pytest.fail.Exception, match=f"plugin API {PLUGIN_API}"):
        contract_test("decoding", CommitsMask)("commits")


# --- the noise-canvas model: canvases and entropy_bound are checked, not skipped -------------------------------


@pytest.mark.parametrize("kind,name", [("iteration", "canvases"), ("decoding", "entropy_bound")])
def test_the_noise_canvas_components_run_every_check_but_joins(kind, name):
    report = check_component(kind, name, checks=[c for c in CHECKS[kind] if c != "joins"])
    assert {o.status for o in report.outcomes} == {"passed"}, report.outcomes


class RenoisesFromGlobalRandomness(EntropyBound):
    """Broken on noise canvases only: redrafts what it does not accept from the global generator."""

    def select(self, state, window, logits, generator):
        commit = super().select(state, window, logits, generator)
        drafts = commit.get(Drafts)
        if drafts is None:  # a masked model: nothing is redrafted
            return commit
        noise = torch.randint(0, state.progress.vocab, commit.tokens.shape)
        tokens = torch.where(drafts.mask & (commit.tokens != window.mask_id), noise, commit.tokens)
        return Commit(commit.select, tokens, *commit.extensions)


def test_kit_checks_a_canvas_finishing_strategy_on_the_noise_canvas_model_too():
    found = failing("decoding", RenoisesFromGlobalRandomness)
    assert "canvases/none on noise model" in found["deterministic"]
