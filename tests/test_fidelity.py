"""dlm's blockwise generation equals Fast-dLLM's reference generators, token for token and in NFE.

The reference is tests/reference.py: an independent, loop-based statement of the reference semantics
(fast-dllm.md §1–§4). docs/fidelity.md records the same comparison against the original code.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import Pipeline
from reference import NaiveLLaDA, reference_generate
from conftest import pipeline_config

CACHES = ["none", "prefix", "dual"]
RULES = [("low_confidence", {}), ("threshold", {"threshold": 0.3}), ("threshold", {"threshold": 0.9}),
         ("factor", {"factor": 1.0}), ("factor", {"factor": 3.0})]


@st.composite
def grids(draw):
    block_length = draw(st.sampled_from([2, 4, 8]))
    blocks = draw(st.integers(1, 3))
    gen_length = block_length * blocks
    steps = blocks * draw(st.integers(1, block_length))  # more steps than tokens is refused by the config
    prompt = draw(st.lists(st.integers(3, 80), min_size=1, max_size=10))
    return prompt, gen_length, block_length, steps


def run_ours(ckpt, prompt, gen_length, block_length, steps, cache, rule, params):
    pipe = Pipeline.from_config(pipeline_config(
        ckpt,
        iteration={"name": "blockwise", "gen_length": gen_length, "block_length": block_length, "steps": steps},
        decoding={"name": rule, **params},
        cache={"name": cache},
    ))
    out = pipe.generate(input_ids=[prompt])
    return out.generated[0].tolist(), out.nfe[0]


@pytest.fixture(scope="module")
def naive(tiny_ckpt):
    return NaiveLLaDA(tiny_ckpt)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule,params", RULES, ids=lambda v: str(v))
@settings(max_examples=6)
@given(grid=grids())
def test_matches_reference_generators(tiny_ckpt, naive, cache, rule, params, grid):
    prompt, gen_length, block_length, steps = grid
    ref_tokens, ref_nfe = reference_generate(
        naive, prompt, steps=steps, gen_length=gen_length, block_length=block_length, cache=cache,
        threshold=params.get("threshold"), factor=params.get("factor"),
    )
    tokens, nfe = run_ours(tiny_ckpt, prompt, gen_length, block_length, steps, cache, rule, params)
    assert tokens == ref_tokens
    assert nfe == ref_nfe


def test_one_step_per_block_works_with_caches(tiny_ckpt):
    """The reference's cached generators raise an IndexError here; every cache must simply work."""
    for cache in CACHES:
        tokens, nfe = run_ours(tiny_ckpt, [5, 6, 7], 16, 8, 2, cache, "low_confidence", {})
        assert 2 not in tokens and nfe == 2
