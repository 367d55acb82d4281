"""Generation through the pipeline: batches, NFE accounting, commit invariants, early stop, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import InputError, Pipeline
from conftest import pipeline_config

CACHES = ["none", "prefix", "dual"]
DECODERS = [
    {"name": "low_confidence"},
    {"name": "random", "temperature": 1.0},
    {"name": "threshold", "threshold": 0.5},
    {"name": "factor", "factor": 1.0},
    {"name": "low_confidence", "temperature": 2.0},
]

prompts_st = st.lists(st.lists(st.integers(3, 80), min_size=1, max_size=9), min_size=2, max_size=4)


def make(ckpt, cache="none", decoding=None, **iteration):
    it = {"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 16, **iteration}
    return Pipeline.from_config(
        pipeline_config(ckpt, iteration=it, decoding=decoding or {"name": "low_confidence"}, cache={"name": cache})
    )


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("decoding", DECODERS, ids=lambda d: "-".join(map(str, d.values())))
@settings(max_examples=5)
@given(prompts=prompts_st)
def test_batched_equals_one_at_a_time(tiny_ckpt, cache, decoding, prompts):
    """Row i of a batch equals a single-prompt call; when sampling, one made with seed + i."""
    pipe = make(tiny_ckpt, cache, decoding, steps=8)
    batched = pipe.generate(input_ids=prompts)
    for i, prompt in enumerate(prompts):
        pipe.seed = i
        alone = pipe.generate(input_ids=[prompt])
        pipe.seed = 0
        assert batched.sequences[i].tolist() == alone.sequences[0].tolist()
        assert batched.nfe[i] == alone.nfe[0]
        assert batched.tokens_per_step[i] == alone.tokens_per_step[0]


@pytest.mark.parametrize("cache", CACHES)
@settings(max_examples=8)
@given(
    prompts=prompts_st,
    block_length=st.sampled_from([2, 4, 8]),
    per_block=st.integers(1, 9),
    decoding=st.sampled_from(DECODERS),
)
def test_commit_invariants_and_nfe_accounting(tiny_ckpt, cache, prompts, block_length, per_block, decoding):
    """A committed token never changes; each step commits ≥1 eligible masked position per active row;
    NFE counts the forwards a row took part in; the canvas ends with no mask."""
    gen_length = 16
    steps = (gen_length // block_length) * min(per_block, block_length)  # more steps than tokens: refused
    pipe = make(tiny_ckpt, cache, decoding, gen_length=gen_length, block_length=block_length, steps=steps)
    seen: list[torch.Tensor] = []

    def trace(state):
        canvas = state.canvas.clone()
        if seen:
            before = seen[-1]
            was_committed = before != state.mask_id
            assert torch.equal(canvas[was_committed], before[was_committed]), "a committed token changed"
            changed = (canvas != before)
            rows, cols = changed.nonzero().unbind(1)
            assert bool((cols >= state.gen_start).all()), "commit in the prompt"
            for r in set(rows.tolist()):  # each row commits inside its own current block (rows move at their pace)
                mine = cols[rows == r]
                assert len(set(((mine - state.gen_start) // block_length).tolist())) == 1, "commit across blocks"
        seen.append(canvas)

    out = pipe.generate(input_ids=prompts, trace=trace)
    state = out.state
    assert not bool(state.masked().any())
    for r in range(len(prompts)):
        steps_taken = out.tokens_per_step[r]
        assert all(c >= 1 for c in steps_taken)
        assert sum(steps_taken) == gen_length
        assert out.nfe[r] == len(steps_taken)
    if decoding["name"] in ("low_confidence", "random"):
        # the schedule: m // s per step, the first m % s steps one more → NFE = blocks × min(s, block)
        assert out.nfe == [(gen_length // block_length) * min(per_block, block_length)] * len(prompts)


def test_prompt_is_kept(tiny_ckpt):
    out = make(tiny_ckpt).generate(input_ids=[[10, 11, 12], [13]])
    assert out.sequences[0][:3].tolist() == [10, 11, 12]
    assert out.sequences[1][:1].tolist() == [13]
    assert all(len(s) == p + 16 for s, p in zip(out.sequences, (3, 1)))


def test_temperature_sampling_is_seeded(tiny_ckpt):
    cfg = pipeline_config(tiny_ckpt, decoding={"name": "low_confidence", "temperature": 1.0})
    a = Pipeline.from_config({**cfg, "seed": 7}).generate(input_ids=[[5, 6]]).generated[0]
    b = Pipeline.from_config({**cfg, "seed": 7}).generate(input_ids=[[5, 6]]).generated[0]
    c = Pipeline.from_config({**cfg, "seed": 8}).generate(input_ids=[[5, 6]]).generated[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_per_row_seeds_reproduce_single_calls_with_those_seeds(tiny_ckpt):
    """seeds=[...] gives each row its own stream: row i equals a one-prompt call with seed seeds[i]."""
    cfg = pipeline_config(tiny_ckpt, decoding={"name": "low_confidence", "temperature": 1.0})
    pipe = Pipeline.from_config(cfg)
    batched = pipe.generate(input_ids=[[5, 6], [7], [5, 6]], seeds=[11, 3, 40])
    for i, (prompt, seed) in enumerate(zip([[5, 6], [7], [5, 6]], [11, 3, 40])):
        pipe.seed = seed
        assert batched.sequences[i].tolist() == pipe.generate(input_ids=[prompt]).sequences[0].tolist()
    assert batched.generated[0].tolist() != batched.generated[2].tolist()


def test_seeds_must_match_the_prompts(tiny_ckpt):
    with pytest.raises(InputError, match="one seed per prompt"):
        make(tiny_ckpt).generate(input_ids=[[5, 6], [7]], seeds=[1])


def test_temperature_zero_is_greedy(tiny_ckpt):
    """At T=0 the committed token is the argmax of the logits (MASK excluded)."""
    pipe = make(tiny_ckpt, steps=16)
    captured = {}
    orig = pipe.model.forward

    def spy(state, plan):
        logits = orig(state, plan)
        captured["argmax"] = logits.clone().index_fill_(-1, torch.tensor([state.mask_id]), -torch.inf).argmax(-1)
        captured["before"] = state.canvas[plan.rows, plan.logits_start:plan.logits_end].clone()
        captured["cols"] = (plan.logits_start, plan.logits_end)
        return logits

    pipe.model.forward = spy

    def trace(state):
        s, e = captured["cols"]
        now = state.canvas[:, s:e]
        new = now != captured["before"]
        assert torch.equal(now[new], captured["argmax"][new])

    pipe.generate(input_ids=[[4, 5, 6]], trace=trace)


def test_early_stop_ends_row_at_eos_and_saves_forwards(tiny_ckpt):
    """A row that committed EOS with no mask before it stops and is filled with EOS."""
    base = pipeline_config(tiny_ckpt, iteration={"name": "blockwise", "gen_length": 32, "block_length": 4, "steps": 32})
    base["model"]["eos_token_ids"] = [40]  # make a token this random model emits often count as EOS
    full = Pipeline.from_config(base).generate(input_ids=[[7, 8, 9]])
    gen = full.generated[0].tolist()
    assert 40 in gen, "fixture: the random model should emit token 40"
    base["iteration"]["early_stop"] = True
    stopped = Pipeline.from_config(base).generate(input_ids=[[7, 8, 9]])
    out = stopped.generated[0].tolist()
    first = out.index(40)
    assert all(t == 40 for t in out[first:])
    assert 2 not in out[:first]
    assert stopped.nfe[0] < full.nfe[0]
    assert stopped.texts is not None and len(stopped.texts[0]) <= first


def test_rows_that_stop_leave_the_batch(tiny_ckpt):
    base = pipeline_config(tiny_ckpt, iteration={"name": "blockwise", "gen_length": 32, "block_length": 4, "steps": 32, "early_stop": True})
    base["model"]["eos_token_ids"] = [40]
    pipe = Pipeline.from_config(base)
    prompts = [[7, 8, 9], [20, 21], [33]]
    batched = pipe.generate(input_ids=prompts)
    for i, p in enumerate(prompts):
        alone = pipe.generate(input_ids=[p])
        assert batched.nfe[i] == alone.nfe[0]
        assert batched.sequences[i].tolist() == alone.sequences[0].tolist()


def test_text_prompts_and_texts(tiny_ckpt):
    out = make(tiny_ckpt).generate(["12+34=", "ab"])
    assert len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
    assert out.nfe == [16, 16]


def test_text_is_cut_at_first_end_token(tiny_ckpt):
    pipe = make(tiny_ckpt)
    out = pipe.generate(input_ids=[[5, 6]])
    gen = out.generated[0].tolist()
    gen_text_ids = gen[: next((i for i, t in enumerate(gen) if t in (0, 1)), len(gen))]
    assert out.texts[0] == pipe.model.tokenizer.decode(gen_text_ids)


def test_chat_template_wraps_prompt(tiny_ckpt):
    cfg = pipeline_config(tiny_ckpt)
    cfg["model"]["chat_template"] = True
    pipe = Pipeline.from_config(cfg)
    ids = pipe.encode(["hi"])[0].tolist()
    assert ids[0] == 3 and ids[-1] == 5  # <|startoftext|> ... <|end_header_id|>


def test_prompt_longer_than_context_is_refused(tiny_ckpt):
    pipe = make(tiny_ckpt)
    with pytest.raises(InputError, match=r"more than the model's context of 512.*at most 496"):
        pipe.generate(input_ids=[[5] * 500])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "exactly one of"),
        ({"prompts": ["a"], "input_ids": [[1]]}, "exactly one of"),
        ({"prompts": ["a"], "n": 2}, "exactly one of"),
        ({"n": 0}, "positive integer"),
        ({"input_ids": [[5, 9999]]}, "outside the vocabulary"),
        ({"input_ids": torch.ones(1, 3)}, "integer token ids"),
    ],
)
def test_bad_inputs_are_refused(tiny_ckpt, kwargs, match):
    with pytest.raises(InputError, match=match):
        make(tiny_ckpt).generate(**kwargs)


def test_input_ids_tensor_and_lists_agree(tiny_ckpt):
    pipe = make(tiny_ckpt)
    a = pipe.generate(input_ids=torch.tensor([[5, 6, 7]])).generated[0]
    b = pipe.generate(input_ids=[5, 6, 7]).generated[0]
    assert torch.equal(a, b)
