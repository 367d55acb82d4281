"""SDAR: the adapter's logits equal a plain restatement of the released forward (and transformers' Qwen3 under
the block-causal mask), block diffusion with SDAR's remasking rules equals a restatement of the released block
loop token for token (NFE = its denoising forwards), the block cache is exact, batched = one at a time, the
rules and the schedule against brute force, and checkpoints that cannot load are refused naming the reason.
The comparison with the released code itself is in docs/fidelity.md."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dlm.config import build_config
from dlm.decoding.sampling import filtered_probs
from dlm.decoding.sequential import leftmost_select
from dlm.decoding.strict_threshold import quota_floor_select
from dlm.errors import CheckpointError, CompositionError
from dlm.iteration.base import left_padded_canvas
from dlm.iteration.block_diffusion import block_schedule
from dlm.messages import ForwardPlan
from dlm.models.sdar import SDARConfig, SDARModel
from dlm.pipeline import Pipeline
from dlm.testing.contracts import contract_test
from dlm.tools.qwen2_checkpoints import make_qwen2_checkpoint
from dlm.tools.sdar_checkpoints import EOT_ID, MASK_ID, make_sdar_checkpoint
from tests.reference_sdar import NaiveSDAR, reference_sdar_generate, transfer_tokens

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sdar_ckpt(tmp_path_factory):
    """2 layers, d 32, 4 heads of width 16 (not 32 / 4), GQA 2 KV heads, block size 4, stop token EOT (1)."""
    return make_sdar_checkpoint(tmp_path_factory.mktemp("sdar") / "ckpt", seed=31, eos_token_id=EOT_ID)


@pytest.fixture(scope="module")
def tied_ckpt(tmp_path_factory):
    """1 layer, tied embeddings (as SDAR-1.7B), head width = d / heads, two shards with an index."""
    return make_sdar_checkpoint(tmp_path_factory.mktemp("sdar_tied") / "ckpt", seed=32, num_hidden_layers=1,
                                head_dim=None, tie_word_embeddings=True, shards=2)


_MODELS: dict[tuple, SDARModel] = {}
_NAIVE: dict[str, NaiveSDAR] = {}


def load(path, block_size=None, eos=None) -> SDARModel:
    key = (str(path), block_size, eos)
    if key not in _MODELS:
        _MODELS[key] = SDARModel.load(SDARConfig(path=path, block_size=block_size, eos_token_ids=eos),
                                      dtype=torch.float64, device=CPU)
    return _MODELS[key]


def naive(path) -> NaiveSDAR:
    if str(path) not in _NAIVE:
        _NAIVE[str(path)] = NaiveSDAR(path)
    return _NAIVE[str(path)]


def dlm_logits(model: SDARModel, ids: list[int], pad: int) -> torch.Tensor:
    """Row 0's logits of a canvas where a longer row left-pads it by ``pad`` columns."""
    other = list(range(10, 10 + len(ids) + pad))
    state = left_padded_canvas([torch.tensor(ids), torch.tensor(other)], 0, model.capabilities, CPU)
    plan = ForwardPlan(rows=torch.arange(1), all_rows=False, start=0, end=state.length, kv=None, key_end=state.length,
                       refresh=False, logits_start=pad, logits_end=state.length)
    return model.forward(state, plan)[0]


# --- the adapter ---------------------------------------------------------------------------------------


def test_capabilities_from_config(sdar_ckpt):
    caps = load(sdar_ckpt).capabilities
    assert (caps.mask_id, caps.eos_ids, caps.logit_shift, caps.attention, caps.block_size) == (
        MASK_ID, (EOT_ID,), 0, "block_causal", 4)
    assert load(sdar_ckpt, block_size=8).capabilities.block_size == 8
    assert load(sdar_ckpt).net.blocks[0].attn.q.out_features == 4 * 16  # head_dim from config.json, not d / heads


ids_lists = st.lists(st.integers(3, 85) | st.just(MASK_ID), min_size=1, max_size=13)


@settings(max_examples=10)
@given(ids=ids_lists, block=st.sampled_from([2, 4, 8]), pad=st.integers(0, 3), tied=st.booleans())
def test_logits_equal_the_restated_forward(sdar_ckpt, tied_ckpt, ids, block, pad, tied):
    """Random tokens and MASKs, block sizes other than config.json's, left padding: blocks are counted in the
    row's own positions."""
    path = tied_ckpt if tied else sdar_ckpt
    ours = dlm_logits(load(path, block_size=block), ids, pad)
    torch.testing.assert_close(ours, naive(path).logits(ids, block), rtol=0, atol=1e-10)


def test_logits_equal_transformers_qwen3_under_the_block_causal_mask(sdar_ckpt):
    """An independent implementation of the architecture: transformers' Qwen3 on the same tensors."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    raw = json.loads((sdar_ckpt / "config.json").read_text())
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
            "tie_word_embeddings", "attention_bias")
    hf = Qwen3ForCausalLM(Qwen3Config(**{k: raw[k] for k in keep})).double().eval()
    missing, unexpected = hf.load_state_dict(load_file(str(sdar_ckpt / "model.safetensors")), strict=False)
    assert not missing and not unexpected
    ids = torch.randint(3, 86, (11,), generator=torch.Generator().manual_seed(4))
    blk = torch.arange(11) // 4
    mask = torch.zeros(11, 11, dtype=torch.float64).masked_fill(~(blk[:, None] >= blk[None, :]), -torch.inf)
    with torch.no_grad():
        ref = hf(ids[None], attention_mask=mask[None, None]).logits[0]
    torch.testing.assert_close(dlm_logits(load(sdar_ckpt), ids.tolist(), 0), ref, rtol=0, atol=1e-10)


def _rewrite(path, tmp_path, edit_tensors=None, edit_config=None):
    out = tmp_path / "edited"
    out.mkdir()
    for f in path.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    if edit_tensors:
        t = load_file(str(out / "model.safetensors"))
        edit_tensors(t)
        save_file(t, str(out / "model.safetensors"))
    if edit_config:
        cfg = json.loads((out / "config.json").read_text())
        edit_config(cfg)
        (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_a_missing_qk_norm_tensor_is_named(sdar_ckpt, tmp_path):
    path = _rewrite(sdar_ckpt, tmp_path, edit_tensors=lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_norm\.weight'"):
        SDARModel.load(SDARConfig(path=path), dtype=torch.float64, device=CPU)


def test_a_misshapen_tensor_is_named_with_both_shapes(sdar_ckpt, tmp_path):
    def shrink(t):
        t["model.layers.0.self_attn.q_proj.weight"] = t["model.layers.0.self_attn.q_proj.weight"][:32]

    path = _rewrite(sdar_ckpt, tmp_path, edit_tensors=shrink)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.q_proj\.weight'.*\[32, 32\].*\[64, 32\]"):
        SDARModel.load(SDARConfig(path=path), dtype=torch.float64, device=CPU)


MOE = dict(model_type="sdar_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)


@pytest.mark.parametrize("edit, match", [
    (dict(num_experts_per_tok=5), "num_experts_per_tok 5 is more than num_experts 4"),
    (dict(num_experts_per_tok=0), r"num_experts_per_tok must be an integer >= 1, got 0"),
    (dict(num_experts=-1), r"num_experts must be an integer >= 0, got -1"),
    (dict(num_experts="many"), r"num_experts must be an integer, got 'many'"),
    (dict(num_experts=None), "model_type 'sdar_moe' but no 'num_experts'"),
    (dict(moe_intermediate_size=None), "has no 'moe_intermediate_size'"),
    (dict(decoder_sparse_step=0), r"decoder_sparse_step must be an integer >= 1, got 0"),
    (dict(mlp_only_layers=[0, 2]), r"mlp_only_layers \[2\] name no layer: the model has num_hidden_layers 2"),
    (dict(mlp_only_layers=[-1]), r"mlp_only_layers \[-1\] name no layer"),
    (dict(mlp_only_layers="0"), "mlp_only_layers must be a list of layer indices"),
    (dict(mlp_only_layers=[True]), "mlp_only_layers must be a list of layer indices"),
    (dict(norm_topk_prob="yes"), r"norm_topk_prob must be true or false, got 'yes'"),
])
def test_bad_moe_values_are_refused_naming_the_file_and_field(sdar_ckpt, tmp_path, edit, match):
    """Sparse-MoE configs (SDAR-30B-A3B) load (tests/test_sdar_moe.py); values the routing cannot follow do not."""
    path = _rewrite(sdar_ckpt, tmp_path, edit_config=lambda c: c.update({**MOE, **edit}))
    with pytest.raises(CheckpointError, match=match) as info:
        SDARModel.load(SDARConfig(path=path), dtype=torch.float64, device=CPU)
    assert str(path / "config.json") in str(info.value)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(attention_bias=True), "attention_bias=true"),
    (lambda c: c.update(use_sliding_window=True), "use_sliding_window"),
    (lambda c: c.update(model_type="llada"), "set model.name: llada"),
    (lambda c: c.update(head_dim="wide"), "head_dim must be an integer"),
    (lambda c: c.update(head_dim=7), "head_dim must be even"),
    (lambda c: (c.pop("head_dim"), c.update(num_attention_heads=3, num_key_value_heads=1)), "has no 'head_dim'"),
])
def test_unsupported_configs_are_refused_with_the_reason(sdar_ckpt, tmp_path, edit, match):
    path = _rewrite(sdar_ckpt, tmp_path, edit_config=edit)
    with pytest.raises(CheckpointError, match=match):
        SDARModel.load(SDARConfig(path=path), dtype=torch.float64, device=CPU)


def test_an_sdar_checkpoint_under_another_family_name_is_refused(sdar_ckpt):
    with pytest.raises(CheckpointError, match="model_type 'sdar' is a sdar checkpoint.*model.name: sdar"):
        Pipeline.from_config({"model": {"name": "fast_dllm_v2", "path": str(sdar_ckpt)},
                              "iteration": {"name": "block_diffusion", "gen_length": 8}, "decoding": "strict_threshold"})


# --- SDAR's block diffusion against the restated block loop ----------------------------------------------


RULES = {  # SDAR's remasking strategy -> the dlm decoding section(s) that are it (docs/models.md)
    "static": [{"name": "low_confidence"}, {"name": "strict_threshold", "threshold": 1.0, "at_least": "quota"}],
    "dynamic": [{"name": "strict_threshold", "at_least": "quota"}],
    "sequential": [{"name": "sequential"}],
}


def generate(path, prompts, *, gen_length, block, steps, decoding, cache, early_stop=False, eos=None):
    it = {"name": "block_diffusion", "gen_length": gen_length, "steps": steps, "early_stop": early_stop}
    raw = {"model": {"name": "sdar", "path": str(path)}, "iteration": it, "decoding": decoding,
           "cache": {"name": cache}, "dtype": "float64"}
    out = Pipeline.from_config(build_config(raw), model=load(path, block, eos)).generate(input_ids=prompts)
    return [g.tolist() for g in out.generated], [int(n) for n in out.nfe]


@settings(max_examples=15)
@given(prompt=st.lists(st.integers(3, 85), min_size=1, max_size=9), gen=st.integers(1, 9),
       block=st.sampled_from([2, 4]), steps=st.integers(1, 5), rule=st.sampled_from(sorted(RULES)),
       which=st.integers(0, 1), tau=st.sampled_from([0.0, 0.3, 0.9]), cache=st.sampled_from(["none", "block"]))
def test_block_diffusion_equals_the_released_block_loop(sdar_ckpt, prompt, gen, block, steps, rule, which, tau, cache):
    """Tokens equal; NFE = the loop's denoising forwards (its prefill and its per-block K/V store forwards are
    folded into the next forward by the block cache, and not needed without one)."""
    dec = dict(RULES[rule][which % len(RULES[rule])])
    if rule == "dynamic":
        dec["threshold"] = tau
    total = -(-(len(prompt) + gen) // block) * block - len(prompt)  # the released canvas: whole blocks
    ref, ref_nfe, denoise, _ = reference_sdar_generate(naive(sdar_ckpt), prompt, gen_length=gen, block_length=block,
                                                       steps=steps, rule=rule, tau=tau)
    tokens, nfe = generate(sdar_ckpt, [prompt], gen_length=total, block=block, steps=steps, decoding=dec, cache=cache)
    assert tokens[0] == ref
    assert nfe[0] == denoise
    blocks = -(-(len(prompt) + gen) // block)
    assert ref_nfe == denoise + (len(prompt) >= block) + blocks - len(prompt) // block


_COMMON: dict[str, list[int]] = {}


def common_tokens(path) -> list[int]:
    """The three tokens the model generates most often (stop tokens that do occur)."""
    if str(path) not in _COMMON:
        gen, _ = generate(path, [[5, 6, 7], [40, 41], [60, 61, 62, 63, 64]], gen_length=12, block=4, steps=4,
                          decoding={"name": "low_confidence"}, cache="block")
        counts = torch.bincount(torch.tensor(sum(gen, [])))
        _COMMON[str(path)] = counts.argsort(descending=True)[:3].tolist()
    return _COMMON[str(path)]


@settings(max_examples=8)
@given(prompt=st.lists(st.integers(3, 85), min_size=1, max_size=9), rule=st.sampled_from(sorted(RULES)),
       steps=st.sampled_from([2, 4]), pick=st.integers(0, 2))
def test_early_stop_gives_the_released_tokens_up_to_the_stop_token(sdar_ckpt, prompt, rule, steps, pick):
    """The released loop completes the stop token's block and stops; dlm ends the row once the stop token has
    no mask before it, filling the rest with it, after the loop's denoising forwards up to that point."""
    stop = common_tokens(sdar_ckpt)[pick]
    assume(stop not in prompt)
    gen = 12 - len(prompt) % 4
    ref, _, denoise, first = reference_sdar_generate(naive(sdar_ckpt), prompt, gen_length=gen, block_length=4,
                                                     steps=steps, rule=rule, tau=0.5, stop=[stop])
    dec = dict(RULES[rule][0], **({"threshold": 0.5} if rule == "dynamic" else {}))
    tokens, nfe = generate(sdar_ckpt, [prompt], gen_length=gen, block=4, steps=steps, decoding=dec, cache="block",
                           early_stop=True, eos=(stop,))
    if first is None:
        assert tokens[0] == ref
    else:
        assert tokens[0] == ref[: first + 1] + [stop] * (gen - first - 1)
    assert nfe[0] == denoise


@pytest.mark.parametrize("rule", sorted(RULES))
def test_batched_equals_one_at_a_time(sdar_ckpt, rule):
    """Every residue of the prompt length modulo the block size, so block boundaries differ per row."""
    prompts = [list(range(10, 10 + n)) for n in (4, 6, 9, 3)]
    dec = dict(RULES[rule][0], **({"threshold": 0.3} if rule == "dynamic" else {}))
    for cache in ("none", "block"):
        kw = dict(gen_length=10, block=4, steps=2, decoding=dec, cache=cache)
        batched = generate(sdar_ckpt, prompts, **kw)
        for r, p in enumerate(prompts):
            alone = generate(sdar_ckpt, [p], **kw)
            assert (batched[0][r], batched[1][r]) == (alone[0][0], alone[1][0]), (cache, r)


def test_steps_are_refused_for_models_whose_blocks_start_with_an_ar_step(tmp_path):
    v2 = make_qwen2_checkpoint(tmp_path / "v2", bd_size=4)
    with pytest.raises(CompositionError, match="unshifted logits"):
        Pipeline.from_config({"model": {"name": "fast_dllm_v2", "path": str(v2)},
                              "iteration": {"name": "block_diffusion", "gen_length": 8, "steps": 2},
                              "decoding": "low_confidence"})


# --- the schedule and the rules against brute force ---------------------------------------------------------


@pytest.mark.parametrize("block, steps", [(4, 4), (4, 1), (4, 3), (8, 3), (4, 6), (32, 5)])
def test_the_quota_schedule_is_sdars(block, steps):
    ours = block_schedule(block, steps, torch.arange(steps)).tolist()
    assert ours == [max(q, 1) for q in transfer_tokens(block, steps)]
    assert block_schedule(block, steps, torch.tensor([steps, steps + 3])).tolist() == [1, 1]


rows = st.integers(1, 8).flatmap(lambda w: st.tuples(
    st.lists(st.floats(0.01, 1.0), min_size=w, max_size=w).filter(lambda c: len(set(c)) == w),
    st.lists(st.booleans(), min_size=w, max_size=w).filter(any), st.integers(1, w + 1)))


@settings(max_examples=15)
@given(row=rows, tau=st.floats(0.0, 1.0))
def test_at_least_quota_commits_sdars_dynamic_choice(row, tau):
    """SDAR: the positions with p > τ when at least the quota of them, else the quota's most confident."""
    conf, eligible, quota = row
    c, e = torch.tensor([conf], dtype=torch.float64), torch.tensor([eligible])
    ours = quota_floor_select(c, e, tau, torch.tensor([quota]))
    masked = [i for i in range(len(conf)) if eligible[i]]
    high = [i for i in masked if conf[i] > tau]
    want = high if len(high) >= quota else sorted(masked, key=lambda i: -conf[i])[:quota]
    assert sorted(ours[0].nonzero()[:, 0].tolist()) == sorted(want)


@pytest.mark.parametrize("width", [2, 4, 7])
def test_at_least_quota_commits_exactly_the_quota_among_tied_maxima(width):
    """Sampled confidences of filtered distributions are often exactly 1.0: ties must not add a position."""
    conf = torch.ones(1, width, dtype=torch.float64)
    eligible = torch.ones(1, width, dtype=torch.bool)
    for quota in range(1, width + 1):
        assert int(quota_floor_select(conf, eligible, 1.0, torch.tensor([quota])).sum()) == quota


@settings(max_examples=10)
@given(row=rows)
def test_sequential_commits_the_leftmost_quota(row):
    _, eligible, quota = row
    ours = leftmost_select(torch.tensor([eligible]), torch.tensor([quota]))
    assert ours[0].nonzero()[:, 0].tolist() == [i for i in range(len(eligible)) if eligible[i]][:quota]


def test_sdar_filters_top_k_before_top_p():
    """``sample_with_temperature_topk_topp`` order, restated: logits / T, keep the k largest, then the nucleus."""
    logits = torch.tensor([[[3.0, 2.9, 2.8, 0.0, -1.0]]], dtype=torch.float64)
    t, k, p = 0.5, 2, 0.6
    x = logits / t
    kept = torch.full_like(x, -torch.inf)
    top = x.topk(k, dim=-1)
    kept.scatter_(-1, top.indices, top.values)
    probs = torch.softmax(kept, -1)
    order = probs.sort(dim=-1, descending=True)
    drop = order.values.cumsum(-1) > p
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    want = torch.softmax(kept.masked_fill(torch.zeros_like(drop).scatter(-1, order.indices, drop), -torch.inf), -1)
    ours = filtered_probs(logits, temperature=t, top_p=p, top_k=k, top_k_first=True)
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-15)
    # the order matters: top-p first (Dream's) keeps two tokens here, SDAR's order one
    assert int((filtered_probs(logits, temperature=t, top_p=0.5, top_k=k) > 0).sum()) == 2
    assert int((filtered_probs(logits, temperature=t, top_p=0.5, top_k=k, top_k_first=True) > 0).sum()) == 1


# --- the contract kit on SDAR's settings --------------------------------------------------------------------

# block_diffusion with SDAR's schedule refuses the shifted test models, so the kit drives it on the sdar one
test_contract_sdar_schedule = contract_test("iteration", "block_diffusion", {"gen_length": 16, "steps": 3})
test_contract_dynamic_floor = contract_test("decoding", "strict_threshold", {"threshold": 0.5, "at_least": "quota"})
test_contract_sequential_sampled = contract_test("decoding", "sequential", {"temperature": 0.8, "top_k": 5,
                                                                            "top_p": 0.9})
