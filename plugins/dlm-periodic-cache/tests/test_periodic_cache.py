"""periodic: the exactness its docstring states, and rows joining a running generation giving their alone
output, proved with hypothesis on tiny random models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import Pipeline
from dlm.iteration.blockwise import Blockwise
from dlm.registry import entries, resolve
from dlm.testing.contracts import contract_test, tiny_model
from dlm.testing.joins import alone_outputs, joined_outputs

pytest.importorskip("dlm_periodic_cache", reason="pip install ./plugins/dlm-periodic-cache")

from dlm_periodic_cache import PeriodicCache

test_contract = contract_test("cache", PeriodicCache, {"refresh_every": 2})
test_contract_r3 = contract_test("cache", PeriodicCache, {"refresh_every": 3})


@st.composite
def grids(draw):
    block_length = draw(st.sampled_from([2, 4, 8]))
    blocks = draw(st.integers(1, 2))
    steps = blocks * draw(st.integers(1, block_length))
    prompt = draw(st.lists(st.integers(3, 80), min_size=1, max_size=8))
    rule = draw(st.sampled_from([{"name": "low_confidence"}, {"name": "threshold", "threshold": 0.2}]))
    return prompt, block_length * blocks, block_length, steps, rule


def component(kind: str, spec: dict):
    cls = resolve(kind, spec["name"])
    return cls(cls.Config(**{k: v for k, v in spec.items() if k != "name"}))


def run(model, grid, cache: dict):
    """Generated tokens and NFE of one prompt (components built directly: the model is loaded once)."""
    prompt, gen_length, block_length, steps, rule = grid
    iteration = Blockwise(Blockwise.Config(gen_length=gen_length, block_length=block_length, steps=steps))
    pipe = Pipeline(model, iteration, component("decoding", rule), component("cache", cache))
    out = pipe.generate(input_ids=[prompt])
    return out.generated[0].tolist(), out.nfe[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny float64 models run fastest on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def deep():
    return tiny_model(n_layers=2)


@pytest.fixture(scope="module")
def shallow():
    return tiny_model(n_layers=1)


@settings(max_examples=15, deadline=None)
@given(grid=grids())
def test_refresh_every_step_is_identical_to_no_cache(deep, grid):
    assert run(deep, grid, {"name": "periodic", "refresh_every": 1}) == run(deep, grid, {"name": "none"})


@settings(max_examples=15, deadline=None)
@given(grid=grids(), r=st.integers(1, 9))
def test_one_layer_model_is_exact_for_any_period(shallow, grid, r):
    assert run(shallow, grid, {"name": "periodic", "refresh_every": r}) == run(shallow, grid, {"name": "none"})


@settings(max_examples=15, deadline=None)
@given(grid=grids(), r=st.integers(1, 9))
def test_blocks_completed_in_their_refresh_are_identical_to_no_cache(deep, grid, r):
    prompt, gen_length, block_length, _, _ = grid
    one_step = (prompt, gen_length, block_length, gen_length // block_length, {"name": "low_confidence"})
    assert run(deep, one_step, {"name": "periodic", "refresh_every": r}) == run(deep, one_step, {"name": "none"})


@settings(max_examples=15, deadline=None)
@given(grid=grids())
def test_period_longer_than_a_block_is_the_dual_cache(deep, grid):
    never_again = {"name": "periodic", "refresh_every": grid[2] + 1}  # a block takes at most block_length steps
    assert run(deep, grid, never_again) == run(deep, grid, {"name": "dual"})


@settings(max_examples=10, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(3, 80), min_size=1, max_size=6), min_size=2, max_size=3),
       join_at=st.lists(st.integers(0, 12), min_size=3, max_size=3), r=st.integers(1, 5),
       rule=st.sampled_from([{"name": "low_confidence"}, {"name": "threshold", "threshold": 0.3}]))
def test_rows_joining_a_running_generation_give_their_alone_output(deep, prompts, join_at, r, rule):
    """A row joining at any step starts at its block 0, step 0 beside rows at other steps (other refresh
    decisions, other blocks): each row's tokens and NFE are those it gives alone (2 layers, so stale K/V
    matter)."""
    iteration = Blockwise(Blockwise.Config(gen_length=16, block_length=8, steps=16))
    pipe = Pipeline(deep, iteration, component("decoding", rule),
                    component("cache", {"name": "periodic", "refresh_every": r}))
    assert pipe.joinable
    seeds = list(range(len(prompts)))
    assert joined_outputs(pipe, prompts, seeds, join_at[: len(prompts)]) == alone_outputs(pipe, prompts, seeds)


def test_refreshes_at_block_steps_0_r_2r(deep):
    seen = []
    cache = PeriodicCache(PeriodicCache.Config(refresh_every=3))
    plan = cache.plan

    def spy(state, window):
        p = plan(state, window)
        seen.append((int(window.step[0]), p.refresh, p.start, p.end))
        return p

    cache.plan = spy
    iteration = Blockwise(Blockwise.Config(gen_length=8, block_length=8, steps=8))
    Pipeline(deep, iteration, component("decoding", {"name": "low_confidence"}), cache).generate(input_ids=[[5, 6, 7]])
    assert [refresh for _, refresh, _, _ in seen] == [s % 3 == 0 for s in range(8)]
    assert all((start, end) == (3, 11) for step, refresh, start, end in seen if not refresh)


def test_the_approximation_is_real_on_a_deeper_model(deep):
    """With 2 layers and stale K/V, some grid gives tokens different from the exact computation."""
    grids_ = [([5 + i, 9, 12, 40 - i], 8, 8, 8, {"name": "low_confidence"}) for i in range(12)]
    differ = [run(deep, g, {"name": "periodic", "refresh_every": 4}) != run(deep, g, {"name": "none"}) for g in grids_]
    assert any(differ)


def test_name_is_registered_by_this_package():
    assert entries("cache")["periodic"].providers == ("dlm-periodic-cache",)


def test_period_must_be_positive():
    from dlm.errors import ConfigError
    from dlm.config import build_config

    with pytest.raises(ConfigError, match="refresh_every"):
        build_config({"model": {"name": "llada"}, "iteration": {"name": "blockwise"}, "decoding": {"name": "random"},
                      "cache": {"name": "periodic", "refresh_every": 0}})
