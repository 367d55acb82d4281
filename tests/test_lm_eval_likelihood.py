"""The Monte-Carlo log-likelihood estimates against their exact expectation, and the greedy check.

The exact expectation of each estimator is computed by enumerating every mask pattern of a short target on
a tiny model, with log-probabilities read straight from the transformer's full output (logit shift applied
here, by hand), so the estimator's own forward path is checked too.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.testing.contracts.fixtures import tiny_model
from dlm.tools.lm_eval import likelihood

EPS = 0.05  # larger than Dream's 1e-3 so that a few thousand samples pin the mean down
FIRST_CHAR_ID = 6  # ids below are special tokens (EOS, EOT, MASK, ...)


def pattern_losses(model, prompt: torch.Tensor, target: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Sum of -log p(target_i) over masked i, for every non-empty set of masked target positions."""
    T, P = target.numel(), prompt.numel()
    patterns = [s for k in range(1, T + 1) for s in itertools.combinations(range(T), k)]
    canvas = torch.cat([prompt, target]).repeat(len(patterns), 1)  # [n, P + T]
    for row, s in enumerate(patterns):
        canvas[row, [P + i for i in s]] = model.capabilities.mask_id
    positions = torch.arange(P + T).expand_as(canvas)
    out = model.net(canvas, positions, None).double().log_softmax(-1)  # [n, P + T, V]
    shift = model.capabilities.logit_shift
    logp = out[:, P - shift : P + T - shift].gather(-1, target.expand(len(patterns), -1)[..., None])[..., 0]
    return {s: -float(logp[row, list(s)].sum()) for row, s in enumerate(patterns)}


def llada_moments(losses: dict, T: int) -> tuple[float, float]:
    """E[X], E[X^2] of LLaDA's per-sample estimate: k ~ U{1..T}, k positions uniformly, weight T/k."""
    m1 = m2 = 0.0
    for s, loss in losses.items():
        k = len(s)
        prob = 1.0 / T / math.comb(T, k)
        m1 += prob * T / k * loss
        m2 += prob * (T / k * loss) ** 2
    return m1, m2


def dream_weight(a: int, b: int) -> float:
    """Integral over t in [0, 1] of p^a (1 - p)^b with p = (1 - EPS) t + EPS (a >= -1)."""
    total = 0.0
    for j in range(b + 1):
        power = a + j + 1
        part = -math.log(EPS) if power == 0 else (1.0 - EPS**power) / power
        total += math.comb(b, j) * (-1) ** j * part
    return total / (1.0 - EPS)


def dream_moments(losses: dict, T: int) -> tuple[float, float]:
    """E[X], E[X^2] of Dream's per-sample estimate: each position masked w.p. p(t), weight 1/p."""
    m1 = m2 = 0.0
    for s, loss in losses.items():
        k = len(s)
        m1 += dream_weight(k - 1, T - k) * loss
        m2 += dream_weight(k - 2, T - k) * loss**2
    return m1, m2


@settings(max_examples=12)  # each example runs up to 8 forwards of 2048 rows
@given(
    family=st.sampled_from(["llada", "dream"]),
    prompt=st.lists(st.integers(FIRST_CHAR_ID, 40), min_size=1, max_size=4),
    target=st.lists(st.integers(FIRST_CHAR_ID, 40), min_size=1, max_size=4),
    seed=st.integers(0, 2**31),
)
def test_monte_carlo_estimate_converges_to_the_exact_expectation_over_mask_patterns(family, prompt, target, seed):
    model = tiny_model(family=family)
    p, t = torch.tensor(prompt), torch.tensor(target)
    losses = pattern_losses(model, p, t)
    mean, second = (dream_moments if family == "dream" else llada_moments)(losses, len(target))
    generator = torch.Generator().manual_seed(seed)
    if family == "dream":  # heavier-tailed weights 1/p: more samples
        n = 8192
        est = likelihood.dream_nll(model, p, t, mc_num=n, batch=2048, generator=generator, eps=EPS)
    else:
        n = 2048
        est = likelihood.llada_nll(model, p, t, mc_num=n, batch=256, generator=generator)
    sigma = math.sqrt(max(second - mean**2, 0.0))
    assert abs(est.nll - mean) <= 6 * sigma / math.sqrt(n) + 1e-9, (est.nll, mean, sigma)


def test_llada_counts_are_stratified_over_every_mask_count():
    counts = likelihood.llada_counts(k=3, b=8, length=4)
    assert sorted(counts.tolist()) == [1, 1, 2, 2, 3, 3, 4, 4]


def test_single_token_target_llada_estimate_is_exact():
    model = tiny_model()
    p, t = torch.tensor([10, 11, 12]), torch.tensor([13])
    exact = pattern_losses(model, p, t)[(0,)]
    est = likelihood.llada_nll(model, p, t, mc_num=4, batch=2, generator=torch.Generator().manual_seed(0))
    assert est.nll == pytest.approx(exact, abs=1e-9)
    assert est.forwards == 2


def one_token_per_step(model, prompt: torch.Tensor, length: int) -> torch.Tensor:
    """The pipeline's own greedy decoding: one block, one token per step, low-confidence remasking."""
    from dlm.config import build_config
    from dlm.pipeline import Pipeline

    cfg = build_config({
        "model": {"name": "llada"},
        "iteration": {"name": "blockwise", "gen_length": length, "block_length": length, "steps": length},
        "decoding": {"name": "low_confidence"},
    })
    pipe = Pipeline(model, cfg.iteration.cls(cfg.iteration.config), cfg.decoding.cls(cfg.decoding.config),
                    cfg.cache.cls(cfg.cache.config), config=cfg)
    return pipe.generate(input_ids=[prompt]).generated[0]


@pytest.mark.parametrize("prompt", [[10, 11], [20, 7, 30, 8]])
def test_is_greedy_agrees_with_one_token_per_step_decoding(prompt):
    model = tiny_model()
    p = torch.tensor(prompt)
    greedy = one_token_per_step(model, p, 4)
    assert likelihood.greedy_matches(model, p, greedy) == (True, 4)
    other = greedy.clone()
    other[:] = torch.where(greedy == 40, 41, 40)  # differs at every position
    matches, forwards = likelihood.greedy_matches(model, p, other)
    assert not matches and forwards == 1
