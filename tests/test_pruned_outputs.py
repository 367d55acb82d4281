"""The last layer finishes only the rows whose logits are read: same logits, same K/V, same tokens, same NFE."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import Pipeline
from dlm.models.kv import KVBuffer
from dlm.models.llada import LLaDAConfig, LLaDAModel
from tests.conftest import pipeline_config


@pytest.fixture(scope="module")
def net(tiny_ckpt):
    return LLaDAModel.load(LLaDAConfig(path=tiny_ckpt), dtype=torch.float64, device=torch.device("cpu")).net




def run(net, prune, ids, positions, mask, kv_len, **kw):
    net.prune_outputs = prune
    try:
        kv = None
        if kv_len:
            s = net.spec
            kv = KVBuffer(s.n_layers, ids.shape[0], s.n_kv_heads, kv_len, s.head_dim, dtype=net.embed.weight.dtype,
                          device=torch.device("cpu"))
            kv.keys.normal_(generator=torch.Generator().manual_seed(0))
            kv.values.normal_(generator=torch.Generator().manual_seed(1))
            kw.update(kv=kv, rows=torch.arange(ids.shape[0]), key_end=kv_len)
        return net(ids, positions, mask, **kw), kv
    finally:
        net.prune_outputs = True


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3), q=st.integers(1, 12), data=st.data(), cached=st.booleans(), padded=st.booleans(),
)
def test_logit_range_equals_unpruned(net, b, q, data, cached, padded):
    lo = data.draw(st.integers(0, q - 1))
    hi = data.draw(st.integers(lo + 1, q))
    g = torch.Generator().manual_seed(q * 31 + lo)
    ids = torch.randint(3, 80, (b, q), generator=g)
    start = data.draw(st.integers(0, 6)) if cached else 0
    keys = start + q
    positions = torch.arange(start, start + q).expand(b, q)
    mask = None
    if padded:
        mask = torch.rand(b, 1, 1, keys, generator=g) > 0.3
        mask[..., start] = True
    kw = dict(start=start, logits_from=lo, logits_to=hi)
    pruned, kv_p = run(net, True, ids, positions, mask, keys if cached else 0, **kw)
    full, kv_f = run(net, False, ids, positions, mask, keys if cached else 0, **kw)
    assert pruned.shape == (b, hi - lo, net.spec.vocab_out)
    torch.testing.assert_close(pruned, full, rtol=0, atol=1e-12)
    if cached:  # every computed column still wrote its keys and values, the same ones
        assert torch.equal(kv_p.keys, kv_f.keys) and torch.equal(kv_p.values, kv_f.values)


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 3), q=st.integers(2, 10), n=st.integers(1, 4), data=st.data())
def test_logit_index_equals_unpruned(net, b, q, n, data):
    """Per-row column sets (the ``columns`` plans of dkv/vicinity/candidates): outputs at per-row offsets."""
    g = torch.Generator().manual_seed(b * 100 + q * 10 + n)
    ids = torch.randint(3, 80, (b, q), generator=g)
    columns = torch.stack([torch.randperm(q + 4, generator=g)[:q].sort().values for _ in range(b)])
    index = torch.randint(0, q, (b, n), generator=g)
    mask = data.draw(st.sampled_from([None, "causal"]))
    if mask == "causal":
        mask = (columns[:, :, None] >= columns[:, None, :])[:, None]
    kw = dict(columns=columns, logits_index=index)
    pruned, _ = run(net, True, ids, columns, mask, 0, **kw)
    full, _ = run(net, False, ids, columns, mask, 0, **kw)
    torch.testing.assert_close(pruned, full, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def moe_ckpt(tmp_path_factory):
    from dlm.testing import make_llada_moe_checkpoint

    return make_llada_moe_checkpoint(tmp_path_factory.mktemp("moe") / "llada_moe", seed=3)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_moe_generation_is_unchanged(moe_ckpt, cache):
    """The sparse MoE of the last layer routes only the read rows: the same tokens as the unpruned forward."""
    cfg = pipeline_config(moe_ckpt, iteration={"name": "blockwise", "gen_length": 12, "block_length": 4, "steps": 12},
                          cache={"name": cache})
    cfg["model"] = {"name": "llada_moe", "path": str(moe_ckpt)}
    pipe = Pipeline.from_config(cfg)
    prompts = [[5, 9, 14, 20, 33], [40, 41, 7]]
    on = pipe.generate(input_ids=prompts)
    pipe.model.net.prune_outputs, pipe.decoding.reads_eligible_only = False, False
    off = pipe.generate(input_ids=prompts)
    assert [g.tolist() for g in on.generated] == [g.tolist() for g in off.generated]
    assert list(on.nfe) == list(off.nfe)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "dkv"])
@pytest.mark.parametrize("decoding", [
    {"name": "low_confidence"}, {"name": "threshold", "threshold": 0.3}, {"name": "factor", "factor": 1.0},
    {"name": "low_confidence", "temperature": 0.7},
])
def test_generation_is_unchanged(tiny_ckpt, cache, decoding):
    """Tokens and NFE of a padded batch equal those of the unpruned forward (float64): pruning off and the
    strategy's ``reads_eligible_only`` hint withdrawn, so every row of the window gets its logits."""
    pipe = Pipeline.from_config(pipeline_config(
        tiny_ckpt, iteration={"name": "blockwise", "gen_length": 12, "block_length": 4, "steps": 12},
        decoding=decoding, cache={"name": cache},
    ))
    prompts = [[5, 9, 14, 20, 33], [40, 41, 7]]
    assert type(pipe.decoding).reads_eligible_only
    on = pipe.generate(input_ids=prompts)
    pipe.model.net.prune_outputs, pipe.decoding.reads_eligible_only = False, False
    try:
        off = pipe.generate(input_ids=prompts)
    finally:
        pipe.model.net.prune_outputs = True
        del pipe.decoding.reads_eligible_only
    assert [g.tolist() for g in on.generated] == [g.tolist() for g in off.generated]
    assert list(on.nfe) == list(off.nfe)
