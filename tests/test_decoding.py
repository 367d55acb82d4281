"""Selection rules on synthetic confidences: schedule, top-k, threshold, factor (vs brute force)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dlm.decoding.factor import factor_select
from dlm.decoding.proposal import propose, top_k_select
from dlm.decoding import threshold_select
from dlm.iteration.blockwise import BlockwiseConfig, transfer_schedule
from dlm.rng import RowRNG

rows_st = st.lists(
    st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=12), min_size=1, max_size=4
).map(lambda rows: [r + [(0.0, False)] * (12 - len(r)) for r in rows])


def tensors(rows):
    conf = torch.tensor([[c for c, _ in r] for r in rows], dtype=torch.float64)
    elig = torch.tensor([[e for _, e in r] for r in rows])
    return conf, elig


@pytest.mark.parametrize("m,steps,expected", [(32, 32, [1] * 32), (10, 4, [3, 3, 2, 2]), (3, 5, [1, 1, 1, 0, 0]),
                                              (8, 1, [8])])
def test_transfer_schedule(m, steps, expected):
    assert transfer_schedule(torch.tensor([m]), steps)[0].tolist() == expected


@given(st.integers(0, 64), st.integers(1, 40))
def test_schedule_sums_to_masked_and_is_front_loaded(m, steps):
    s = transfer_schedule(torch.tensor([m]), steps)[0].tolist()
    assert sum(s) == m and max(s) - min(s) <= 1 and s == sorted(s, reverse=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"gen_length": 100, "block_length": 32}, r"block_length \(32\) must divide gen_length \(100\)"),
        ({"gen_length": 128, "block_length": 32, "steps": 6}, r"steps \(6\) must be a multiple of the number of blocks \(4"),
        ({"gen_length": 0}, "greater than 0"),
    ],
)
def test_blockwise_rejects_invalid_combinations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockwiseConfig(**kwargs)


@given(rows_st, st.integers(1, 12))
def test_top_k_commits_the_k_most_confident_eligible(rows, k):
    conf, elig = tensors(rows)
    sel = top_k_select(conf, elig, torch.full((len(rows),), k))
    for r in range(len(rows)):
        idx = [i for i in range(12) if elig[r, i]]
        want = sorted(idx, key=lambda i: -conf[r, i])[:k]
        assert sel[r].sum() == len(want)
        chosen = conf[r][sel[r]]
        if len(want) and len(chosen):
            assert chosen.min() >= max([conf[r, i] for i in idx if i not in want], default=-1.0)
        assert not bool((sel[r] & ~elig[r]).any())


@given(rows_st, st.floats(0.0, 1.0))
def test_threshold_commits_exactly_confident_plus_argmax(rows, tau):
    conf, elig = tensors(rows)
    sel = threshold_select(conf, elig, tau)
    for r in range(len(rows)):
        idx = [i for i in range(12) if elig[r, i]]
        if not idx:
            assert not sel[r].any()
            continue
        best = max(idx, key=lambda i: conf[r, i])
        want = {i for i in idx if conf[r, i] >= tau} | {best}
        got = set(sel[r].nonzero()[:, 0].tolist())
        # ties at the maximum may pick either index
        assert got == want or (len(got) == len(want) and got - want <= {i for i in idx if conf[r, i] == conf[r, best]})


def brute_force_factor(conf: list[float], f: float) -> int:
    """The reference's rule stated directly: count of committed positions."""
    c = sorted(conf, reverse=True)
    m = len(c)
    for k in range(1, m + 1):
        passes = k == 1 or c[k - 1] >= 1 - f / (k + 1)
        if not passes:
            return m if k == m else k - 1
    return m


@given(rows_st, st.floats(0.01, 5.0))
def test_factor_matches_brute_force(rows, f):
    conf, elig = tensors(rows)
    sel = factor_select(conf, elig, f)
    for r in range(len(rows)):
        vals = [float(conf[r, i]) for i in range(12) if elig[r, i]]
        assert int(sel[r].sum()) == (brute_force_factor(vals, f) if vals else 0)
        if vals:  # the committed ones are the most confident
            chosen = conf[r][sel[r]]
            rest = conf[r][elig[r] & ~sel[r]]
            assert len(rest) == 0 or chosen.min() >= rest.max()


def test_factor_quirk_two_left_always_both():
    conf = torch.tensor([[0.9, 0.01]], dtype=torch.float64)
    assert factor_select(conf, torch.tensor([[True, True]]), 1.0).tolist() == [[True, True]]


def test_proposal_never_mask_and_confidence_is_float64_probability():
    logits = torch.tensor([[[0.0, 5.0, 9.0, 1.0]]])  # MASK (id 2) has the largest logit
    tokens, conf = propose(logits, mask_id=2, temperature=0.0, generator=RowRNG(0, 1, "cpu"), rows=torch.arange(1))
    assert tokens.item() == 1
    expected = torch.softmax(logits.double(), -1)[0, 0, 1]
    assert conf.dtype == torch.float64 and torch.isclose(conf[0, 0], expected)


def test_gumbel_sampling_follows_the_tempered_distribution():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.0, 0.2]]])).expand(1, 4000, 4).clone()
    logits[..., 2] = -torch.inf
    tokens, _ = propose(logits, mask_id=2, temperature=1.0, generator=RowRNG(0, 1, "cpu"), rows=torch.arange(1))
    freq = torch.bincount(tokens.flatten(), minlength=4).double() / tokens.numel()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.0, 0.2], dtype=torch.float64), atol=0.03)
