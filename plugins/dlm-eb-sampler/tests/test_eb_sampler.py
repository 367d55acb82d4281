"""eb_sampler: its rule against a loop-based statement of it, its limits in γ, its contract, its YAML name."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.config import build_config
from dlm.registry import entries
from dlm.testing.contracts import contract_test, tiny_checkpoint

pytest.importorskip("dlm_eb_sampler", reason="pip install ./plugins/dlm-eb-sampler")

from dlm_eb_sampler import EBSampler, eb_select, token_entropy

test_contract = contract_test("decoding", EBSampler, {"gamma": 0.5})
test_contract_entropy_order = contract_test("decoding", EBSampler, {"gamma": 2.0, "order": "entropy"})


def naive_eb(score: list[float], entropy: list[float], eligible: list[bool], gamma: float) -> set[int]:
    """Ben-Hamu et al. (2025): longest prefix of the ranking with Σ H − max H ≤ γ, written as a loop."""
    ranked = sorted((i for i in range(len(score)) if eligible[i]), key=lambda i: -score[i])
    chosen: list[int] = []
    for i in ranked:
        trial = [entropy[j] for j in chosen + [i]]
        if sum(trial) - max(trial) > gamma:
            break
        chosen.append(i)
    return set(chosen)


rows = st.integers(1, 8).flatmap(
    lambda w: st.tuples(
        st.lists(st.floats(0, 1, allow_nan=False), min_size=w, max_size=w).filter(lambda s: len(set(s)) == len(s)),
        st.lists(st.floats(0, 4, allow_nan=False), min_size=w, max_size=w),
        st.lists(st.booleans(), min_size=w, max_size=w),
    )
)


@settings(max_examples=60, deadline=None)
@given(row=rows, gamma=st.floats(0, 6, allow_nan=False))
def test_rule_matches_the_loop_statement(row, gamma):
    score, entropy, eligible = row
    select = eb_select(torch.tensor([score], dtype=torch.float64), torch.tensor([entropy], dtype=torch.float64),
                       torch.tensor([eligible]), gamma)
    assert set(select[0].nonzero()[:, 0].tolist()) == naive_eb(score, entropy, eligible, gamma)


@settings(max_examples=30, deadline=None)
@given(row=rows, g1=st.floats(0, 3), g2=st.floats(0, 3))
def test_a_larger_budget_commits_a_superset(row, g1, g2):
    score, entropy, eligible = row
    args = torch.tensor([score], dtype=torch.float64), torch.tensor([entropy], dtype=torch.float64), torch.tensor([eligible])
    small, large = eb_select(*args, min(g1, g2)), eb_select(*args, max(g1, g2))
    assert bool((small <= large).all())


def test_zero_budget_commits_one_token_per_row():
    logits = torch.randn(3, 6, 20, dtype=torch.float64)
    eligible = torch.ones(3, 6, dtype=torch.bool)
    select = eb_select(torch.rand(3, 6), token_entropy(logits), eligible, 0.0)
    assert select.sum(dim=1).tolist() == [1, 1, 1]


def test_unbounded_budget_commits_every_eligible_position():
    eligible = torch.tensor([[True, False, True, True]])
    select = eb_select(torch.rand(1, 4), torch.full((1, 4), 3.0, dtype=torch.float64), eligible, 1e9)
    assert torch.equal(select, eligible)


def test_entropy_of_a_uniform_distribution_is_log_v_and_ignores_minus_inf():
    logits = torch.zeros(1, 1, 8, dtype=torch.float64)
    logits[..., 4:] = -torch.inf
    assert math.isclose(float(token_entropy(logits)), math.log(4), rel_tol=1e-12)


def test_largest_entropy_is_free_of_charge():
    """Σ H − max H: two positions of entropy 0.2 and 5.0 pass a budget of 0.25 (the 5.0 is the max)."""
    select = eb_select(torch.tensor([[0.9, 0.8]]), torch.tensor([[0.2, 5.0]], dtype=torch.float64),
                       torch.ones(1, 2, dtype=torch.bool), 0.25)
    assert select.tolist() == [[True, True]]


def test_name_is_registered_by_this_package():
    entry = entries("decoding")["eb_sampler"]
    assert entry.providers == ("dlm-eb-sampler",)


def test_usable_from_yaml_and_generates():
    from dlm import Pipeline

    raw = {
        "model": {"name": "llada", "path": str(tiny_checkpoint())},
        "iteration": {"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 16},
        "decoding": {"name": "eb_sampler", "gamma": 1.0},
        "dtype": "float64",
    }
    config = build_config(raw)
    assert config.decoding.config.gamma == 1.0 and config.decoding.config.order == "confidence"
    out = Pipeline.from_config(config).generate(input_ids=[[5, 6, 7]])
    assert 2 not in out.generated[0].tolist()
    assert sum(out.tokens_per_step[0]) == 16
