"""The LLaDA-MoE adapter loads the released on-disk layout and computes what the architecture says.

Its logits equal a slow float64 restatement (tests/reference_moe.py: every expert on every token, weighted by a
dense vector of router weights) for random inputs, left-padded batches, routing ties at the top-k boundary
and every top-k from 1 to all experts; its generation equals LLaDA's loop on that restatement. The comparison
with the released modeling code itself is in docs/fidelity.md.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dlm import Pipeline
from dlm.errors import CheckpointError, CompositionError
from dlm.iteration.base import left_padded_canvas
from dlm.messages import ForwardPlan
from dlm.models.llada import LLaDAConfig, LLaDAModel
from dlm.models.llada_moe import LLaDAMoEConfig, LLaDAMoEModel
from dlm.models.moe import SoftmaxRouter, SparseMoE
from dlm.testing import make_llada_moe_checkpoint
from reference import reference_generate
from reference_moe import NaiveLLaDAMoE

# tiny checkpoints covering the switches of the released config (d <= 48, <= 3 layers, <= 8 experts)
VARIANTS = {
    "gqa": dict(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, silent_router_rows=[1, 3], seed=1),
    "mixed": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, num_experts=8, num_experts_per_tok=3,
                  moe_layer_freq=[1, 0, 1], shared_expert_intermediate_size=16, attention_bias=True,
                  partial_rotary_factor=0.5, expert_bias=True, seed=2),
    "ties": dict(num_experts=8, num_experts_per_tok=1, silent_router_rows=[0, 1, 2, 3, 4, 5], seed=3),
    "all": dict(num_experts=6, num_experts_per_tok=6, tie_word_embeddings=True, clip_qkv=1.0, qk_layernorm=False,
                seed=4),
}
_CKPTS: dict = {}
_MODELS: dict = {}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("llada_moe")
    for name, spec in VARIANTS.items():
        _CKPTS[name] = make_llada_moe_checkpoint(root / name, **spec)
    yield _CKPTS
    _CKPTS.clear()
    _MODELS.clear()


def load(path, dtype=torch.float64, **section):
    return LLaDAMoEModel.load(LLaDAMoEConfig(path=path, **section), dtype=dtype, device=torch.device("cpu"))


def model(name, normalize=None):
    if (name, normalize) not in _MODELS:
        _MODELS[name, normalize] = load(_CKPTS[name], norm_topk_prob=normalize)
    return _MODELS[name, normalize]


def batch_logits(model, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each row's logits at its own columns, from one left-padded batch forward through the adapter."""
    state = left_padded_canvas(rows, 0, model.capabilities, torch.device("cpu"))
    n = state.length
    plan = ForwardPlan(rows=torch.arange(len(rows)), all_rows=True, start=0, end=n, kv=None, key_end=n,
                       refresh=False, logits_start=0, logits_end=n)
    logits = model.forward(state, plan)
    return [logits[i, n - r.numel():] for i, r in enumerate(rows)]


token_rows = st.lists(st.lists(st.integers(2, 85), min_size=1, max_size=20), min_size=1, max_size=3)


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(sorted(VARIANTS)), normalize=st.booleans(), rows=token_rows)
def test_logits_equal_the_naive_statement_row_by_row_in_a_padded_batch(ckpts, name, normalize, rows):
    naive = NaiveLLaDAMoE(ckpts[name], normalize=normalize)
    rows = [torch.tensor(r) for r in rows]
    for ours, row in zip(batch_logits(model(name, normalize), rows), rows):
        torch.testing.assert_close(ours, naive.forward(row)[0], rtol=0, atol=1e-10)


def test_the_tie_checkpoint_ties_at_the_top_k_boundary_and_routes_as_torch_topk(ckpts):
    """Six experts with a zero router row: their probabilities are bitwise equal, so with k = 1 most tokens
    choose among tied experts. The experts run are the ones ``torch.topk`` names, and the logits equal the
    naive statement (which calls ``torch.topk`` itself, token by token)."""
    m = model("ties")
    seen = []
    hooks = [b.ffn.router.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
             for b in m.net.blocks if isinstance(b.ffn, SparseMoE)]
    ids = torch.randint(2, 86, (40,), generator=torch.Generator().manual_seed(0))
    try:
        ours = batch_logits(m, [ids])[0]
    finally:
        for h in hooks:
            h.remove()
    tied = 0
    for (x, routing), block in zip(seen, m.net.blocks):
        probs = torch.softmax(block.ffn.router.gate(x), -1, dtype=torch.float32)
        top2 = probs.topk(2).values
        tied += int((top2[:, 0] == top2[:, 1]).sum())
        assert torch.equal(routing.experts, torch.topk(probs, 1).indices)
    assert tied >= 10, "the checkpoint should produce ties at the top-1 boundary"
    torch.testing.assert_close(ours, NaiveLLaDAMoE(ckpts["ties"]).forward(ids)[0], rtol=0, atol=1e-10)


def test_norm_topk_prob_of_config_json_is_not_read_the_model_section_sets_it(ckpts, tmp_path):
    ck = shutil.copytree(ckpts["gqa"], tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["norm_topk_prob"] = True  # the released block hard-codes no normalisation
    (ck / "config.json").write_text(json.dumps(cfg))
    ids = torch.randint(3, 80, (12,), generator=torch.Generator().manual_seed(1))
    plain, moved = batch_logits(load(ck), [ids])[0], batch_logits(load(ck, norm_topk_prob=True), [ids])[0]
    torch.testing.assert_close(plain, batch_logits(model("gqa"), [ids])[0], rtol=0, atol=0)
    assert (plain - moved).abs().max() > 1e-3


@pytest.mark.parametrize("gen_length,block_length,steps", [(8, 4, 8), (16, 8, 8), (16, 4, 4)])
def test_generation_equals_llada_loop_on_the_naive_model(ckpts, gen_length, block_length, steps):
    prompt = [7, 30, 41, 12, 66]
    pipe = Pipeline(model("mixed"), *_components(gen_length, block_length, steps, "none"))
    out = pipe.generate(input_ids=[prompt])
    tokens, nfe = reference_generate(NaiveLLaDAMoE(ckpts["mixed"]), prompt, steps=steps, gen_length=gen_length,
                                     block_length=block_length)
    assert out.generated[0].tolist() == tokens and int(out.nfe[0]) == nfe


def _components(gen_length, block_length, steps, cache):
    from dlm.cache.dual import DualCache, DualCacheConfig
    from dlm.cache.none import NoCache, NoCacheConfig
    from dlm.cache.prefix import PrefixCache, PrefixCacheConfig
    from dlm.decoding.low_confidence import LowConfidence, LowConfidenceConfig
    from dlm.iteration.blockwise import Blockwise, BlockwiseConfig

    caches = {"none": (NoCache, NoCacheConfig), "prefix": (PrefixCache, PrefixCacheConfig),
              "dual": (DualCache, DualCacheConfig)}
    cls, cfg = caches[cache]
    return (Blockwise(BlockwiseConfig(gen_length=gen_length, block_length=block_length, steps=steps)),
            LowConfidence(LowConfidenceConfig()), cls(cfg()))


def test_prefix_and_dual_caches_are_exact_on_a_one_layer_model(tmp_path):
    """One layer: a column's K/V depend on its token only, so reused K/V are never stale (as for LLaDA)."""
    one = load(make_llada_moe_checkpoint(tmp_path / "one", num_hidden_layers=1, num_experts=4, seed=5))
    prompts = [[5, 6, 7, 8], [9, 10]]
    outs = {c: Pipeline(one, *_components(16, 8, 16, c)).generate(input_ids=prompts) for c in ("none", "prefix", "dual")}
    for cache in ("prefix", "dual"):
        assert [g.tolist() for g in outs[cache].generated] == [g.tolist() for g in outs["none"].generated]


def test_router_probabilities_stay_float32_in_a_float64_model(ckpts):
    router = next(b.ffn.router for b in model("gqa").net.blocks if isinstance(b.ffn, SparseMoE))
    assert isinstance(router, SoftmaxRouter)
    x = torch.randn(5, 32, dtype=torch.float64)
    routing = router(x)
    expected = torch.softmax(router.gate(x), -1, dtype=torch.float32).topk(2).values.double()
    assert routing.weights.dtype == torch.float64 and torch.equal(routing.weights, expected)


# --- the layout: every tensor named, the family told apart from dense LLaDA -----------------------------------


def _edit(src, dst, change):
    ck = shutil.copytree(src, dst)
    tensors = load_file(str(ck / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(ck / "model.safetensors"))
    return ck


def test_a_missing_expert_tensor_is_named(ckpts, tmp_path):
    ck = _edit(ckpts["gqa"], tmp_path / "ck", lambda t: t.pop("model.layers.1.mlp.experts.3.down_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.experts\.3\.down_proj\.weight'"):
        load(ck)


def test_a_misshapen_router_is_named(ckpts, tmp_path):
    ck = _edit(ckpts["gqa"], tmp_path / "ck", lambda t: t.update({"model.layers.0.mlp.gate.weight": torch.zeros(5, 32)}))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.gate\.weight'.*\[5, 32\].*\[4, 32\]"):
        load(ck)


def test_an_expert_beyond_num_experts_is_unexpected(ckpts, tmp_path):
    ck = _edit(ckpts["gqa"], tmp_path / "ck",
               lambda t: t.update({"model.layers.0.mlp.experts.4.up_proj.weight": torch.zeros(16, 32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.experts\.4\.up_proj\.weight'"):
        load(ck)


@pytest.mark.parametrize("field,value,message", [
    ("moe_layer_freq", None, "'moe_layer_freq'"),
    ("moe_layer_freq", [1], "moe_layer_freq must be a list of 2 integers"),
    ("num_experts_per_tok", 5, "num_experts_per_tok 5 is more than num_experts 4"),
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


def test_each_adapter_names_the_other_for_the_other_familys_checkpoint(ckpts, tiny_ckpt):
    with pytest.raises(CheckpointError, match="LLaDA-MoE checkpoint.*set model.name: llada_moe"):
        LLaDAModel.load(LLaDAConfig(path=ckpts["gqa"]), dtype=torch.float64, device=torch.device("cpu"))
    with pytest.raises(CheckpointError, match="dense LLaDA config.*set model.name: llada"):
        load(tiny_ckpt)


def test_capabilities_and_end_tokens_come_from_the_checkpoint(ckpts):
    caps = model("gqa").capabilities
    assert caps.mask_id == 2 and caps.eos_ids == (0, 1)  # EOS, then <|role_end|> from the tokenizer
    assert caps.attention == "bidirectional" and caps.logit_shift == 0 and caps.kv_cache


def test_sharding_without_torchrun_is_refused_with_the_command_to_use(ckpts):
    """tensor_parallel and expert_parallel split a LLaDA-MoE model (tests/test_expert_parallel.py runs them);
    one process cannot."""
    with pytest.raises(CompositionError, match="tensor_parallel: 2 × expert_parallel: 2 .* torchrun --nproc-per-node 4"):
        model("gqa").shard(2, expert_parallel=2)
