"""Selection rules on synthetic confidences: schedule, top-k, threshold, factor (vs brute force); per-row
draws over each row's own window; and every registered strategy under joins: rows joining a running
generation at random steps give what they give alone (tokens and NFE)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.decoding.factor import factor_select
from dlm.decoding.proposal import propose, row_rand, row_spans, top_k_select
from dlm.decoding import threshold_select
from dlm.iteration.blockwise import BlockwiseConfig, transfer_schedule
from dlm.messages import Geometry, Window
from dlm.pipeline import Pipeline
from dlm.registry import entries, resolve
from dlm.rng import RowRNG
from dlm.testing.joins import alone_outputs, joined_outputs
from dlm.tools.qwen2_checkpoints import make_qwen2_checkpoint
from tests.conftest import pipeline_config

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


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), w=st.integers(1, 12), seed=st.integers(0, 999), dtype=st.sampled_from(["float32", "float64"]))
def test_a_proposal_made_at_the_read_positions_only_equals_the_whole_windows_there(b, w, seed, dtype):
    """Low-confidence, threshold and factor read the eligible positions only: their greedy proposal is made there
    (half the float64 softmax of a one-token-per-step block), with the tokens and confidences of the whole window's
    proposal bit for bit, MASK and 0 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, w, 40, generator=g, dtype=getattr(torch, dtype))
    logits[..., 7] += 3.0  # MASK's logit often the largest: never proposed
    logits[0, 0, 9] = logits[0, 0, 10] = logits[0, 0].max() + 1  # a tie: the first maximum wins
    read = torch.rand(b, w, generator=g) < 0.5
    kw = dict(mask_id=7, temperature=0.0, generator=None, rows=torch.arange(b))
    tokens, confidence = propose(logits, **kw, read=read)
    all_tokens, all_confidence = propose(logits, **kw)
    assert torch.equal(tokens[read], all_tokens[read]) and torch.equal(confidence[read], all_confidence[read])
    assert bool((tokens[~read] == 7).all()) and bool((confidence[~read] == 0).all())


def test_gumbel_sampling_follows_the_tempered_distribution():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.0, 0.2]]])).expand(1, 4000, 4).clone()
    logits[..., 2] = -torch.inf
    tokens, _ = propose(logits, mask_id=2, temperature=1.0, generator=RowRNG(0, 1, "cpu"), rows=torch.arange(1))
    freq = torch.bincount(tokens.flatten(), minlength=4).double() / tokens.numel()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.0, 0.2], dtype=torch.float64), atol=0.03)


# --- rows at different blocks draw over their own windows ----------------------------------------------------


def test_rows_at_different_blocks_draw_over_their_own_columns_what_they_draw_alone():
    """A window over two blocks (row 0 in block 0, row 1 in block 1): each row's Gumbel draws over its own
    block equal those it makes alone over a window that is just its block."""
    geometry = Geometry(step=torch.tensor([0, 2]), block=torch.tensor([0, 1]), block_start=torch.tensor([10, 14]),
                        block_end=torch.tensor([14, 18]))
    window = Window(rows=torch.tensor([0, 1]), start=10, end=18, eligible=torch.ones(2, 8, dtype=torch.bool),
                    quota=torch.ones(2, dtype=torch.long), mask_id=2, geometry=geometry)
    lo, hi = row_spans(window)
    assert lo.tolist() == [0, 4] and hi.tolist() == [4, 8]
    joined = row_rand(RowRNG(7, 2, "cpu"), window.rows, (8, 5), (lo, hi))
    alone = [RowRNG(7 + r, 1, "cpu").rand(torch.arange(1), (4, 5))[0] for r in range(2)]
    assert torch.equal(joined[0, :4], alone[0]) and torch.equal(joined[1, 4:], alone[1])
    assert not joined[0, 4:].any() and not joined[1, :4].any()
    uniform = Window(rows=torch.tensor([0, 1]), start=10, end=14, eligible=torch.ones(2, 4, dtype=torch.bool),
                     quota=torch.ones(2, dtype=torch.long), mask_id=2,
                     geometry=Geometry.uniform(2, block_start=10, block_end=14))
    assert [t.tolist() for t in row_spans(uniform)] == [[0, 0], [4, 4]]


# --- joins: every registered strategy ---------------------------------------------------------------------------

# per strategy, configs that make it do what it is for on the tiny models (an early exit that fires, klass rows
# found ready, sampling strategies sampling), each run under blockwise with blocks of 4 (rows of one step at
# different blocks and steps)
JOIN_CASES = {
    "low_confidence": [{}, {"temperature": 1.0}],
    "random": [{"temperature": 0.7}],
    "threshold": [{"threshold": 0.3}],
    "factor": [{"factor": 2.0}],
    "dream": [{"alg": "entropy"}, {"alg": "origin", "temperature": 0.8, "top_p": 0.9},
              {"alg": "maskgit_plus", "alg_temp": 0.5, "temperature": 0.5, "top_k": 5}],
    "strict_threshold": [{"threshold": 0.2, "temperature": 0.7, "top_p": 0.95},
                         {"threshold": 0.5, "at_least": "quota", "temperature": 0.5, "top_k": 5}],  # SDAR's
    "entropy_threshold": [{"threshold": 2.0}],
    "hierarchical": [{"threshold": 0.5, "low_threshold": 0.1, "temperature": 0.5}],
    "credit": [{"threshold": 0.9, "alpha": 3.0}],  # several steps per block: the credit decides
    "klass": [{"confidence": 0.2, "kl": 0.5}],
    "freedave": [{"tokens_per_step": 1, "drafts": 3}],
    "sched": [{"tau_high": 3.0, "tau_low": 0.0, "schedule": "cosine"}],
    "prophet": [{"gaps": [1e9, 1e9, 0.0]}, {"gaps": [1e9, 0.5, 0.0], "rule": "threshold", "threshold": 0.3}],
    "eb_sampler": [{"gamma": 0.5, "temperature": 0.5}],  # the plugin (plugins/dlm-eb-sampler), when installed
    "sequential": [{"temperature": 0.8, "top_k": 5, "top_p": 0.9}],  # greedy: the contract kit's joins check
    # token editing: rows hold their blocks open for edits, each on its own count of post steps
    "joint_threshold": [{"threshold": 0.5, "editing_threshold": 0.3, "max_post_steps": 3, "temperature": 0.5}],
    "ancestral": [{}, {"noise_removal": "greedy"}],  # MDLM's sampler on a masked model: stochastic counts per row
}
NOT_JOINABLE = {  # strategies that do not declare joinable, and why
    "entropy_bound": "its canvases keep per-row soft inputs and temperature schedules that a join does not carry yet",
}
REGISTERED = set(entries("decoding"))
CAUSAL = {  # strategies that need a causal model and their own iteration manager
    "jacobi": ({"name": "jacobi", "gen_length": 12, "n": 3, "blocks": 2, "r": 0.5}, [{}, {"pool_size": 4}], "qwen2",
               "append"),
    "wedlm": ({"name": "wedlm", "gen_length": 12, "window": 4}, [{"threshold": 2.0}], "wedlm", "none"),
}
join_prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=5), min_size=2, max_size=3)


def test_every_registered_strategy_has_a_join_case():
    assert REGISTERED <= set(JOIN_CASES) | set(CAUSAL) | set(NOT_JOINABLE)
    for name in NOT_JOINABLE:
        assert not resolve("decoding", name).joinable, f"{name} declares joinable: give it a join case"


def _check_joins(pipe: Pipeline, prompts, join_at, seeds):
    assert pipe.decoding.joinable, f"{type(pipe.decoding).__name__} does not declare joinable"
    alone = alone_outputs(pipe, prompts, seeds)
    joined = joined_outputs(pipe, prompts, seeds, join_at)
    assert joined == alone


@settings(max_examples=8)
@given(data=st.data(), prompts=join_prompts_st)
@pytest.mark.parametrize("name,config", [(n, c) for n, cs in JOIN_CASES.items() if n in REGISTERED for c in cs],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()) or "-")
def test_rows_joining_a_running_generation_give_what_they_give_alone(tiny_ckpt, name, config, data, prompts):
    join_at = [0] + data.draw(st.lists(st.integers(0, 12), min_size=len(prompts) - 1, max_size=len(prompts) - 1))
    seeds = data.draw(st.lists(st.integers(0, 1000), min_size=len(prompts), max_size=len(prompts)))
    cache = data.draw(st.sampled_from(["none", "prefix"]))
    pipe = Pipeline.from_config(pipeline_config(
        tiny_ckpt, decoding={"name": name, **config}, cache={"name": cache},
        iteration={"name": "blockwise", "gen_length": 16, "block_length": 4, "steps": 16}))
    _check_joins(pipe, prompts, join_at, seeds)


@pytest.fixture(scope="module")
def causal_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("joins")
    return {"qwen2": make_qwen2_checkpoint(root / "ar", mask_token_id=None, extra_vocab=3, seed=61),
            "wedlm": make_qwen2_checkpoint(root / "wedlm", seed=62)}


@settings(max_examples=8)
@given(data=st.data(), prompts=join_prompts_st)
@pytest.mark.parametrize("name,config", [(n, c) for n, (_, cs, _, _) in CAUSAL.items() for c in cs],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()) or "-")
def test_rows_joining_a_causal_generation_give_what_they_give_alone(causal_ckpts, name, config, data, prompts):
    iteration, _, model, cache = CAUSAL[name]
    pipe = Pipeline.from_config({"model": {"name": model, "path": str(causal_ckpts[model])}, "iteration": iteration,
                                 "decoding": {"name": name, **config}, "cache": {"name": cache}, "dtype": "float64"})
    if not pipe.joinable:
        lacking = [type(c).__name__ for c in (pipe.iteration, pipe.cache) if not getattr(c, "joinable", False)]
        pytest.skip(f"{name} decodes with its causal iteration and cache; {', '.join(lacking)} not joinable yet")
    join_at = [0] + data.draw(st.lists(st.integers(0, 10), min_size=len(prompts) - 1, max_size=len(prompts) - 1))
    seeds = data.draw(st.lists(st.integers(0, 1000), min_size=len(prompts), max_size=len(prompts)))
    _check_joins(pipe, prompts, join_at, seeds)


@settings(max_examples=4)
@given(shifts=st.lists(st.integers(-3, 6), min_size=1, max_size=4))
@pytest.mark.parametrize("name,config", [("credit", {"threshold": 0.9, "alpha": 3.0}),
                                         ("klass", {"confidence": 0.2, "kl": 0.5}),
                                         ("freedave", {"drafts": 3}), ("sched", JOIN_CASES["sched"][0])])
def test_a_generation_growing_and_shrinking_on_the_left_keeps_each_rows_output(tiny_ckpt, name, config, shifts):
    """The strategies' run memory follows the canvas (GenerationState.shift, as the engine makes room for a
    longer prompt): every row still gives its alone tokens and NFE."""
    pipe = Pipeline.from_config(pipeline_config(
        tiny_ckpt, decoding={"name": name, **config},
        iteration={"name": "blockwise", "gen_length": 16, "block_length": 4, "steps": 16}))
    prompts, seeds = [[5, 6, 7], [8, 9]], [0, 1]
    state = pipe.start(input_ids=prompts, seeds=seeds)
    assert state.shiftable
    for n in shifts:
        if pipe.done(state):
            break
        pipe.step(state)
        state = state.shift(max(n, -int(state.pad.min())))
    pipe.run(state)
    out = pipe.output(state)
    assert [(g.tolist(), n) for g, n in zip(out.generated, out.nfe)] == alone_outputs(pipe, prompts, seeds)
