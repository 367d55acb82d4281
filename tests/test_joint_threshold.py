"""``joint_threshold`` (LLaDA2.1's M2T + T2T editing, LLaDA2.0's block loop without editing) and the interface it
brings: a commit's ``Edits``, held blocks in the iteration managers, and caches that see edited columns.

Generation on a tiny LLaDA2 checkpoint equals the slow restatements of the released loops (tests/reference_llada2.py)
token for token, with the NFE at which their answer became final (dlm stops there); the comparison with the
released ``generate`` functions themselves is in docs/fidelity.md.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dlm
from dlm.cache.base import CacheManager
from dlm.cache.none import NoCache
from dlm.decoding.low_confidence import LowConfidence
from dlm.errors import CompositionError, DecodingError
from dlm.messages import Commit, Edits, Geometry, Window
from dlm.models.llada2 import LLaDA2Model
from dlm.models.llada_moe import LLaDAMoEModel
from dlm.state import GenerationState
from dlm.testing import make_llada2_checkpoint, make_llada_moe_checkpoint
from reference_llada2 import NaiveLLaDA2, naive_generate_llada20, naive_generate_llada21

EOS = 0


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    return {"llada2": make_llada2_checkpoint(root / "llada2", num_key_value_heads=2, seed=21),
            "one_layer": make_llada_moe_checkpoint(root / "one", num_hidden_layers=1, seed=22)}


def pipeline(path, decoding, *, gen_length, block, cache="none", iteration="block_diffusion", model="llada2"):
    it = ({"name": "block_diffusion", "gen_length": gen_length, "sub_block_size": block} if iteration == "block_diffusion"
          else {"name": "blockwise", "gen_length": gen_length, "block_length": block, "steps": gen_length})
    section = {"name": model, "path": str(path), "eos_token_ids": [EOS]}
    if model == "llada2":
        section["block_length"] = block
    return dlm.Pipeline.from_config({"model": section, "iteration": it, "decoding": {"name": "joint_threshold", **decoding},
                                     "cache": {"name": cache}, "dtype": "float64", "threads": 1})


def answer(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS) + 1] if EOS in ids else ids


cases = st.tuples(
    st.lists(st.integers(3, 85), min_size=1, max_size=7),  # prompt
    st.sampled_from([4, 8]),  # block length
    st.sampled_from([(0.95, 0.9), (0.3, 0.3), (0.2, 0.0), (0.5, 0.1)]),  # threshold, editing threshold
    st.sampled_from([0, 1, 16]),  # max_post_steps
    st.sampled_from([1, 2]),  # num_to_transfer
    st.sampled_from(["none", "block"]),
)


@settings(max_examples=10, deadline=None)
@given(case=cases)
def test_editing_generation_equals_llada21s_loop(ckpts, case):
    prompt, block, (threshold, editing), post, count, cache = case
    gen = -(-(len(prompt) + 8) // block) * block - len(prompt)  # whole blocks, as the released loop pads to
    decoding = {"threshold": threshold, "editing_threshold": editing, "max_post_steps": post, "num_to_transfer": count}
    out = pipeline(ckpts["llada2"], decoding, gen_length=gen, block=block, cache=cache).generate(input_ids=[prompt])
    tokens, _, final, _ = naive_generate_llada21(NaiveLLaDA2(ckpts["llada2"], block=block), prompt, gen_length=gen,
                                                 threshold=threshold, editing_threshold=editing, max_post_steps=post,
                                                 count=count)
    assert answer(out.generated[0].tolist()) == tokens and int(out.nfe[0]) == final


@pytest.mark.parametrize("steps,threshold", [(4, 0.95), (2, 0.3), (1, 0.95)])
def test_without_editing_it_is_llada20s_block_loop(ckpts, steps, threshold):
    prompt, block = [9, 41, 12, 66, 30], 4
    decoding = {"threshold": threshold, "editing_threshold": None, "steps": steps}
    out = pipeline(ckpts["llada2"], decoding, gen_length=11, block=block, cache="block").generate(input_ids=[prompt])
    tokens, _, final = naive_generate_llada20(NaiveLLaDA2(ckpts["llada2"], block=block), prompt, gen_length=11,
                                              steps=steps, threshold=threshold)
    assert answer(out.generated[0].tolist()) == tokens and int(out.nfe[0]) == final


def test_edits_happen_and_the_block_cache_recomputes_the_edited_blocks(ckpts):
    """Editing threshold 0: every placed token the model would now write differently is rewritten, many times per
    block. The block cache, which reuses completed blocks' K/V, still gives no-cache's tokens and NFE."""
    decoding = {"threshold": 0.3, "editing_threshold": 0.0, "max_post_steps": 3}
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15]]
    outs = {c: pipeline(ckpts["llada2"], decoding, gen_length=12, block=4, cache=c).generate(input_ids=prompts)
            for c in ("none", "block")}
    assert [g.tolist() for g in outs["block"].generated] == [g.tolist() for g in outs["none"].generated]
    assert outs["block"].nfe == outs["none"].nfe
    _, _, _, edits = naive_generate_llada21(NaiveLLaDA2(ckpts["llada2"], block=4), prompts[0], gen_length=13,
                                            threshold=0.3, editing_threshold=0.0, max_post_steps=3)
    assert edits >= 5


@pytest.mark.parametrize("cache", ["prefix", "dual", "vicinity", "dkv", "d2cache"])
def test_caches_reusing_kv_are_exact_on_a_one_layer_model_with_edits(ckpts, cache):
    """One layer: a column's K/V depend on its token only, so a cache is exact iff it recomputes every column whose
    token changed, edited placed tokens included (blockwise on a bidirectional model)."""
    decoding = {"threshold": 0.3, "editing_threshold": 0.0, "max_post_steps": 2}
    run = lambda c: pipeline(ckpts["one_layer"], decoding, gen_length=16, block=8, cache=c, iteration="blockwise",  # noqa: E731
                             model="llada_moe").generate(input_ids=[[5, 6, 7, 8], [9, 10]])
    ours, none = run(cache), run("none")
    assert [g.tolist() for g in ours.generated] == [g.tolist() for g in none.generated] and ours.nfe == none.nfe


def test_a_batch_row_gives_what_it_gives_alone(ckpts):
    decoding = {"threshold": 0.3, "editing_threshold": 0.1, "max_post_steps": 4}
    pipe = pipeline(ckpts["one_layer"], decoding, gen_length=16, block=8, iteration="blockwise", model="llada_moe")
    prompts = [[5, 6, 7, 8], [9, 10], [40, 41, 42]]
    batched = pipe.generate(input_ids=prompts)
    for r, p in enumerate(prompts):
        alone = pipe.generate(input_ids=[p])
        assert batched.generated[r].tolist() == alone.generated[0].tolist() and batched.nfe[r] == alone.nfe[0]


# --- the interface: Edits, held blocks, compositions ----------------------------------------------------------


def _state_and_window(canvas: list[int], gen_start: int, block: tuple[int, int], eligible: list[bool]):
    c = torch.tensor([canvas])
    state = GenerationState(canvas=c, pad=torch.zeros(1, dtype=torch.long), prompt_lengths=torch.tensor([gen_start]),
                            gen_start=gen_start, gen_length=len(canvas) - gen_start, mask_id=2, eos_ids=(0,),
                            nfe=torch.zeros(1, dtype=torch.long), done=torch.zeros(1, dtype=torch.bool))
    lo, hi = block
    window = Window(rows=torch.tensor([0]), start=lo, end=hi, eligible=torch.tensor([eligible]),
                    quota=torch.ones(1, dtype=torch.long), mask_id=2,
                    geometry=Geometry.uniform(1, block_start=lo, block_end=hi))
    return state, window


def _commit(select, edit_at, token=7, hold=None, width=4):
    mask = torch.zeros(1, width, dtype=torch.bool)
    mask[0, edit_at] = True
    tokens = torch.full((1, width), token)
    return Commit(torch.tensor([select]), torch.full((1, width), 9), Edits(mask, tokens, hold))


def test_an_edit_rewrites_a_placed_token_records_it_and_holds_the_row():
    state, window = _state_and_window([4, 5, 6, 2, 8, 2], 2, (2, 6), [False, True, False, True])
    state.commit(window, _commit([False, True, False, False], [2], hold=torch.tensor([True])))
    assert state.canvas[0].tolist() == [4, 5, 6, 9, 7, 2]
    assert state.edited[0].tolist() == [False, False, False, False, True, False] and state.held.tolist() == [True]
    state.commit(window, Commit(torch.tensor([[False, False, False, True]]), torch.full((1, 4), 3)))
    assert state.edited is None and state.held.tolist() == [False]  # a commit without Edits releases the row


@pytest.mark.parametrize("eligible,select,edit_at,token,message", [
    ([False, True, False, True], [False, True, False, False], [3], 7, "a masked position"),
    ([False, True, False, True], [False, True, False, False], [1], 7, "a masked position"),  # selected in the commit
    ([False, True, False, True], [False, True, False, False], [0], 2, "into MASK"),
])
def test_edits_breaking_the_invariant_are_refused(eligible, select, edit_at, token, message):
    state, window = _state_and_window([4, 5, 6, 2, 8, 2], 2, (2, 6), eligible)
    with pytest.raises(DecodingError, match=message):
        state.commit(window, _commit(select, edit_at, token))


def test_an_edit_outside_the_block_or_in_the_prompt_is_refused():
    state, window = _state_and_window([4, 5, 6, 2, 8, 2, 3, 3], 3, (3, 7), [True, False, True, False])
    wide = window.widen(1, 8)  # the logits span reaches the prompt (columns 1, 2) and the next block (7)
    for col in (1, 2, 7):
        mask = torch.zeros(1, 7, dtype=torch.bool)
        mask[0, col - 1] = True
        commit = Commit(torch.tensor([[True, False, False, False]]), torch.full((1, 4), 9), Edits(mask, torch.full((1, 7), 7)))
        with pytest.raises(DecodingError, match="outside its row's current block or inside the prompt"):
            state.commit(wide, commit)


class HoldThrice(LowConfidence):
    """low_confidence that holds each block open for three steps after its last commit, editing nothing (its
    count is kept on the state, per row and block, as run memory would be)."""

    def select(self, state, window, logits, generator):
        commit = super().select(state, window, logits, generator)
        left = (state.masked()[window.rows, window.start : window.end] & ~commit.select).any(dim=1)
        counts = state.memory.setdefault("test", {})
        held = []
        for i, (r, b) in enumerate(zip(window.rows.tolist(), window.block.tolist())):
            if not left[i]:
                counts[r, b] = counts.get((r, b), 0) + 1
            held.append(bool(left[i]) or counts[r, b] <= 3)
        empty = torch.zeros(len(window.rows), window.width, dtype=torch.bool)
        return commit.extend(Edits(empty, commit.tokens, torch.tensor(held)))


@pytest.mark.parametrize("iteration", ["blockwise", "block_diffusion"])
def test_a_held_block_keeps_its_row_with_nothing_eligible_and_defers_the_early_stop(ckpts, iteration):
    """Two blocks of 4, one token per step, then three held steps with nothing eligible per block. The row's
    answer ends in its first block (an end token with nothing masked before it): it stops when that block is
    released, not when the end token is committed."""
    end = 66  # a token this tiny model favours, as the end token: the answer ends in its first block
    model = LLaDA2Model.load(LLaDA2Model.Config(path=ckpts["llada2"], block_length=4, eos_token_ids=[end]),
                             dtype=torch.float64, device=torch.device("cpu"))
    it = ({"gen_length": 8, "block_length": 4, "steps": 8, "early_stop": True}
          if iteration == "blockwise" else {"gen_length": 8, "sub_block_size": 4})
    from dlm.registry import resolve

    cls = resolve("iteration", iteration)
    steps = []
    pipe = dlm.Pipeline(model, cls(cls.Config(**it)), HoldThrice(LowConfidence.Config()), NoCache(NoCache.Config()))
    prompt = [40, 41, 42, 43]
    out = pipe.generate(input_ids=[prompt], trace=lambda s: steps.append(int(s.last_window.eligible.sum())))
    assert steps == [4, 3, 2, 1, 0, 0, 0] and int(out.nfe[0]) == 7 and end in out.generated[0][:4].tolist()
    plain = dlm.Pipeline(model, cls(cls.Config(**it)), LowConfidence(LowConfidence.Config()), NoCache(NoCache.Config()))
    assert int(plain.generate(input_ids=[prompt]).nfe[0]) == 4  # without the hold: stops at its end token


def test_compositions_it_cannot_serve_are_refused(ckpts):
    with pytest.raises(CompositionError, match="iteration 'dream'.*holds a block open"):
        dlm.Pipeline.from_config({"model": {"name": "llada_moe", "path": str(ckpts["one_layer"])},
                                  "iteration": {"name": "dream", "gen_length": 8, "steps": 8},
                                  "decoding": {"name": "joint_threshold"}, "cache": {"name": "none"}})

    class Unaware(CacheManager):  # a cache plugin that does not declare edit_aware
        Config = NoCache.Config
        plan = NoCache.plan

    model = LLaDAMoEModel.load(LLaDAMoEModel.Config(path=ckpts["one_layer"]), dtype=torch.float64,
                               device=torch.device("cpu"))
    from dlm.decoding.joint_threshold import JointThreshold
    from dlm.iteration.blockwise import Blockwise

    with pytest.raises(CompositionError, match="cache 'Unaware'.*cached K/V must then be recomputed"):
        dlm.Pipeline(model, Blockwise(Blockwise.Config(gen_length=8, block_length=8, steps=8)),
                     JointThreshold(JointThreshold.Config()), Unaware(Unaware.Config()))


def test_the_server_refuses_an_editing_strategy(ckpts):
    """`dlm serve` streams each committed token once; an edit could rewrite one already sent."""
    pytest.importorskip("fastapi")
    from dlm.errors import ConfigError
    from dlm.tools.serve.app import create_app

    pipe = pipeline(ckpts["one_layer"], {}, gen_length=8, block=8, iteration="blockwise", model="llada_moe")
    with pytest.raises(ConfigError, match="decoding 'joint_threshold' edits placed tokens"):
        create_app(pipe)
