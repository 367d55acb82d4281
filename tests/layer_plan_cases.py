"""Cases the per-layer-plan cache tests share (test_dllm_cache.py, test_sparse_cache.py, test_d2cache.py): prompts
and decodings drawn by hypothesis, the blockwise schedule they run under, and one generation's tokens and NFE."""

from __future__ import annotations

from hypothesis import strategies as st

from dlm import Pipeline
from tests.conftest import pipeline_config

prompts_st = st.lists(st.lists(st.integers(3, 60), min_size=1, max_size=6), min_size=1, max_size=3)
decoding_st = st.sampled_from([{"name": "low_confidence"}, {"name": "threshold", "threshold": 0.3}])
ITERATION = {"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 16}


def run(ckpt, cache, prompts, decoding=None, iteration=ITERATION):
    """(generated token ids per prompt, NFE per prompt) of ``cache`` on ``ckpt``."""
    cfg = pipeline_config(ckpt, iteration=iteration, decoding=decoding or {"name": "low_confidence"}, cache=cache)
    out = Pipeline.from_config(cfg).generate(input_ids=prompts)
    return [g.tolist() for g in out.generated], out.nfe
