"""Continuous batching (dlm.engine): rows joining, leaving and a canvas growing on the left change no row."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.engine import Engine, Request, row_bytes
from dlm.pipeline import Pipeline
from tests.conftest import pipeline_config

PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20, 21], [22, 23, 24, 25, 26, 27]]


def pipeline(ckpt, cache="none", decoding="threshold", **decoding_args) -> Pipeline:
    dec = {"name": decoding, **decoding_args}
    if decoding == "threshold":
        dec.setdefault("threshold", 0.3)
    return Pipeline.from_config(pipeline_config(
        ckpt, cache={"name": cache}, decoding=dec,
        iteration={"name": "blockwise", "gen_length": 12, "block_length": 4, "steps": 12},
    ))


def alone(pipe: Pipeline, prompts, seeds):
    return [(o.generated[0].tolist(), o.nfe[0]) for o in
            (pipe.generate(input_ids=[p], seeds=[s]) for p, s in zip(prompts, seeds))]


def through_engine(engine: Engine, prompts, seeds, arrivals):
    """Submit prompt i before engine step ``arrivals[i]``; step until every row is back."""
    got, step = {}, 0
    order = sorted(range(len(prompts)), key=lambda i: arrivals[i])
    while len(got) < len(prompts):
        engine.submit(Request(prompts[i], seeds[i], i) for i in order if arrivals[i] == step)
        results, failures = engine.step()
        assert not failures, failures[0].error
        for r in results:
            got[r.tag] = (r.output.generated[0].tolist(), r.output.nfe[0])
        step += 1
        assert step < 500
    return [got[i] for i in range(len(prompts))]


@settings(max_examples=8)
@given(arrivals=st.lists(st.integers(0, 6), min_size=len(PROMPTS), max_size=len(PROMPTS)),
       cache=st.sampled_from(["none", "prefix", "dual"]), bucket=st.sampled_from([1, 4, 16]))
def test_rows_joining_at_any_step_give_their_alone_output(tiny_ckpt, arrivals, cache, bucket):
    """Tokens and NFE of every row equal its alone run, whenever it joined; a long prompt arriving late makes
    the running generation grow on the left (bucket 1 and 4), a short one joins as it is."""
    pipe = pipeline(tiny_ckpt, cache)
    seeds = list(range(len(PROMPTS)))
    engine = Engine(pipe, max_rows=3, bucket=bucket)
    assert through_engine(engine, PROMPTS, seeds, arrivals) == alone(pipe, PROMPTS, seeds)
    assert engine.stats["cohorts"] >= 1 and engine.stats["joins"] + engine.stats["cohorts"] >= 1


def test_a_longer_prompt_widens_the_running_generation_and_the_padding_is_trimmed_after(tiny_ckpt):
    pipe = pipeline(tiny_ckpt, "dual", "low_confidence")
    engine = Engine(pipe, max_rows=4, bucket=4)
    prompts, seeds = [PROMPTS[0], PROMPTS[2]], [0, 1]
    engine.submit([Request(prompts[0], 0, 0)])
    engine.step()
    assert engine.cohorts[0].gen_start == 4
    engine.submit([Request(prompts[1], 1, 1)])  # 11 tokens: the region moves to column 12
    got = {}
    results, _ = engine.step()
    assert len(engine.cohorts) == 1 and engine.cohorts[0].gen_start == 12 and engine.stats["shifts"] == 1
    while len(got) < 2:
        for r in results:
            got[r.tag] = (r.output.generated[0].tolist(), r.output.nfe[0])
        results, _ = engine.step() if len(got) < 2 else ([], [])
    assert [got[0], got[1]] == alone(pipe, prompts, seeds)


def test_shifting_a_running_generation_changes_no_row(tiny_ckpt):
    pipe = pipeline(tiny_ckpt, "prefix", "low_confidence")
    want = alone(pipe, PROMPTS[:2], [0, 1])
    state = pipe.start(input_ids=PROMPTS[:2], seeds=[0, 1])
    for n in (5, -3, 7, -9):  # grow, shrink, grow, shrink (never below the longest prompt)
        pipe.step(state)
        state = state.shift(n)
    pipe.run(state)
    out = pipe.output(state)
    assert [(g.tolist(), n) for g, n in zip(out.generated, out.nfe)] == want
    with pytest.raises(ValueError, match="padding"):
        state.shift(-state.gen_start)


def test_two_threads_share_one_pipeline(tiny_ckpt):
    pipe = pipeline(tiny_ckpt, "dual", "threshold")
    want = {i: alone(pipe, [p], [i])[0] for i, p in enumerate(PROMPTS)}
    got, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                o = pipe.generate(input_ids=[PROMPTS[i]], seeds=[i])
                got.setdefault(i, set()).add((tuple(o.generated[0].tolist()), o.nfe[0]))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == {i: {(tuple(w[0]), w[1])} for i, w in want.items()}


def test_a_pipeline_that_cannot_join_rows_runs_newcomers_beside_and_still_exactly(tiny_ckpt, monkeypatch):
    pipe = pipeline(tiny_ckpt, "none", "threshold")
    monkeypatch.setattr(type(pipe.decoding), "joinable", False)
    assert not pipe.joinable
    engine = Engine(pipe, max_rows=4)
    arrivals = [0, 1, 2, 2, 3]
    assert through_engine(engine, PROMPTS, list(range(5)), arrivals) == alone(pipe, PROMPTS, list(range(5)))
    assert engine.stats["joins"] == 0 and engine.stats["cohorts"] >= 3


def test_a_failing_step_fails_its_rows_and_the_engine_goes_on(tiny_ckpt, monkeypatch):
    pipe = pipeline(tiny_ckpt)
    engine = Engine(pipe, max_rows=4)
    engine.submit([Request(PROMPTS[0], 0, "a")])
    real = pipe.step
    monkeypatch.setattr(pipe, "step", lambda state: (_ for _ in ()).throw(RuntimeError("boom")))
    results, failures = engine.step()
    assert not results and [f.tags for f in failures] == [["a"]] and "boom" in str(failures[0].error)
    monkeypatch.setattr(pipe, "step", real)
    engine.submit([Request(PROMPTS[1], 1, "b")])
    got = []
    while not engine.idle:
        got += engine.step()[0]
    assert [r.tag for r in got] == ["b"]


def test_engine_refuses_bad_settings_and_bad_prompts(tiny_ckpt):
    from dlm.errors import InputError

    pipe = pipeline(tiny_ckpt)
    with pytest.raises(InputError, match="max_rows"):
        Engine(pipe, max_rows=0)
    engine = Engine(pipe)
    with pytest.raises(InputError, match="MASK"):
        engine.submit([Request([5, pipe.model.capabilities.mask_id], 0)])
    assert engine.idle  # nothing was queued


def test_row_bytes_counts_the_kv_buffers_of_a_cache_and_the_logits(tiny_ckpt):
    none, dual = pipeline(tiny_ckpt, "none"), pipeline(tiny_ckpt, "dual")
    spec, vocab = dual.model.net.spec, dual.model.capabilities.vocab_size
    length = 5 + 12
    assert row_bytes(none, 5) == length * vocab * (8 + 8)
    assert row_bytes(dual, 5) - row_bytes(none, 5) == 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * length * 8
    assert torch.finfo(dual.model.dtype).bits == 64
