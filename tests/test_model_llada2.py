"""The LLaDA2 adapter loads the released on-disk layout and computes what the BailingMoeV2 architecture says.

Its logits equal a slow float64 restatement (tests/reference_llada2.py: every expert on every token, the
group-limited choice made token by token with ``torch.topk``) for random inputs in left-padded batches and
every block size, with routing ties at the expert and the group top-k boundaries. The comparison with the
released modeling code itself is in docs/fidelity.md.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dlm.errors import CheckpointError, CompositionError
from dlm.iteration.base import left_padded_canvas
from dlm.messages import ForwardPlan
from dlm.models.llada2 import LLaDA2Config, LLaDA2Model
from dlm.models.llada_moe import LLaDAMoEConfig, LLaDAMoEModel
from dlm.models.moe import GroupLimitedRouter, SparseMoE
from dlm.testing import make_llada2_checkpoint
from reference_llada2 import NaiveLLaDA2

# tiny checkpoints covering the switches of the released config (d <= 64, <= 3 layers, <= 8 experts)
VARIANTS = {
    "gqa": dict(num_key_value_heads=2, seed=1),  # 8 experts, 4 groups, top 2 of 2 groups, a dense first layer
    "mixed": dict(hidden_size=64, num_hidden_layers=3, num_experts=8, num_experts_per_tok=3, n_group=2, topk_group=1,
                  first_k_dense_replace=0, num_shared_experts=2, use_qkv_bias=True, use_bias=True,
                  partial_rotary_factor=1.0, seed=2),
    "ties": dict(num_experts=8, n_group=4, topk_group=2, silent_router_rows=[0, 1, 2, 3], seed=3),
    "top1": dict(num_experts=4, num_experts_per_tok=1, n_group=1, topk_group=1, routed_scaling_factor=1.0,
                 tie_word_embeddings=True, use_qk_norm=False, num_shared_experts=0, seed=4),
}
_CKPTS: dict = {}
_MODELS: dict = {}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("llada2")
    for name, spec in VARIANTS.items():
        _CKPTS[name] = make_llada2_checkpoint(root / name, **spec)
    yield _CKPTS
    _CKPTS.clear()
    _MODELS.clear()


def load(path, dtype=torch.float64, **section):
    return LLaDA2Model.load(LLaDA2Config(path=path, **section), dtype=dtype, device=torch.device("cpu"))


def model(name, block=8):
    if (name, block) not in _MODELS:
        _MODELS[name, block] = load(_CKPTS[name], block_length=block)
    return _MODELS[name, block]


def batch_logits(model, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each row's logits at its own columns, from one left-padded batch forward through the adapter."""
    state = left_padded_canvas(rows, 0, model.capabilities, torch.device("cpu"))
    n = state.length
    plan = ForwardPlan(rows=torch.arange(len(rows)), all_rows=True, start=0, end=n, kv=None, key_end=n,
                       refresh=False, logits_start=0, logits_end=n)
    logits = model.forward(state, plan)
    return [logits[i, n - r.numel():] for i, r in enumerate(rows)]


token_rows = st.lists(st.lists(st.integers(0, 85), min_size=1, max_size=20), min_size=1, max_size=3)


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(VARIANTS)), block=st.sampled_from([2, 4, 8]), rows=token_rows)
def test_logits_equal_the_naive_statement_alone_and_in_a_padded_batch(ckpts, name, block, rows):
    """Alone, to 1e-10. In a left-padded batch, to the router's float32: its input is the float64 hidden state
    rounded to float32, and the batch's shape moves the hidden state's last float64 bits (padding keys, kernel
    choice), which now and then moves a float32 rounding of the router (docs/models.md)."""
    naive = NaiveLLaDA2(ckpts[name], block=block)
    rows = [torch.tensor(r) for r in rows]
    batched = batch_logits(model(name, block), rows)
    for ours, row in zip(batched, rows):
        expected = naive.logits(row)
        torch.testing.assert_close(batch_logits(model(name, block), [row])[0], expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_the_tie_checkpoint_ties_experts_and_groups_and_routes_as_torch_topk(ckpts):
    """Experts 0-3 have a zero router row and bias: their scores are exactly sigmoid(0), so groups 0 and 1 tie
    with each other and, often, at the top-2 group boundary. The experts run are those ``torch.topk`` names in
    the released order of operations, and the logits equal the naive statement (which calls it per token)."""
    m = model("ties")
    seen = []
    hooks = [b.ffn.router.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0], out)))
             for b in m.net.blocks if isinstance(b.ffn, SparseMoE)]
    ids = torch.randint(0, 86, (40,), generator=torch.Generator().manual_seed(0))
    try:
        ours = batch_logits(m, [ids])[0]
    finally:
        for h in hooks:
            h.remove()
    naive = NaiveLLaDA2(_CKPTS["ties"], block=8)
    expert_ties = group_ties = 0
    for layer, (router, x, routing) in zip([i for i, b in enumerate(m.net.blocks) if isinstance(b.ffn, SparseMoE)],
                                           seen):
        assert isinstance(router, GroupLimitedRouter) and routing.by_slot
        s = torch.sigmoid(torch.nn.functional.linear(x.float(), router.gate.weight.float())) + router.expert_bias
        groups = s.view(len(s), 4, 2).sum(-1)  # groups of 2 experts: scored by the sum of both
        ranked = groups.sort(-1, descending=True).values
        group_ties += int((ranked[:, 1] == ranked[:, 2]).sum())  # the 2nd and 3rd group tie: which is kept?
        kept = groups >= ranked[:, 1:2]  # the groups that can be kept (ties included)
        masked = s.masked_fill(~kept.repeat_interleave(2, 1), -torch.inf).sort(-1, descending=True).values
        expert_ties += int((masked[:, 1] == masked[:, 2]).sum())  # the 2nd and 3rd expert tie
        assert [r.tolist() for r in routing.experts] == [c for c, _ in naive.choose(x, layer)]
    assert expert_ties >= 5 and group_ties >= 5, (expert_ties, group_ties)
    torch.testing.assert_close(ours, naive.logits(ids), rtol=0, atol=1e-10)


def test_router_weights_are_float32_normalised_and_scaled_in_a_float64_model(ckpts):
    router = next(b.ffn.router for b in model("gqa").net.blocks if isinstance(b.ffn, SparseMoE))
    x = torch.randn(6, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    routing = router(x)
    assert routing.weights.dtype == torch.float32
    torch.testing.assert_close(routing.weights.sum(-1), torch.full((6,), 2.5), rtol=0, atol=1e-6)


def test_block_length_of_the_model_section_is_the_attention_block(ckpts):
    ids = torch.randint(3, 80, (12,), generator=torch.Generator().manual_seed(1))
    caps = model("gqa", 4).capabilities
    assert (caps.attention, caps.block_size, caps.logit_shift) == ("block_causal", 4, 0)
    four, sixteen, whole = (batch_logits(model("gqa", b), [ids])[0] for b in (4, 16, 32))
    torch.testing.assert_close(sixteen, whole, rtol=0, atol=1e-10)  # one block holds all 12: bidirectional
    assert (four[:4] - whole[:4]).abs().max() > 1e-3  # positions 0-3 see 4-11 only with the larger blocks


def test_capabilities_and_end_tokens_come_from_the_checkpoint(ckpts):
    caps = model("gqa").capabilities
    assert caps.mask_id == 2 and caps.eos_ids == (0, 1)  # EOS, then <|role_end|> from the tokenizer
    assert caps.kv_cache and caps.vocab_size == 86


def test_tensor_parallel_is_refused_for_the_fused_qkv_projection(ckpts):
    """expert_parallel alone splits LLaDA2 (tests/test_expert_parallel.py); its fused q/k/v has no tensor-parallel plan."""
    with pytest.raises(CompositionError, match="fused q/k/v projection"):
        model("gqa").shard(2, expert_parallel=2)


# --- the layout: every tensor named, bad configs refused naming the field --------------------------------------


def _edit(src, dst, change):
    ck = shutil.copytree(src, dst)
    tensors = load_file(str(ck / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(ck / "model.safetensors"))
    return ck


def test_a_missing_expert_bias_is_named(ckpts, tmp_path):
    ck = _edit(ckpts["gqa"], tmp_path / "ck", lambda t: t.pop("model.layers.1.mlp.gate.expert_bias"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.gate\.expert_bias'"):
        load(ck)


def test_a_misshapen_fused_qkv_is_named(ckpts, tmp_path):
    ck = _edit(ckpts["gqa"], tmp_path / "ck",
               lambda t: t.update({"model.layers.0.attention.query_key_value.weight": torch.zeros(48, 32)}))
    with pytest.raises(CheckpointError,
                       match=r"'model\.layers\.0\.attention\.query_key_value\.weight'.*\[48, 32\].*\[64, 32\]"):
        load(ck)


def test_a_router_on_a_dense_layer_is_unexpected(ckpts, tmp_path):
    ck = _edit(ckpts["gqa"], tmp_path / "ck", lambda t: t.update({"model.layers.0.mlp.gate.weight": torch.zeros(8, 32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.gate\.weight'"):
        load(ck)


@pytest.mark.parametrize("field,value,message", [
    ("score_function", "softmax", "score_function='softmax' is not supported"),
    ("n_group", 3, "n_group 3 must divide num_experts 8"),
    ("n_group", 8, "needs at least 2 experts"),
    ("topk_group", 5, "topk_group 5 must be between 1 and n_group 4"),
    ("num_experts_per_tok", 5, "num_experts_per_tok 5 must be between 1 and the experts of the topk_group 2"),
    ("num_key_value_heads", None, "'num_key_value_heads'"),
    ("head_dim", 16, "head_dim 16 differs"),
    ("partial_rotary_factor", 0.0, "partial_rotary_factor"),
    ("hidden_act", "gelu", "hidden_act='gelu' is not supported"),
])
def test_a_config_the_model_cannot_use_is_refused_naming_the_field(ckpts, tmp_path, field, value, message):
    ck = shutil.copytree(ckpts["gqa"], tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg[field] = value
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        load(ck)


def test_the_llada_moe_adapter_names_llada2_for_its_checkpoint(ckpts):
    with pytest.raises(CheckpointError, match="llada2 checkpoint.*set model.name: llada2"):
        LLaDAMoEModel.load(LLaDAMoEConfig(path=ckpts["gqa"]), dtype=torch.float64, device=torch.device("cpu"))
