"""Layer 0's q/k/v products made once per token id (dlm/models/first_layer.py): the same logits, K/V and tokens as
making them at every column, bit for bit, wherever the memo turns itself on."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import Pipeline
from dlm.models.first_layer import MIN_EXACT_ROWS, TokenProjections, rows_are_exact
from dlm.models.kv import KVBuffer
from dlm.models.llada import LLaDAConfig, LLaDAModel
from tests.conftest import pipeline_config

MASK = 2  # the character tokenizer's MASK id (tests/conftest.py)


def load(ckpt, dtype):
    return LLaDAModel.load(LLaDAConfig(path=ckpt), dtype=dtype, device=torch.device("cpu")).net


@pytest.fixture(scope="module")
def net32(tiny_ckpt):
    return load(tiny_ckpt, torch.float32)


def forward(net, memo: bool, ids, *, start=0, mask=None, grad_mode=False):
    """Logits and the K/V written, with the memo on or off."""
    b, q = ids.shape
    s = net.spec
    kv = KVBuffer(s.n_layers, b, s.n_kv_heads, start + q, s.head_dim, dtype=net.embed.weight.dtype, device="cpu")
    kv.keys.normal_(generator=torch.Generator().manual_seed(0))  # a cached prefix [0, start)
    kv.values.normal_(generator=torch.Generator().manual_seed(1))
    positions = torch.arange(start, start + q).expand(b, q)
    net.memo_first_layer = memo
    try:
        with torch.inference_mode(not grad_mode):
            out = net(ids, positions, mask, kv=kv, start=start, key_end=start + q)
    finally:
        net.memo_first_layer = True
    return out, kv.keys, kv.values


def assert_same(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 3), q=st.integers(1, 40), start=st.integers(0, 5), masked=st.floats(0, 1),
       padded=st.booleans(), seed=st.integers(0, 999))
def test_logits_and_kv_equal_the_unmemoised_forward_bit_for_bit(net32, b, q, start, masked, padded, seed):
    """Any batch, any share of MASK columns, cached or not, padded or not, in float32 (where MKL's rows are exact)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, net32.spec.vocab_in, (b, q), generator=g)
    ids[torch.rand(b, q, generator=g) < masked] = MASK
    mask = None
    if padded:
        mask = torch.rand(b, 1, 1, start + q, generator=g) > 0.3
        mask[..., start] = True
    assert_same(forward(net32, True, ids, start=start, mask=mask), forward(net32, False, ids, start=start, mask=mask))


def test_the_memo_turns_on_in_float32_and_serves_repeats_from_its_table(net32):
    net32.first_layer.clear()
    ids = torch.tensor([[5, 6, MASK, MASK, MASK, MASK, 5, 7]])
    assert_same(forward(net32, True, ids), forward(net32, False, ids))
    assert net32.first_layer.exact and net32.first_layer.count == 4  # 5, 6, 7 and MASK: each made once
    forward(net32, True, torch.tensor([[MASK, 6, 7, 5, MASK]]))
    assert net32.first_layer.count == 4  # nothing new to make


def test_fewer_columns_than_an_exact_product_take_the_plain_path(net32):
    """A product of 1–3 rows takes another kernel, so a forward of fewer than 4 columns makes its own products."""
    net32.first_layer.clear()
    ids = torch.tensor([[5, 6, 7]])
    assert ids.numel() < MIN_EXACT_ROWS
    assert_same(forward(net32, True, ids), forward(net32, False, ids))
    assert net32.first_layer.count == 0


def test_changed_weights_are_never_served_stale(tiny_ckpt):
    """Weights written in place (training) or replaced (a new checkpoint) clear the table."""
    net = load(tiny_ckpt, torch.float32)
    ids = torch.tensor([[5, 6, MASK, MASK, 7, 8]])
    forward(net, True, ids)
    with torch.no_grad():
        net.blocks[0].attn.k.weight.mul_(1.5)
    assert_same(forward(net, True, ids), forward(net, False, ids))
    net.blocks[0].attn_norm.weight = torch.nn.Parameter(net.blocks[0].attn_norm.weight * 0.5)
    assert_same(forward(net, True, ids), forward(net, False, ids))


def test_outside_inference_mode_and_with_a_full_table(tiny_ckpt):
    """A forward under plain no-grad or grad mode works as in inference mode, and a table at its bound starts
    again instead of growing."""
    net = load(tiny_ckpt, torch.float32)
    net.first_layer = TokenProjections(max_bytes=6 * net.blocks[0].attn.raw(torch.zeros(1, 1, net.spec.dim)).shape[-1]
                                       * 4)  # room for 6 ids
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        ids = torch.randint(3, net.spec.vocab_in, (2, 5), generator=g)
        assert_same(forward(net, True, ids, grad_mode=True), forward(net, False, ids, grad_mode=True))
        assert net.first_layer.count <= 10  # at most one fill of new ids past the bound


def test_training_mode_and_soft_inputs_make_their_own_products(net32):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    assert not TokenProjections.applies(net32.train(), ids, None)
    net32.eval()
    assert not TokenProjections.applies(net32, ids, torch.zeros(1, 5, net32.spec.dim))
    assert TokenProjections.applies(net32, ids, None)


def test_the_probe_refuses_products_whose_rows_depend_on_the_product():
    """A BLAS whose row bits depend on the product's size (MKL's float64 tail rows) keeps the memo off."""
    table = torch.randn(50, 8, dtype=torch.float64)
    assert rows_are_exact(lambda ids: table[ids] * 3.0, 50, torch.device("cpu"))
    assert not rows_are_exact(lambda ids: table[ids] * (1.0 + (len(ids) % 4) * 2.0 ** -50), 50, torch.device("cpu"))
    assert not rows_are_exact(lambda ids: table[ids] + len(ids) * 1e-12, 50, torch.device("cpu"))


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_tokens_and_nfe_equal_without_the_memo(tiny_ckpt, cache):
    """Whole generations in float32 (one token per step and threshold 0.5): the same tokens and NFE."""
    for decoding in ({"name": "low_confidence"}, {"name": "threshold", "threshold": 0.5}):
        pipe = Pipeline.from_config(pipeline_config(tiny_ckpt, cache={"name": cache}, decoding=decoding,
                                                    dtype="float32"))
        prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
        got = pipe.generate(input_ids=prompts)
        assert pipe.model.net.first_layer.count > 0
        pipe.model.net.memo_first_layer = False
        want = pipe.generate(input_ids=prompts)
        assert [g.tolist() for g in got.generated] == [w.tolist() for w in want.generated]
        assert list(got.nfe) == list(want.nfe)


@pytest.mark.parametrize("family", ["llada2", "llada_moe"])
def test_fused_qkv_qk_norm_partial_rotary_and_clipping_families_equal_without_the_memo(tmp_path, family):
    """The fused q/k/v product (LLaDA2), per-head q/k norms after it, partial RoPE and clipped q/k/v (LLaDA-MoE)
    are applied to the table's products as to freshly made ones."""
    from dlm.tools.llada2_checkpoints import make_llada2_checkpoint
    from dlm.tools.moe_checkpoints import make_llada_moe_checkpoint

    if family == "llada2":
        ckpt = make_llada2_checkpoint(tmp_path / family, num_key_value_heads=2, seed=6)
    else:
        ckpt = make_llada_moe_checkpoint(tmp_path / family, num_key_value_heads=2, clip_qkv=0.5,
                                         partial_rotary_factor=0.5, seed=7)
    pipe = Pipeline.from_config({"model": {"name": family, "path": str(ckpt)}, "dtype": "float32",
                                 "iteration": {"name": "blockwise", "gen_length": 8, "block_length": 8, "steps": 8},
                                 "decoding": {"name": "low_confidence"}, "cache": {"name": "none"}})
    net = pipe.model.net
    ids = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    ids[:, 4:] = pipe.model.capabilities.mask_id
    assert_same(forward(net, True, ids, start=3), forward(net, False, ids, start=3))
    assert net.first_layer.exact and net.first_layer.count > 0
