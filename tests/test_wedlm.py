"""WeDLM decoding: equal to a loop-based restatement of the reference decoder on transformers' Qwen2, the
reordered forward (every mask sees every filled token), autoregressive decoding as its window-1 case, and
rows joining a running generation giving what they give alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.cache.none import NoCache
from dlm.iteration.base import left_padded_canvas
from dlm.messages import Geometry, Reorder, Window
from dlm.models.causal import WeDLMModel
from dlm.tools.qwen2_checkpoints import EOS_ID, MASK_ID, make_qwen2_checkpoint
from tests.test_causal import _hf, assert_joins_give_alone, load, pipeline

CPU = torch.device("cpu")
prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def wedlm_ckpt(tmp_path_factory):
    return make_qwen2_checkpoint(tmp_path_factory.mktemp("wedlm") / "ckpt", seed=51)


@pytest.fixture(scope="module")
def ar_ckpt(tmp_path_factory):
    return make_qwen2_checkpoint(tmp_path_factory.mktemp("ar") / "ckpt", mask_token_id=None, extra_vocab=3, seed=52)


def reference_wedlm(hf, prompt: list[int], gen_length: int, window: int, threshold: float | None, penalty: float,
                    reorder: bool = True) -> tuple[list[int], int]:
    """WeDLM's sliding-window decoder (Tencent/WeDLM ``wedlm_decoder.py`` + ``sampler.py``, T = 0, batch 1),
    restated as a loop on transformers' Qwen2 with explicit position ids, as the reference's HF path does.

    State: the pruned prefix (in the KV cache) and a window of tokens with mask flags. Each step refills the
    window (one mask per leading filled token, within the generation budget), runs the prefix plus the window,
    filled tokens first (``reorder``), prunes the leading filled run, then fills the masks whose entropy plus
    ``penalty`` × distance from the first mask is below ``threshold`` (else the smallest). Intended differences
    (documented in dlm.iteration.wedlm): no separate prefill forward and no last forward that only prunes, and
    MASK is never proposed. Returns the generated tokens (EOS-filled after the first EOS) and the forwards.
    """
    prefix, generated = list(prompt), []
    tokens, masked = [MASK_ID] * min(window, gen_length), [True] * min(window, gen_length)
    forwards = 0
    while True:
        lead = masked.index(True) if True in masked else len(masked)
        if EOS_ID in tokens[:lead]:  # an end token in the leading filled run ends the row
            generated += tokens[: tokens.index(EOS_ID) + 1]
            break
        grow = min(lead, gen_length - len(generated) - len(tokens))
        tokens, masked = tokens + [MASK_ID] * grow, masked + [True] * grow
        if True not in masked:  # the generation region is filled
            generated += tokens
            break
        order = sorted(range(len(tokens)), key=lambda i: (masked[i], i)) if reorder else list(range(len(tokens)))
        ids = prefix + [tokens[i] for i in order]
        positions = list(range(len(prefix))) + [len(prefix) + i for i in order]
        with torch.no_grad():
            logits = hf(torch.tensor([ids]), position_ids=torch.tensor([positions])).logits[0, len(prefix):]
        forwards += 1
        out = {i: logits[k] for k, i in enumerate(order)}  # window index -> the logits of its own query
        prefix, generated = prefix + tokens[:lead], generated + tokens[:lead]  # prune
        tokens, masked = tokens[lead:], masked[lead:]
        holes = [i for i, m in enumerate(masked) if m]
        mask_logits = torch.stack([out[i + lead] for i in holes]).double()
        logp = torch.log_softmax(mask_logits, dim=-1)
        entropy = -(logp.exp() * logp).sum(dim=-1)
        score = entropy + penalty * torch.tensor([float(i - holes[0]) for i in holes], dtype=torch.float64)
        proposal = mask_logits.clone()
        proposal[:, MASK_ID] = -torch.inf
        best = proposal.argmax(dim=-1)
        fill = [k for k in range(len(holes)) if threshold is not None and score[k] < threshold]
        for k in fill or [int(score.argmin())]:
            tokens[holes[k]], masked[holes[k]] = int(best[k]), False
    return generated + [EOS_ID] * (gen_length - len(generated)), forwards


@settings(max_examples=10)
@given(prompts=prompts_st, window=st.integers(1, 6), threshold=st.sampled_from([None, 3.6, 4.0, 4.3]),
       penalty=st.sampled_from([0.0, 0.02, 0.3]), reorder=st.booleans(), cache=st.sampled_from(["none", "append"]))
def test_wedlm_equals_the_reference_decoder_restated(wedlm_ckpt, prompts, window, threshold, penalty, reorder, cache):
    gen_length = 12
    pipe = pipeline(wedlm_ckpt, {"name": "wedlm", "gen_length": gen_length, "window": window, "reorder": reorder},
                    {"name": "wedlm", "threshold": threshold, "position_penalty": penalty}, cache=cache, model="wedlm")
    out = pipe.generate(input_ids=prompts)
    for r, prompt in enumerate(prompts):
        ref, forwards = reference_wedlm(_hf(wedlm_ckpt), prompt, gen_length, window, threshold, penalty, reorder)
        assert out.generated[r].tolist() == ref
        assert out.nfe[r] == forwards


def test_the_tiny_model_fills_several_positions_per_forward_at_these_thresholds(wedlm_ckpt):
    """The thresholds above are in the tiny model's entropy range, so the parallel rule really is exercised."""
    pipe = pipeline(wedlm_ckpt, {"name": "wedlm", "gen_length": 12, "window": 6},
                    {"name": "wedlm", "threshold": 4.3}, model="wedlm")
    out = pipe.generate(input_ids=[[5, 6, 7]])
    assert max(out.tokens_per_step[0]) > 1 and out.nfe[0] < 12


def test_a_reordered_forward_lets_a_mask_see_a_later_filled_token(wedlm_ckpt):
    model = load(wedlm_ckpt, WeDLMModel)
    state = left_padded_canvas([torch.tensor([5, 6, 7])], 3, model.capabilities, CPU)
    window = Window(torch.arange(1), 3, 6, torch.tensor([[True, False, True]]), torch.ones(1, dtype=torch.long),
                    MASK_ID, Geometry.uniform(1, block_start=3, block_end=6))
    cache = NoCache(NoCache.Config())

    def mask_logits(filled: int, reorder: bool) -> torch.Tensor:
        state.canvas[0, 4] = filled  # a filled token after the mask at column 3
        w = window.extend(Reorder()) if reorder else window
        return model.forward(state, cache.plan(state, w).for_window(w))[0, 0]

    assert not torch.allclose(mask_logits(20, True), mask_logits(30, True))
    torch.testing.assert_close(mask_logits(20, False), mask_logits(30, False), rtol=0, atol=0)


@settings(max_examples=6)
@given(prompts=prompts_st, cache=st.sampled_from(["none", "append"]), threshold=st.sampled_from([None, 0.5, 10.0]))
def test_a_window_of_one_without_reordering_is_autoregressive_decoding(ar_ckpt, prompts, cache, threshold):
    gen = {"gen_length": 10}
    ar = pipeline(ar_ckpt, {"name": "autoregressive", **gen}, cache=cache).generate(input_ids=prompts)
    we = pipeline(ar_ckpt, {"name": "wedlm", "window": 1, "reorder": False, **gen}, {"name": "wedlm", "threshold": threshold},
                  cache=cache).generate(input_ids=prompts)
    assert [g.tolist() for g in we.generated] == [g.tolist() for g in ar.generated]
    assert we.nfe == ar.nfe


joins = st.lists(st.tuples(st.lists(st.integers(3, 60), min_size=1, max_size=6), st.integers(0, 6)), min_size=2,
                 max_size=3)


@pytest.mark.parametrize("cache", ["none", "append"])
@settings(max_examples=8)
@given(rows=joins, window=st.integers(1, 5), threshold=st.sampled_from([None, 4.0, 4.3]), reorder=st.booleans())
def test_rows_joining_a_wedlm_generation_give_their_alone_output(wedlm_ckpt, cache, rows, window, threshold, reorder):
    """Each row's window slides from its own first mask (its own reordered columns, its own pruned prefix)."""
    pipe = pipeline(wedlm_ckpt, {"name": "wedlm", "gen_length": 10, "window": window, "reorder": reorder},
                    {"name": "wedlm", "threshold": threshold, "position_penalty": 0.02}, cache=cache, model="wedlm")
    assert_joins_give_alone(pipe, rows)
