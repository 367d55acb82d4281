"""The field's decoding strategies (entropy_threshold, hierarchical, credit, klass, freedave): each rule
against a brute-force restatement on random logits (tests/reference_decoding.py), and the equivalences
their papers and codes imply, on tiny float64 checkpoints."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.decoding.credit import Credit
from dlm.decoding.entropy_threshold import EntropyThreshold
from dlm.decoding.freedave import furthest_agreeing
from dlm.decoding.hierarchical import Hierarchical, hierarchical_select
from dlm.decoding.klass import Klass
from dlm.decoding.proposal import threshold_select
from dlm.messages import Geometry, Window
from dlm.pipeline import Pipeline
from dlm.rng import RowRNG
from dlm.state import GenerationState
from tests import reference_decoding as ref
from tests.conftest import pipeline_config
from tests.reference import NaiveLLaDA

MASK, VOCAB = 2, 12
prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=1, max_size=3)


def random_case(seed: int, b: int = 3, w: int = 9, scale: float = 3.0):
    """Logits [b, w, V] float64 (sometimes peaked), eligible [b, w] with runs and gaps."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, w, VOCAB, generator=g, dtype=torch.float64) * scale
    logits[..., 5] += (torch.rand(b, w, generator=g) < 0.4) * 8.0  # confident positions
    eligible = torch.rand(b, w, generator=g) < 0.7
    return logits, eligible


def window_of(eligible: torch.Tensor, *, step: int = 0, block: int = 0, quota=None) -> Window:
    b, w = eligible.shape
    quota = torch.full((b,), 2) if quota is None else quota
    return Window(rows=torch.arange(b), start=0, end=w, eligible=eligible, quota=quota, mask_id=MASK,
                  geometry=Geometry.uniform(b, step=step, block=block, block_start=0, block_end=w))


def state_for(b: int, w: int, strategy=None) -> GenerationState:
    """A generation of ``b`` rows over ``w`` columns; with ``strategy``, its run memory started on it."""
    zeros = torch.zeros(b, dtype=torch.long)
    state = GenerationState(canvas=torch.full((b, w), MASK), pad=zeros, prompt_lengths=zeros, gen_start=0,
                            gen_length=w, mask_id=MASK, eos_ids=(0,), nfe=zeros.clone(),
                            done=torch.zeros(b, dtype=torch.bool))
    if strategy is not None:
        state.memory["decoding"] = strategy.start(state)
    return state


def select(strategy, logits: torch.Tensor, window: Window, state: GenerationState | None = None):
    """One step of ``strategy`` as the pipeline runs it (a fresh generation unless ``state`` is given)."""
    b, w = window.eligible.shape
    state = state_for(b, w, strategy) if state is None else state
    return strategy.select(state, strategy.prepare(state, window), logits, RowRNG(0, b, torch.device("cpu")))


def chosen(select: torch.Tensor, r: int) -> set[int]:
    return set(select[r].nonzero()[:, 0].tolist())


def pipe(ckpt, decoding, *, cache="none", **iteration):
    it = {"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 16, **iteration}
    return Pipeline.from_config(pipeline_config(ckpt, decoding=decoding, cache={"name": cache}, iteration=it))


def run(p: Pipeline, prompts):
    out = p.generate(input_ids=prompts)
    return [g.tolist() for g in out.generated], out.nfe


# --- entropy_threshold (dParallel) -------------------------------------------------------------------------


@given(seed=st.integers(0, 10**6), tau=st.floats(0.0, 2.5), strict=st.booleans())
def test_entropy_threshold_commits_the_low_entropy_positions_and_the_lowest(seed, tau, strict):
    logits, eligible = random_case(seed)
    strategy = EntropyThreshold(EntropyThreshold.Config(threshold=tau, strict=strict))
    commit = select(strategy, logits, window_of(eligible))
    for r in range(3):
        probs = [ref.softmax(row) for row in logits[r].tolist()]
        h = [-sum(p * math.log(p + 1e-12) for p in row) for row in probs]
        want = ref.entropy_choose(h, eligible[r].tolist(), tau, strict)
        assert chosen(commit.select, r) == want
        for i in want:
            assert int(commit.tokens[r, i]) == ref.argmax(logits[r, i].tolist(), skip=MASK)


# --- hierarchical (dInfer) ----------------------------------------------------------------------------------


@given(seed=st.integers(0, 10**6), low=st.floats(0.0, 1.0), high=st.floats(0.0, 1.0))
def test_hierarchical_commits_run_maxima_confident_positions_and_the_top_one(seed, low, high):
    logits, eligible = random_case(seed)
    strategy = Hierarchical(Hierarchical.Config(threshold=high, low_threshold=low))
    commit = select(strategy, logits, window_of(eligible))
    for r in range(3):
        conf = [ref.softmax(row)[ref.argmax(row, skip=MASK)] for row in logits[r].tolist()]
        assert chosen(commit.select, r) == ref.hierarchical_choose(conf, eligible[r].tolist(), low, high)


def test_hierarchical_commits_every_position_tying_its_runs_maximum():
    conf = torch.tensor([[0.6, 0.6, 0.1, 0.0, 0.5]], dtype=torch.float64)
    eligible = torch.tensor([[True, True, True, False, True]])
    assert chosen(hierarchical_select(conf, eligible, 0.4, 0.9), 0) == {0, 1, 4}


@given(seed=st.integers(0, 10**6), tau=st.floats(0.0, 1.0))
def test_hierarchical_without_its_low_threshold_is_the_strict_threshold_rule(seed, tau):
    logits, eligible = random_case(seed)
    conf = torch.softmax(logits, dim=-1).amax(dim=-1)
    strict = threshold_select(conf, eligible, tau, strict=True)
    assert torch.equal(hierarchical_select(conf, eligible, 1.5, tau), strict)


@settings(max_examples=6)
@given(prompts=prompts_st)
def test_hierarchical_without_its_low_threshold_generates_what_threshold_generates(tiny_ckpt, prompts):
    a = run(pipe(tiny_ckpt, {"name": "hierarchical", "low_threshold": 1.5}), prompts)
    assert a == run(pipe(tiny_ckpt, {"name": "threshold"}), prompts)


# --- credit (dInfer) -----------------------------------------------------------------------------------------


def credit_block(strategy, logits_seq, eligible_seq, block: int = 0):
    """Drive ``strategy`` through the steps of one block (one generation); the commits of each step and the
    credit table left in the run memory."""
    state = state_for(*eligible_seq[0].shape, strategy)
    out = [select(strategy, lg, window_of(el, step=i, block=block), state)
           for i, (lg, el) in enumerate(zip(logits_seq, eligible_seq))]
    return out, strategy.memory(state).table.clone()


@settings(max_examples=15)
@given(seed=st.integers(0, 10**6), alpha=st.floats(0.0, 3.0), tau=st.floats(0.3, 1.0))
def test_credit_matches_its_restatement_over_the_steps_of_a_block(seed, alpha, tau):
    steps = [random_case(seed + i) for i in range(4)]
    eligible = steps[0][1]
    logits_seq, eligible_seq = [], []
    for lg, _ in steps:  # the eligible set shrinks by what each step commits
        logits_seq.append(lg)
        eligible_seq.append(eligible.clone())
    strategy = Credit(Credit.Config(alpha=alpha, threshold=tau))
    commits, _ = credit_block(strategy, logits_seq, eligible_seq)
    for r in range(3):
        want = ref.credit_steps([lg[r].tolist() for lg in logits_seq], [e[r].tolist() for e in eligible_seq],
                                alpha=alpha, power=0.2, decay=0.8, tau=tau, mask_id=MASK)
        got = [{i: int(c.tokens[r, i]) for i in chosen(c.select, r)} for c in commits]
        assert got == want


@given(n=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_credit_after_n_steps_with_a_constant_argmax_is_the_decayed_sum(n, seed):
    logits, eligible = random_case(seed)
    eligible[:] = True
    _, table = credit_block(Credit(Credit.Config()), [logits] * n, [eligible] * n)
    p = torch.softmax(logits.float(), dim=-1).max(dim=-1)
    got = table.gather(-1, p.indices[..., None])[..., 0]
    want = sum(0.8**k * p.values.double() ** 0.2 for k in range(n))
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=0)


def test_credit_starts_afresh_in_a_new_block():
    logits, eligible = random_case(7)
    strategy = Credit(Credit.Config())
    state = state_for(3, 9, strategy)
    for step in range(3):
        select(strategy, logits, window_of(eligible, step=step, block=0), state)
    first = select(strategy, logits, window_of(eligible, step=0, block=1), state)
    fresh, _ = credit_block(Credit(Credit.Config()), [logits], [eligible], block=1)
    assert torch.equal(first.select, fresh[0].select)


@settings(max_examples=6)
@given(prompts=prompts_st, cache=st.sampled_from(["none", "dual"]))
def test_credit_with_alpha_zero_generates_what_threshold_generates(tiny_ckpt, prompts, cache):
    a = run(pipe(tiny_ckpt, {"name": "credit", "alpha": 0.0}, cache=cache), prompts)
    assert a == run(pipe(tiny_ckpt, {"name": "threshold"}, cache=cache), prompts)


# --- klass (KLASS) -------------------------------------------------------------------------------------------


@settings(max_examples=15)
@given(seed=st.integers(0, 10**6), conf=st.floats(0.3, 0.95), kl=st.floats(0.01, 2.0), history=st.integers(1, 3))
def test_klass_matches_its_restatement_over_consecutive_steps(seed, conf, kl, history):
    base, eligible = random_case(seed, scale=4.0)
    g = torch.Generator().manual_seed(seed)
    logits_seq = [base + 0.3 * i * torch.randn(base.shape, generator=g, dtype=torch.float64) for i in range(4)]
    quota = torch.tensor([1, 2, 3])
    strategy = Klass(Klass.Config(confidence=conf, kl=kl, history=history))
    state = state_for(3, 9, strategy)
    commits = [select(strategy, lg, window_of(eligible, step=i, quota=quota), state) for i, lg in enumerate(logits_seq)]
    for r in range(3):
        want = ref.klass_steps([lg[r].tolist() for lg in logits_seq], [eligible[r].tolist()] * 4, [int(quota[r])] * 4,
                               list(range(4)), conf_tau=conf, kl_tau=kl, history=history, mask_id=MASK)
        assert [chosen(c.select, r) for c in commits] == want


@settings(max_examples=6)
@given(prompt=st.lists(st.integers(3, 60), min_size=1, max_size=6), kl=st.sampled_from([0.01, 0.5, 5.0]))
def test_klass_generates_what_the_authors_loop_generates_across_blocks(tiny_ckpt, prompt, kl):
    """KL memory of every position from the window on, carried over blocks (needs the widened logits)."""
    naive = NaiveLLaDA(tiny_ckpt)
    want = ref.klass_generate(lambda x: naive.forward(torch.tensor(x), 0)[0], prompt, mask_id=naive.mask_id,
                              gen_length=16, block_length=8, steps=8, conf_tau=0.3, kl_tau=kl, history=2)
    got = run(pipe(tiny_ckpt, {"name": "klass", "confidence": 0.3, "kl": kl}, steps=8), [prompt])
    assert (got[0][0], got[1][0]) == want


@settings(max_examples=6)
@given(prompts=prompts_st.filter(lambda p: len(p) >= 2))
def test_klass_rows_keep_their_own_memory_in_a_batch(tiny_ckpt, prompts):
    p = pipe(tiny_ckpt, {"name": "klass", "confidence": 0.3, "kl": 0.5}, steps=8)
    batched = run(p, prompts)
    alone = [run(p, [row]) for row in prompts]
    assert batched == ([a[0][0] for a in alone], [a[1][0] for a in alone])


# --- freedave (FreeDave) -------------------------------------------------------------------------------------


@given(seed=st.integers(0, 10**6), k=st.integers(1, 5))
def test_freedave_verification_reaches_the_draft_its_reference_loop_reaches(seed, k):
    g = torch.Generator().manual_seed(seed)
    drafts = torch.rand(2, k, 6, generator=g) < 0.4
    targets = drafts | (torch.rand(2, k, 6, generator=g) < 0.5)
    draft_tokens = torch.randint(3, 5, (2, k, 6), generator=g)
    target_tokens = torch.where(drafts, draft_tokens, torch.randint(3, 5, (2, k, 6), generator=g))
    best = furthest_agreeing(drafts, draft_tokens, targets, target_tokens)
    for r in range(2):
        d = [{i: int(draft_tokens[r, j, i]) for i in chosen(drafts[:, j], r)} for j in range(k)]
        t = [{i: int(target_tokens[r, j, i]) for i in chosen(targets[:, j], r)} for j in range(k)]
        assert int(best[r]) == ref.verify_chain(d, t)


@settings(max_examples=10)
@given(prompts=prompts_st, n=st.sampled_from([1, 2, 4]), drafts=st.integers(1, 4),
       cache=st.sampled_from(["none", "dual"]))
def test_freedave_generates_the_static_rules_tokens_in_no_more_forwards(tiny_ckpt, prompts, n, drafts, cache):
    fast = run(pipe(tiny_ckpt, {"name": "freedave", "tokens_per_step": n, "drafts": drafts}, cache=cache), prompts)
    static = run(pipe(tiny_ckpt, {"name": "low_confidence"}, cache=cache, steps=16 // n), prompts)
    assert fast[0] == static[0]
    assert all(a <= b for a, b in zip(fast[1], static[1]))


def test_freedave_saves_forwards_on_a_tiny_model(tiny_ckpt):
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    fast = run(pipe(tiny_ckpt, {"name": "freedave", "drafts": 4}, gen_length=32), prompts)
    static = run(pipe(tiny_ckpt, {"name": "low_confidence"}, gen_length=32, steps=32), prompts)
    assert fast[0] == static[0] and static[1] == [32, 32, 32]
    assert sum(fast[1]) < sum(static[1])
