"""SDAR's sparse-MoE checkpoints (SDAR-30B-A3B: ``model_type: sdar_moe``, Qwen3-MoE under block-causal attention).

The adapter's float64 logits equal SDAR's forward restated with Qwen3-MoE's sparse block in the sparse layers
(tests/reference_sdar.py) and transformers' own Qwen3-MoE under the block-causal mask, for dense and sparse layers
mixed by ``mlp_only_layers`` and ``decoder_sparse_step``, ``norm_topk_prob`` on and off, and routing ties; block
diffusion equals SDAR's released block loop restated on that model, token for token and in NFE; the contract kit
passes and batched rows give what they give alone. The comparison with the released code is in docs/fidelity.md.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dlm.errors import CheckpointError
from dlm.models.moe import SoftmaxRouter, SparseMoE
from dlm.models.sdar import SDARConfig, SDARModel
from dlm.testing.contracts import CHECKS, run_check
from dlm.tools.sdar_checkpoints import EOT_ID, MASK_ID, make_sdar_checkpoint
from tests.reference_sdar import reference_sdar_generate
from tests.test_sdar import RULES, dlm_logits, generate, load, naive

CPU = torch.device("cpu")
# tiny checkpoints covering the switches of the released config (d 32, <= 4 layers, <= 8 experts)
VARIANTS = {
    # layers 1 and 3 sparse (decoder_sparse_step 2), weights normalised as SDAR-30B-A3B's; GQA, head_dim 16 != 32 / 4
    "step": dict(num_hidden_layers=4, num_experts=6, num_experts_per_tok=2, decoder_sparse_step=2, seed=41,
                 eos_token_id=EOT_ID),
    # layers 0 and 2 sparse (layer 1 in mlp_only_layers), weights not normalised, tied embeddings, two shards
    "only": dict(num_hidden_layers=3, num_experts=4, num_experts_per_tok=3, mlp_only_layers=[1], norm_topk_prob=False,
                 tie_word_embeddings=True, head_dim=None, shards=2, seed=42),
    # the router rows of experts 0-5 zero: their probabilities tie bitwise, most tokens choose among tied experts
    "ties": dict(num_experts=8, num_experts_per_tok=2, silent_router_rows=range(6), norm_topk_prob=False, seed=43),
}
SPARSE = {"step": [False, True, False, True], "only": [True, False, True], "ties": [True, True]}
_CKPTS: dict = {}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdar_moe")
    for name, spec in VARIANTS.items():
        _CKPTS[name] = make_sdar_checkpoint(root / name, **spec)
    yield _CKPTS
    _CKPTS.clear()


def _edit_config(src, dst, change):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((dst / "config.json").read_text())
    change(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# --- the layout -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_sparse_layers_and_routing_follow_the_config(ckpts, name):
    model = load(ckpts[name])
    cfg = json.loads((ckpts[name] / "config.json").read_text())
    assert cfg["model_type"] == "sdar_moe" and cfg["architectures"] == ["SDARMoeForCausalLM"]
    assert [isinstance(b.ffn, SparseMoE) for b in model.net.blocks] == SPARSE[name]
    router = next(b.ffn.router for b in model.net.blocks if isinstance(b.ffn, SparseMoE))
    assert isinstance(router, SoftmaxRouter)
    assert (router.top_k, router.normalize) == (cfg["num_experts_per_tok"], cfg["norm_topk_prob"])
    caps = model.capabilities
    assert (caps.mask_id, caps.logit_shift, caps.attention, caps.block_size) == (MASK_ID, 0, "block_causal", 4)


def test_an_sdar_config_with_experts_loads_as_the_moe_model(ckpts, tmp_path):
    """``model_type: sdar`` with ``num_experts > 0`` is the same sparse model."""
    path = _edit_config(ckpts["step"], tmp_path / "sdar", lambda c: c.update(model_type="sdar"))
    ids = [5, 9, MASK_ID, 30, 31, MASK_ID, 7]
    torch.testing.assert_close(dlm_logits(load(path), ids, 0), dlm_logits(load(ckpts["step"]), ids, 0), rtol=0, atol=0)


def test_a_missing_expert_tensor_is_named(ckpts, tmp_path):
    path = _edit_config(ckpts["ties"], tmp_path / "ck", lambda c: None)
    tensors = load_file(str(path / "model.safetensors"))
    tensors.pop("model.layers.1.mlp.experts.7.down_proj.weight")
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.experts\.7\.down_proj\.weight'"):
        SDARModel.load(SDARConfig(path=path), dtype=torch.float64, device=CPU)


def test_a_config_that_makes_a_sparse_layer_dense_names_the_missing_mlp(ckpts, tmp_path):
    """config.json says layer 1 is dense (mlp_only_layers) while the checkpoint holds experts there."""
    path = _edit_config(ckpts["step"], tmp_path / "ck", lambda c: c.update(mlp_only_layers=[1]))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.(gate|up|down)_proj\.weight'"):
        SDARModel.load(SDARConfig(path=path), dtype=torch.float64, device=CPU)


# --- logits against the restated forward and transformers' Qwen3-MoE ----------------------------------------


ids_lists = st.lists(st.integers(3, 85) | st.just(MASK_ID), min_size=1, max_size=13)


@settings(max_examples=12)
@given(name=st.sampled_from(sorted(VARIANTS)), ids=ids_lists, block=st.sampled_from([2, 4, 8]), pad=st.integers(0, 3))
def test_logits_equal_the_restated_forward(ckpts, name, ids, block, pad):
    """Random tokens and MASKs, block sizes other than config.json's, the row left-padded in a batch of two."""
    path = ckpts[name]
    ours = dlm_logits(load(path, block_size=block), ids, pad)
    torch.testing.assert_close(ours, naive(path).logits(ids, block), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["step", "only"])
def test_logits_equal_transformers_qwen3_moe_under_the_block_causal_mask(ckpts, name):
    """An independent implementation of the architecture: transformers' Qwen3-MoE (its experts fused into 3-D
    parameters, as transformers 5 keeps them) on the same tensors."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    path = ckpts[name]
    raw = json.loads((path / "config.json").read_text())
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
            "tie_word_embeddings", "attention_bias", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
            "decoder_sparse_step", "mlp_only_layers", "norm_topk_prob")
    config = Qwen3MoeConfig(**{k: raw[k] for k in keep}, experts_implementation="eager")  # its float64 path
    hf = Qwen3MoeForCausalLM(config).double().eval()
    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    for i in range(raw["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp.experts."
        experts = [[tensors.pop(f"{p}{e}.{w}_proj.weight") for w in ("gate", "up", "down")]
                   for e in range(raw["num_experts"]) if f"{p}{e}.gate_proj.weight" in tensors]
        if experts:
            tensors[p + "gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u, _ in experts])
            tensors[p + "down_proj"] = torch.stack([d for _, _, d in experts])
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if raw["tie_word_embeddings"] else set())
    ids = torch.randint(3, 86, (11,), generator=torch.Generator().manual_seed(4))
    blk = torch.arange(11) // 4
    mask = torch.zeros(11, 11, dtype=torch.float64).masked_fill(~(blk[:, None] >= blk[None, :]), -torch.inf)
    with torch.no_grad():
        ref = hf(ids[None], attention_mask=mask[None, None]).logits[0]
    torch.testing.assert_close(dlm_logits(load(path), ids.tolist(), 0), ref, rtol=0, atol=1e-10)


def test_routing_ties_are_broken_as_torch_topk_breaks_them(ckpts):
    """Six experts with a zero router row: their probabilities are bitwise equal, so most tokens choose among tied
    experts. The experts run are the ones ``torch.topk`` names, and the logits equal the restated forward."""
    model = load(ckpts["ties"])
    seen = []
    hooks = [b.ffn.router.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
             for b in model.net.blocks]
    ids = torch.randint(3, 86, (24,), generator=torch.Generator().manual_seed(0)).tolist()
    try:
        ours = dlm_logits(model, ids, 0)
    finally:
        for h in hooks:
            h.remove()
    tied = 0
    for (x, routing), block in zip(seen, model.net.blocks):
        probs = torch.softmax(block.ffn.router.gate(x), -1, dtype=torch.float32)
        top = probs.topk(3).values
        tied += int((top[:, 1] == top[:, 2]).sum())
        assert torch.equal(routing.experts, torch.topk(probs, 2).indices)
    assert tied >= 10, "the checkpoint should produce ties at the top-k boundary"
    torch.testing.assert_close(ours, naive(ckpts["ties"]).logits(ids, 4), rtol=0, atol=1e-10)


# --- block diffusion against SDAR's released block loop ------------------------------------------------------


@pytest.mark.parametrize("name, prompt, gen, steps, rule, cache", [
    ("step", [12, 40, 7], 9, 4, "static", "block"),
    ("step", [5, 6, 7, 8, 9], 7, 2, "dynamic", "none"),
    ("only", [30, 31], 10, 4, "sequential", "block"),
    ("only", [70, 3, 44, 9, 60, 61], 10, 3, "dynamic", "block"),
    ("ties", [8, 9, 10], 9, 2, "static", "none"),
])
def test_block_diffusion_equals_the_released_block_loop(ckpts, name, prompt, gen, steps, rule, cache):
    """Tokens equal and NFE = the loop's denoising forwards (blocks of 4; dynamic at τ = 0.5)."""
    path = ckpts[name]
    dec = dict(RULES[rule][0], **({"threshold": 0.5} if rule == "dynamic" else {}))
    total = -(-(len(prompt) + gen) // 4) * 4 - len(prompt)  # the released canvas: whole blocks
    ref, _, denoise, _ = reference_sdar_generate(naive(path), prompt, gen_length=gen, block_length=4, steps=steps,
                                                 rule=rule, tau=0.5)
    tokens, nfe = generate(path, [prompt], gen_length=total, block=4, steps=steps, decoding=dec, cache=cache)
    assert tokens[0] == ref and nfe[0] == denoise


def test_batched_rows_equal_each_row_alone(ckpts):
    """Every residue of the prompt length modulo the block size, so block boundaries differ per row."""
    prompts = [list(range(10, 10 + n)) for n in (4, 6, 9, 3)]
    kw = dict(gen_length=10, block=4, steps=2, decoding={"name": "strict_threshold", "threshold": 0.3,
                                                         "at_least": "quota"}, cache="block")
    batched = generate(ckpts["step"], prompts, **kw)
    for r, p in enumerate(prompts):
        alone = generate(ckpts["step"], [p], **kw)
        assert (batched[0][r], batched[1][r]) == (alone[0][0], alone[1][0]), r


@pytest.mark.parametrize("check", list(CHECKS["model"]))
def test_the_contract_kit_passes_on_the_moe_checkpoint(ckpts, check):
    outcome = run_check("model", "sdar", check, {"path": str(ckpts["step"])})
    assert outcome.status != "failed", outcome.detail
