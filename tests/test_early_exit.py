"""SchED and Prophet early exits (``sched``, ``prophet``): an exit that never fires is exactly its base rule
(tokens and NFE, under none/prefix/dual), a firing exit finishes rows with the forward's proposals at the step
the progress t/T says, and the schedules and margins equal brute-force restatements."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import Pipeline
from dlm.decoding.early_exit import top2_margin
from dlm.decoding.prophet import prophet_threshold
from dlm.decoding.sched import sched_threshold
from dlm.errors import ConfigError
from tests.conftest import pipeline_config

prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=1, max_size=3)
BASES = [{"rule": "low_confidence"}, {"rule": "threshold", "threshold": 0.3}]
NEVER = {"sched": {"tau_high": 1e9, "tau_low": 1e9}, "prophet": {"gaps": [1e9, 1e9, 1e9]}}


def build(ckpt, decoding, cache="none") -> Pipeline:
    return Pipeline.from_config(pipeline_config(ckpt, decoding=decoding, cache={"name": cache}))


def run(pipe, prompts, trace=None):
    out = pipe.generate(input_ids=prompts, trace=trace)
    return [g.tolist() for g in out.generated], out.nfe


@settings(max_examples=10)
@given(prompts=prompts_st, name=st.sampled_from(["sched", "prophet"]), base=st.sampled_from(BASES),
       cache=st.sampled_from(["none", "prefix", "dual"]))
def test_an_exit_that_never_fires_is_its_base_rule(tiny_ckpt, prompts, name, base, cache):
    plain = {"name": base["rule"], **({"threshold": base["threshold"]} if "threshold" in base else {})}
    exit_run = run(build(tiny_ckpt, {"name": name, **base, **NEVER[name]}, cache), prompts)
    assert exit_run == run(build(tiny_ckpt, plain, cache), prompts)


@pytest.mark.parametrize("decoding", [{"name": "sched", "tau_high": 0.0, "tau_low": 0.0},
                                      {"name": "prophet", "gaps": [0.0, 0.0, 0.0]}])
def test_an_exit_that_fires_at_once_takes_one_forward(tiny_ckpt, decoding):
    out = build(tiny_ckpt, decoding).generate(input_ids=[[5, 6, 7], [8, 9]])
    assert out.nfe == [1, 1] and all(sum(s) == 16 for s in out.tokens_per_step)


def test_prophet_exits_at_the_first_late_step_with_that_forwards_proposals(tiny_ckpt):
    """gaps (1e9, 1e9, 0) with T = 16: the first step with t/T >= 0.67 is t = 11. The first 10 steps are the
    base rule's; the 11th forward's argmax (never MASK) fills every position still masked."""
    prompts = [[5, 6, 7], [8, 9]]
    base, canvases = build(tiny_ckpt, {"name": "low_confidence"}), []
    base.generate(input_ids=prompts, trace=lambda s: canvases.append(s.canvas.clone()))
    pipe = build(tiny_ckpt, {"name": "prophet", "gaps": [1e9, 1e9, 0.0]})
    out = pipe.generate(input_ids=prompts)
    assert out.nfe == [11, 11]
    state = out.state
    before = canvases[9]  # the canvas after 10 base-rule steps
    cols = torch.arange(state.length)[None, :]
    logits = pipe.model.net(before, (cols - state.pad[:, None]).clamp(min=0),
                            (cols >= state.pad[:, None])[:, None, None, :])
    logits[..., state.mask_id] = -torch.inf
    expected = torch.where(before == state.mask_id, logits.argmax(dim=-1), before)
    assert torch.equal(state.canvas, expected)


@pytest.mark.parametrize("cache", ["none", "dual"])
@pytest.mark.parametrize("decoding", [{"name": "sched", "tau_high": 3.0, "tau_low": 0.0, "schedule": "cosine"},
                                      {"name": "prophet", "gaps": [1e9, 1e9, 0.0]}])
def test_a_firing_exit_saves_forwards(tiny_ckpt, cache, decoding):
    base = run(build(tiny_ckpt, {"name": "low_confidence"}, cache), [[5, 6, 7]])
    fired = run(build(tiny_ckpt, decoding, cache), [[5, 6, 7]])
    assert 1 < fired[1][0] < base[1][0]


@settings(max_examples=40)
@given(p=st.floats(-0.5, 1.5), hi=st.floats(0.5, 20.0), frac=st.floats(0.0, 1.0))
def test_sched_schedules_equal_their_formulas(p, hi, frac):
    lo = hi * frac + 1e-3 * (1 - frac)
    q = min(max(p, 0.0), 1.0)
    want = {"linear": hi + (lo - hi) * q,
            "cosine": lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * q)),
            "exponential": hi * (lo / hi) ** q}
    for schedule, value in want.items():
        got = float(sched_threshold(torch.tensor([p], dtype=torch.float64), hi, lo, schedule)[0])
        assert math.isclose(got, value, rel_tol=1e-12, abs_tol=1e-12)
        assert min(lo, hi) - 1e-12 <= got <= max(lo, hi) + 1e-12  # always between the two ends


def test_sched_schedules_start_high_and_end_low():
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for schedule in ("linear", "cosine", "exponential"):
        assert sched_threshold(ends, 6.0, 2.0, schedule).tolist() == pytest.approx([6.0, 2.0], abs=1e-12)


@settings(max_examples=40)
@given(step=st.integers(1, 300), steps=st.integers(1, 300))
def test_prophet_thresholds_follow_its_three_phases(step, steps):
    p = step / steps
    want = 7.5 if p < 0.33 else 5.0 if p < 0.67 else 2.5
    assert float(prophet_threshold(torch.tensor([p], dtype=torch.float64), (7.5, 5.0, 2.5))[0]) == want


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), vocab=st.integers(2, 12))
def test_the_margin_is_the_top_two_logit_difference(seed, vocab):
    logits = torch.randn(3, 4, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = top2_margin(logits)
    for b in range(3):
        for s in range(4):
            top = sorted(logits[b, s].tolist(), reverse=True)
            assert math.isclose(float(got[b, s]), top[0] - top[1], rel_tol=0, abs_tol=1e-12)


def test_a_rising_sched_schedule_is_refused(tiny_ckpt):
    with pytest.raises(ConfigError, match="tau_low"):
        build(tiny_ckpt, {"name": "sched", "tau_high": 1.0, "tau_low": 2.0})
