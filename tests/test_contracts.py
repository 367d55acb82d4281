"""The contract suite: every registered component of every group keeps its interface's contract.

Components are discovered through the entry points (dlm.registry.entries), so a new built-in or an
installed plugin is covered without editing this file. The second half checks the kit itself: a component
that breaks a rule must be reported by the check that owns that rule.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from dlm.cache.base import ForwardPlan
from dlm.cache.dual import DualCache
from dlm.cache.none import NoCache
from dlm.decoding.base import DecodingStrategy
from dlm.decoding.low_confidence import LowConfidence
from dlm.iteration.blockwise import Blockwise
from dlm.models.llada import LLaDAModel
from dlm.registry import GROUPS, entries
from dlm.messages import Commit
from dlm.testing.contracts import (
    CHECKS,
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
        assert "config" in CHECKS[kind] and "batched" in CHECKS[kind] and "deterministic" in CHECKS[kind]


# --- the kit catches what it promises to catch ---------------------------------------------------------


def failing(kind: str, cls: type, config=None) -> dict[str, str]:
    """check name -> detail, for the checks that fail."""
    return {o.check: o.detail for o in (run_check(kind, cls, c, config) for c in CHECKS[kind]) if o.status == "failed"}


class CommitsMask(LowConfidence):
    def select(self, logits, window, generator):
        commit = super().select(logits, window, generator)
        return Commit(commit.select, torch.full_like(commit.tokens, window.mask_id))


class CommitsNothing(LowConfidence):
    def select(self, logits, window, generator):
        commit = super().select(logits, window, generator)
        return Commit(torch.zeros_like(commit.select), commit.tokens)


class CommitsIneligible(LowConfidence):
    def select(self, logits, window, generator):
        commit = super().select(logits, window, generator)
        return Commit(commit.select | ~window.eligible, commit.tokens)


class LooseConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    temperature: float = 0.0


class CommitsAllWithLooseConfig(DecodingStrategy):
    Config = LooseConfig

    def select(self, logits, window, generator):
        return Commit(window.eligible.clone(), torch.full_like(window.eligible, 7, dtype=torch.long))


class UsesGlobalRandomness(LowConfidence):
    def select(self, logits, window, generator):
        commit = super().select(logits, window, generator)
        noise = torch.randint(3, 20, commit.tokens.shape)  # not from the per-row generator
        return Commit(commit.select, noise)


class DependsOnTheBatch(LowConfidence):
    def select(self, logits, window, generator):
        commit = super().select(logits, window, generator)
        return Commit(commit.select, commit.tokens + (len(window.rows) > 1))


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
        if self.kv is not None:
            self.kv.keys[:, :, :, 0] += 1.0  # touches every row's slot 0 between forwards
        return super().plan(state, window)


def test_kit_reports_a_plan_naming_rows_outside_the_window():
    assert "rows" in failing("cache", PlansFirstRowOnly)["plans"]


def test_kit_reports_a_refresh_that_is_not_exact():
    assert "full no-cache forward" in failing("cache", StaleRefresh)["exact_at_refresh"]


def test_kit_reports_buffer_writes_outside_the_planned_rows():
    assert "KV buffer changed" in failing("cache", WritesOtherRows)["plans"]


class RewritesCommitted(Blockwise):
    def advance(self, state):
        gen = state.canvas[:, state.gen_start :]
        gen[:, 0] = torch.where(gen[:, 0] == state.mask_id, gen[:, 0], 3 + (gen[:, 0] + 1) % 50)
        super().advance(state)


class NeverEnds(Blockwise):
    def done(self, state):
        return False


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
        return w.__class__(w.rows, w.start, w.end, torch.ones_like(w.eligible), w.quota, w.step, w.mask_id)


def test_kit_reports_windows_with_unmasked_eligible_positions():
    found = failing("iteration", EligibleEverywhere, {"gen_length": 16, "block_length": 8, "steps": 16})
    assert "not masked" in found["windows"]


class NaNModel(LLaDAModel):
    def forward(self, state, plan, window):
        return super().forward(state, plan, window) * float("nan")


def test_kit_reports_non_finite_logits():
    assert "NaN" in failing("model", NaNModel, {"path": str(tiny_checkpoint())})["logits"]


def test_check_functions_raise_naming_every_failed_check():
    with pytest.raises(ContractViolation) as err:
        check_decoding_strategy(CommitsMask)
    assert "CommitsMask" in str(err.value) and "[commits]" in str(err.value)


def test_check_component_reports_each_check_of_a_good_component():
    report = check_component("decoding", "threshold", {"threshold": 0.5})
    assert [o.check for o in report.outcomes] == list(CHECKS["decoding"])
    assert not report.failures


def test_contract_test_is_a_parametrized_pytest_function():
    test = contract_test("decoding", LowConfidence)
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    assert list(mark.args[1]) == list(CHECKS["decoding"])
    test("config")  # a passing check returns quietly
    with pytest.raises(pytest.fail.Exception):
        contract_test("decoding", CommitsMask)("commits")
