"""AdaBlock-dLLM (``adablock``): with the adaptivity off it is ``blockwise``, with it on the blocks follow the most
confident delimiter; batch rows give what they give alone under ``none``/``prefix``/``dual`` (each row's own block
bounds); the contract kit; refusals; and the authors' own code's tokens and NFE (float64, tiny random
checkpoints whose character tokenizer gives the delimiters "\\n", "." and "," their meaning)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from dlm import Pipeline
from dlm.errors import CompositionError, ConfigError, DecodingError
from dlm.iteration.adablock import AdaBlockConfig
from dlm.testing import make_llada_checkpoint
from dlm.testing.contracts import check_component
from tests import reference_adablock as ref
from tests.conftest import pipeline_config

prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=1, max_size=3)
caches_st = st.sampled_from(["none", "prefix", "dual"])
decoding_st = st.sampled_from([{"name": "low_confidence"}, {"name": "threshold", "threshold": 0.3}])


def delimiters(ckpt) -> list[int]:
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    return [tok.token_to_id(c) for c in "\n.,"]


def delimited_checkpoint(directory, kv: int, seed: int):
    """2 layers, d 32; the MASK row of the output head zeroed (the authors' loop commits a MASK argmax) and the
    delimiters' rows scaled by 2, so that a random model predicts them now and then (probabilities 0.24 to 1)."""
    path = make_llada_checkpoint(directory / "llada", n_kv_heads=kv, seed=seed)
    name, mask = "model.transformer.ff_out.weight", json.loads((path / "config.json").read_text())["mask_token_id"]
    for shard in path.glob("*.safetensors"):
        tensors = load_file(str(shard))
        tensors[name][mask] = 0
        tensors[name][delimiters(path)] *= 2
        save_file(tensors, str(shard), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return delimited_checkpoint(tmp_path_factory.mktemp("ada"), 2, 1)


@pytest.fixture(scope="module", params=[(2, 1), (4, 2)], ids=["gqa", "mha"])
def both(request, tmp_path_factory):
    return delimited_checkpoint(tmp_path_factory.mktemp("ada-" + "-".join(map(str, request.param))), *request.param)


def ada(ckpt, gen=16, block=4, threshold=0.05, **kw):
    return {"name": "adablock", "gen_length": gen, "block_length": block, "delimiter_ids": delimiters(ckpt),
            "delimiter_threshold": threshold, **kw}


def run(ckpt, iteration, prompts, decoding=None, cache="none", trace=None):
    cfg = pipeline_config(ckpt, iteration=iteration, decoding=decoding or {"name": "threshold", "threshold": 0.9},
                          cache={"name": cache})
    pipe = Pipeline.from_config(cfg)
    state = pipe.run(pipe.start(input_ids=prompts), trace)
    out = pipe.output(state)
    return [g.tolist() for g in out.generated], out.nfe


def blocks(ckpt, iteration, prompt, cache="none", decoding=None) -> list[int]:
    """The block lengths the generation of ``prompt`` decided (each block's first narrowed window)."""
    seen = {}

    def trace(state):
        w = state.last_window
        seen.setdefault(int(w.block[0]), int(w.block_end[0] - w.block_start[0]))

    run(ckpt, iteration, [prompt], decoding, cache, trace)
    return [seen[k] for k in sorted(seen)]


@settings(max_examples=4, deadline=None)
@given(prompts=prompts_st, cache=caches_st, decoding=decoding_st)
def test_without_adaptivity_it_is_blockwise(ckpt, prompts, cache, decoding):
    blockwise = {"name": "blockwise", "gen_length": 16, "block_length": 4, "steps": 16}
    want = run(ckpt, blockwise, prompts, decoding, cache)
    assert run(ckpt, ada(ckpt, threshold=None), prompts, decoding, cache) == want


def test_adaptive_blocks_tile_the_region_within_the_lookahead_and_differ_from_fixed_ones(ckpt):
    """gen 32, block 8: the look-ahead is 8 columns; a delimiter at least 5% sure ends the block after it."""
    fixed = blocks(ckpt, ada(ckpt, 32, 8, None), [51, 59, 29])
    assert fixed == [8, 8, 8, 8]
    adaptive = [blocks(ckpt, ada(ckpt, 32, 8), p) for p in ([51, 59, 29], [35, 34, 28, 9, 77, 40, 12], [7, 8])]
    assert all(sum(b) == 32 and max(b) <= 8 for b in adaptive)
    assert any(b != fixed for b in adaptive)
    assert blocks(ckpt, ada(ckpt, 32, 8, 1.0), [51, 59, 29]) == fixed  # no random prediction is that sure
    assert blocks(ckpt, ada(ckpt, 20, 8, None), [5]) == [8, 8, 4]  # the last block takes what remains
    assert blocks(ckpt, ada(ckpt, 16, 64, None), [5]) == [16]  # a block longer than gen_length: one block, as theirs


def test_every_id_a_delimiter_at_threshold_zero_ends_each_block_at_its_most_confident_column(ckpt):
    iteration = ada(ckpt, 16, 4, 0.0, delimiter_ids=list(range(3, 86)), lookahead=0.5)
    lengths = blocks(ckpt, iteration, [9, 10, 11], cache="dual")
    assert sum(lengths) == 16 and max(lengths) <= 8 and lengths != [4] * 4


@settings(max_examples=4, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=2, max_size=3),
       cache=caches_st, decoding=decoding_st)
def test_batch_rows_give_what_they_give_alone(ckpt, prompts, cache, decoding):
    iteration = ada(ckpt, 24, 8, 0.7)  # rows decide different blocks and reach them at different steps
    tokens, nfe = run(ckpt, iteration, prompts, decoding, cache)
    for i, p in enumerate(prompts):
        assert run(ckpt, iteration, [p], decoding, cache) == ([tokens[i]], [nfe[i]])


@pytest.mark.parametrize("config", [
    {"gen_length": 16, "block_length": 4, "delimiter_ids": [20, 21, 85], "delimiter_threshold": 0.02},
    {"gen_length": 16, "block_length": 4, "delimiter_ids": list(range(3, 86)), "delimiter_threshold": 0.0,
     "lookahead": 0.5},
])
def test_the_contract_kit_passes(config):
    check_component("iteration", "adablock", config)


def test_bad_configs_are_refused_with_what_would_be_right(ckpt):
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        AdaBlockConfig(delimiter_threshold=1.5)
    with pytest.raises(ValidationError, match="at least 1"):
        AdaBlockConfig(delimiter_ids=[])
    with pytest.raises(ConfigError, match="finite"):
        Pipeline.from_config(pipeline_config(ckpt, iteration=ada(ckpt, threshold=float("inf"))))
    for bad in ([4000], [2], [-1]):
        with pytest.raises(CompositionError, match=r"delimiter_ids \[.*\] are not tokens of this model"):
            Pipeline.from_config(pipeline_config(ckpt, iteration=ada(ckpt, delimiter_ids=bad)))


def test_early_stop_ends_a_row_at_its_first_end_token(tmp_path):
    path = make_llada_checkpoint(tmp_path / "llada", seed=1)
    for shard in path.glob("*.safetensors"):  # EOS (id 0) predicted now and then
        tensors = load_file(str(shard))
        tensors["model.transformer.ff_out.weight"][0] *= 3
        save_file(tensors, str(shard), metadata={"format": "pt"})
    every = {"delimiter_ids": list(range(3, 86)), "delimiter_threshold": 0.0}
    prompts, decoding = [[5, 6, 7], [9, 10, 11, 12, 13]], {"name": "threshold", "threshold": 0.5}
    (full, nfe), (stopped, stopped_nfe) = (run(path, ada(path, 24, 4, early_stop=e, **every), prompts, decoding, "dual")
                                           for e in (False, True))
    ended = [r for r in range(2) if 0 in full[r]]
    assert ended and all(stopped_nfe[r] < nfe[r] for r in ended)
    for r in ended:
        cut = full[r].index(0)
        assert stopped[r][:cut + 1] == full[r][:cut + 1] and set(stopped[r][cut:]) == {0}


def test_candidate_steps_are_refused_naming_both(ckpt):
    with pytest.raises(CompositionError, match="iteration 'adablock' cannot be used with decoding 'freedave'"):
        run(ckpt, ada(ckpt), [[5, 6, 7]], {"name": "freedave"})


def test_a_loop_that_skips_narrow_is_told_so(ckpt):
    pipe = Pipeline.from_config(pipeline_config(ckpt, iteration=ada(ckpt)))
    state = pipe.start(input_ids=[[5, 6]])
    window = pipe.iteration.window(state)
    logits = pipe.model.forward(state, pipe.cache.plan(state, window).for_window(window))
    state.commit(window, pipe.decoding.select(state, window, logits, state.rng))
    with pytest.raises(DecodingError, match="iteration.narrow"):
        pipe.iteration.advance(state)


# (prompt, gen, block, decoding threshold, delimiter threshold) × none/prefix/dual, on both checkpoints
GRID = [([51, 59, 29], 16, 4, 0.9, 0.5), ([35, 34, 28, 9, 77, 40, 12], 24, 8, 0.3, 0.8),
        ([51, 59, 29], 20, 6, 1.0, 0.3), ([35, 34, 28, 9, 77, 40, 12], 40, 16, 0.9, None)]


@pytest.mark.skipif(ref.source() is None, reason="needs AdaBlock-dLLM's llada folder in DLM_ADABLOCK_SRC "
                    "(tests/reference_adablock.py)")
def test_the_authors_code_gives_the_same_tokens_and_nfe(both):
    ckpt = both
    generators, model = ref.load(ckpt)
    mask_id, adapted = json.loads((ckpt / "config.json").read_text())["mask_token_id"], 0
    for prompt, gen, block, threshold, dthr in GRID:
        for cache in ("none", "prefix", "dual"):
            want = ref.reference_generate(generators, model, prompt, cache=cache, gen_length=gen, block_length=block,
                                          threshold=threshold, delimiter_ids=delimiters(ckpt),
                                          delimiter_threshold=dthr, mask_id=mask_id)
            iteration = ada(ckpt, gen, block, dthr)
            decoding = {"name": "threshold", "threshold": threshold}
            got = run(ckpt, iteration, [prompt], decoding, cache)
            assert got == ([want[0]], [want[1]]), (prompt, gen, block, threshold, dthr, cache)
            assert blocks(ckpt, iteration, prompt, cache, decoding) == want[2]
            adapted += want[2] != blocks(ckpt, ada(ckpt, gen, block, None), prompt, cache, decoding)
    assert adapted > 0  # the grid exercises the adaptivity, not only fixed blocks
