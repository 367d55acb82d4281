"""Dream: Qwen2-layout loading, logits equal to transformers' Qwen2 (non-causal), Dream's schedules and
confidence kinds against an independent re-statement of Dream's sampler, the cache equivalences, and rows
joining a running generation giving what they give alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dlm.config import build_config
from dlm.errors import CheckpointError, CompositionError
from dlm.iteration.base import left_padded_canvas
from dlm.iteration.dream import dream_quota, dream_timesteps
from dlm.models.dream import DreamConfig, DreamModel
from dlm.pipeline import Pipeline
from dlm.testing.joins import alone_outputs, joined_outputs
from dlm.messages import ForwardPlan
from dlm.tools.qwen2_checkpoints import MASK_ID, make_qwen2_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dream_ckpt(tmp_path_factory):
    """2 layers, d=32, 4 heads / 2 kv heads (GQA), q/k/v biases, char vocabulary, legacy rope_theta."""
    return make_qwen2_checkpoint(tmp_path_factory.mktemp("dream") / "ckpt", seed=11)


@pytest.fixture(scope="module")
def dream_sharded(tmp_path_factory):
    """Tied embeddings, 3 shards with an index, rope theta in transformers 5's rope_parameters."""
    return make_qwen2_checkpoint(
        tmp_path_factory.mktemp("dream_sh") / "ckpt", seed=12, shards=3, tie_word_embeddings=True,
        rope_form="parameters", num_key_value_heads=1,
    )


@pytest.fixture(scope="module")
def dream_one_layer(tmp_path_factory):
    return make_qwen2_checkpoint(tmp_path_factory.mktemp("dream1") / "ckpt", seed=13, num_hidden_layers=1)


def load(path, dtype=torch.float64) -> DreamModel:
    return DreamModel.load(DreamConfig(path=path), dtype=dtype, device=CPU)


def hf_qwen2(path):
    """transformers' own Qwen2ForCausalLM, configured non-causal, on the same files (no remote code)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config.from_pretrained(str(path))
    cfg.is_causal = False
    return Qwen2ForCausalLM.from_pretrained(str(path), config=cfg, dtype=torch.float64).eval()


def adapter_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Predictions for columns 1..n-1 of one row through the public forward (outputs 0..n-2, shifted)."""
    state = left_padded_canvas([ids], 0, model.capabilities, CPU)
    n = ids.numel()
    rows = torch.arange(1)
    plan = ForwardPlan(rows=rows, all_rows=True, start=0, end=n, kv=None, key_end=n, refresh=False, logits_start=1,
                       logits_end=n)
    return model.forward(state, plan)[0]


# --- the adapter ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["dream_ckpt", "dream_sharded"])
def test_logits_equal_transformers_qwen2_non_causal(which, request):
    path = request.getfixturevalue(which)
    model, ref_model = load(path), hf_qwen2(path)
    ids = torch.randint(3, 60, (18,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = ref_model(ids[None]).logits[0]
    torch.testing.assert_close(adapter_logits(model, ids), ref[:-1], rtol=0, atol=1e-10)


def test_capabilities_from_config(dream_ckpt):
    caps = load(dream_ckpt).capabilities
    assert (caps.mask_id, caps.eos_ids, caps.logit_shift, caps.attention) == (MASK_ID, (0,), 1, "bidirectional")
    model = DreamModel.load(DreamConfig(path=dream_ckpt, mask_token_id=5, eos_token_ids=(1, 0)), dtype=torch.float32,
                            device=CPU)
    assert model.capabilities.mask_id == 5 and model.capabilities.eos_ids == (1, 0)
    assert model.net.embed.weight.dtype == torch.float32


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_and_misshaped_tensors_are_named(dream_ckpt, tmp_path):
    bad = _copy(dream_ckpt, tmp_path / "missing")
    t = load_file(str(bad / "model.safetensors"))
    del t["model.layers.1.self_attn.k_proj.bias"]
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias"):
        load(bad)
    bad = _copy(dream_ckpt, tmp_path / "shape")
    t = load_file(str(bad / "model.safetensors"))
    t["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 32)
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*\[3, 32\]"):
        load(bad)


def test_unsupported_config_is_refused(dream_ckpt, tmp_path):
    bad = _copy(dream_ckpt, tmp_path / "rope")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="yarn"):
        load(bad)
    cfg["rope_scaling"] = None
    del cfg["num_hidden_layers"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        load(bad)


# --- Dream's schedule and sampler against an independent re-statement ---------------------------------


def test_dream_schedule_floors_like_dream():
    ts = dream_timesteps(256, 1e-3)
    assert int(dream_quota(torch.tensor([256]), 0, 256, ts)) == 0  # int(256 · (1 − s/t)) = int(0.999…) = 0
    q = [int(dream_quota(torch.tensor([m]), i, 4, dream_timesteps(4, 1e-3))) for i, m in enumerate([16, 12, 8, 4])]
    ref = [int(torch.tensor(float(m)) * (1 - dream_timesteps(4, 1e-3)[i + 1] / dream_timesteps(4, 1e-3)[i]))
           for i, m in enumerate([16, 12, 8])]
    assert q[:3] == ref and q[3] == 4


def reference_dream_generate(hf, prompt, gen_length, steps, alg, eps=1e-3):
    """Dream's ``diffusion_generate`` (T = 0, alg_temp = 0, batch 1), restated on transformers' Qwen2.

    The one intended difference from Dream's code: MASK is never taken as the proposal (see proposal.py).
    """
    x = torch.cat([prompt, torch.full((gen_length,), MASK_ID)])
    ts = torch.linspace(1, eps, steps + 1)
    nfe = 0
    for i in range(steps):
        mask_index = x == MASK_ID
        n = mask_index.sum().float()
        k = int(n * (1 - ts[i + 1] / ts[i])) if i < steps - 1 else int(n)
        if k == 0:
            continue  # Dream runs this forward and commits nothing; the canvas does not change
        with torch.no_grad():
            logits = hf(x[None]).logits[0]
        nfe += 1
        logits = torch.cat([logits[:1], logits[:-1]])  # Dream's shift
        probs = torch.softmax(logits[mask_index].double(), dim=-1)
        no_mask = probs.clone()
        no_mask[:, MASK_ID] = -1
        top, x0 = no_mask.max(dim=-1)
        if alg == "maskgit_plus":
            conf = top
        elif alg == "topk_margin":
            s = probs.sort(dim=-1, descending=True).values
            conf = s[:, 0] - s[:, 1]
        else:
            conf = (probs * torch.log(probs + 1e-10)).sum(dim=-1)
        full = torch.full(x.shape, -torch.inf, dtype=torch.float64)
        full[mask_index] = conf
        idx = full.topk(k).indices
        proposal = torch.full_like(x, MASK_ID)
        proposal[mask_index] = x0
        x[idx] = proposal[idx]
    return x[prompt.numel():], nfe


_MODELS: dict[str, DreamModel] = {}


def dream_pipeline(path, **sections):
    """A float64 pipeline; the model is loaded once per checkpoint (components are fresh each time)."""
    raw = {"model": {"name": "dream", "path": str(path)}, "dtype": "float64", "cache": {"name": "none"}}
    raw.update(sections)
    model = _MODELS.get(str(path)) or _MODELS.setdefault(str(path), load(path))
    return Pipeline.from_config(build_config(raw), model=model)


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("steps", [12, 5])
def test_dream_generation_matches_reference_sampler(dream_ckpt, alg, steps):
    hf = hf_qwen2(dream_ckpt)
    prompt = torch.tensor([5, 9, 14, 20, 7, 30])
    ref, ref_nfe = reference_dream_generate(hf, prompt.clone(), 12, steps, alg)
    pipe = dream_pipeline(dream_ckpt, iteration={"name": "dream", "gen_length": 12, "steps": steps},
                          decoding={"name": "dream", "alg": alg})
    out = pipe.generate(input_ids=[prompt.tolist()])
    assert out.generated[0].tolist() == ref.tolist()
    assert out.nfe[0] == ref_nfe


def reference_fast_dllm_dream_block(hf, prompt, gen_length, block_length, tau):
    """Fast-dLLM's Dream block path without cache (``generation_utils_block.py``, confidence_threshold,
    T = 0, batch 1): per block, one forward decodes the block's first token unconditionally, then steps
    commit masked block tokens with confidence ≥ τ plus the most confident one. MASK is never proposed."""
    x = torch.cat([prompt, torch.full((gen_length,), MASK_ID)])
    p = prompt.numel()
    nfe = 0

    def shifted_probs():
        with torch.no_grad():
            logits = hf(x[None]).logits[0]
        logits = torch.cat([logits[:1], logits[:-1]])
        probs = torch.softmax(logits.double(), dim=-1)
        probs[:, MASK_ID] = -1  # excluded from the proposal only
        return probs

    for b in range(gen_length // block_length):
        s, e = p + b * block_length, p + (b + 1) * block_length
        x[s] = shifted_probs()[s].argmax()
        nfe += 1
        while bool((x[s:e] == MASK_ID).any()):
            probs = shifted_probs()
            nfe += 1
            conf, x0 = probs[s:e].max(dim=-1)
            masked = x[s:e] == MASK_ID
            conf = torch.where(masked, conf, -torch.inf)
            take = masked & (conf >= tau)
            take[conf.argmax()] = True
            x[s:e] = torch.where(take, x0, x[s:e])
    return x[p:], nfe


@pytest.mark.parametrize("tau", [0.0, 0.05, 0.9])
def test_dream_blockwise_matches_fast_dllm_dream_block_path(dream_ckpt, tau):
    hf = hf_qwen2(dream_ckpt)
    prompt = torch.tensor([12, 4, 33, 8, 17])
    ref, ref_nfe = reference_fast_dllm_dream_block(hf, prompt.clone(), 12, 4, tau)
    pipe = dream_pipeline(
        dream_ckpt, iteration={"name": "dream_blockwise", "gen_length": 12, "block_length": 4, "steps": 12},
        decoding={"name": "threshold", "threshold": tau},
    )
    out = pipe.generate(input_ids=[prompt.tolist()])
    assert out.generated[0].tolist() == ref.tolist()
    assert out.nfe[0] == ref_nfe


def test_other_confidence_kinds_and_sampling_run(dream_ckpt):
    for dec in ({"alg": "origin"}, {"alg": "entropy", "alg_temp": 0.5}, {"alg": "maskgit_plus", "temperature": 0.7,
                                                                           "top_p": 0.9, "top_k": 20}):
        pipe = dream_pipeline(dream_ckpt, iteration={"name": "dream", "gen_length": 10, "steps": 4},
                              decoding={"name": "dream", **dec})
        out = pipe.generate(input_ids=[[5, 6, 7]])
        assert not bool((out.generated[0] == MASK_ID).any()) and out.nfe[0] <= 4


# --- caches: exactness conditions, and batched = one at a time ----------------------------------------


def run(path, prompts, iteration, decoding, cache):
    pipe = dream_pipeline(path, iteration=iteration, decoding=decoding, cache={"name": cache})
    out = pipe.generate(input_ids=prompts)
    return [g.tolist() for g in out.generated], out.nfe


prompt_lists = st.lists(st.lists(st.integers(3, 80), min_size=1, max_size=9), min_size=1, max_size=3)


@settings(max_examples=15)
@given(prompts=prompt_lists, tau=st.floats(0.0, 1.0), blocks=st.integers(1, 3), block_length=st.integers(1, 5))
def test_one_layer_prefix_and_dual_equal_no_cache(dream_one_layer, prompts, tau, blocks, block_length):
    """1 layer: layer-0 K/V depend only on the token, so the cached steps see exactly the no-cache keys."""
    it = {"name": "dream_blockwise", "gen_length": blocks * block_length, "block_length": block_length,
          "steps": blocks * block_length}
    dec = {"name": "threshold", "threshold": tau}
    ref = run(dream_one_layer, prompts, it, dec, "none")
    assert run(dream_one_layer, prompts, it, dec, "prefix") == ref
    assert run(dream_one_layer, prompts, it, dec, "dual") == ref


@settings(max_examples=15)
@given(prompts=prompt_lists, blocks=st.integers(1, 3), block_length=st.integers(1, 5))
def test_complete_at_refresh_prefix_and_dual_equal_no_cache(dream_ckpt, prompts, blocks, block_length):
    """Any depth: when every block is completed by its refresh forward, no cached step ever runs."""
    it = {"name": "blockwise", "gen_length": blocks * block_length, "block_length": block_length, "steps": blocks}
    dec = {"name": "low_confidence"}
    ref = run(dream_ckpt, prompts, it, dec, "none")
    assert ref[1] == [blocks] * len(prompts)
    assert run(dream_ckpt, prompts, it, dec, "prefix") == ref
    assert run(dream_ckpt, prompts, it, dec, "dual") == ref


def test_one_layer_plain_blockwise_with_shift_equals_no_cache(dream_one_layer):
    """Plain blockwise windows start at the block start: cached steps then recompute the column before."""
    it = {"name": "blockwise", "gen_length": 12, "block_length": 4, "steps": 12}
    dec = {"name": "low_confidence"}
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    ref = run(dream_one_layer, prompts, it, dec, "none")
    assert run(dream_one_layer, prompts, it, dec, "prefix") == ref
    assert run(dream_one_layer, prompts, it, dec, "dual") == ref


@pytest.mark.parametrize(
    "iteration,decoding,cache",
    [
        ({"name": "dream", "gen_length": 10, "steps": 6}, {"name": "dream", "alg": "entropy"}, "none"),
        ({"name": "dream", "gen_length": 10, "steps": 6}, {"name": "dream", "alg": "topk_margin"}, "prefix"),
        ({"name": "dream_blockwise", "gen_length": 12, "block_length": 4, "steps": 12},
         {"name": "threshold", "threshold": 0.2}, "dual"),
        ({"name": "dream_blockwise", "gen_length": 12, "block_length": 4, "steps": 6},
         {"name": "dream", "alg": "maskgit_plus"}, "prefix"),
    ],
)
def test_batched_equals_one_at_a_time(dream_ckpt, iteration, decoding, cache):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33]]
    batched = run(dream_ckpt, prompts, iteration, decoding, cache)
    for r, p in enumerate(prompts):
        alone = run(dream_ckpt, [p], iteration, decoding, cache)
        assert batched[0][r] == alone[0][0] and batched[1][r] == alone[1][0]


def test_whole_region_iteration_refuses_block_causal_models(tmp_path):
    path = make_qwen2_checkpoint(tmp_path / "v2", bd_size=4)
    with pytest.raises(CompositionError, match="bidirectional"):
        Pipeline.from_config({"model": {"name": "fast_dllm_v2", "path": str(path)},
                              "iteration": {"name": "dream", "gen_length": 8, "steps": 8},
                              "decoding": {"name": "dream"}})


# --- rows joining a running generation give what they give alone ----------------------------------------


def assert_joins_give_alone(pipe, prompts, join_at):
    """Every row: the same tokens and NFE when it joins the running generation after ``join_at[i]`` steps as
    when it runs by itself (per-row ticks, blocks and steps; per-row cache memory)."""
    seeds = [7 + i for i in range(len(prompts))]
    assert joined_outputs(pipe, prompts, seeds, join_at) == alone_outputs(pipe, prompts, seeds)


joins = st.lists(st.tuples(st.lists(st.integers(3, 80), min_size=1, max_size=7), st.integers(0, 8)), min_size=2,
                 max_size=3)


@settings(max_examples=10)
@given(rows=joins, alg=st.sampled_from(["entropy", "maskgit_plus"]), temperature=st.sampled_from([0.0, 0.8]),
       steps=st.sampled_from([3, 6, 10]), cache=st.sampled_from(["none", "prefix"]))
def test_rows_joining_a_dream_generation_give_their_alone_output(dream_ckpt, rows, alg, temperature, steps, cache):
    """``dream``: each row skips its own zero-quota ticks, so its forwards do not depend on the others'."""
    pipe = dream_pipeline(dream_ckpt, iteration={"name": "dream", "gen_length": 10, "steps": steps},
                          decoding={"name": "dream", "alg": alg, "temperature": temperature}, cache={"name": cache})
    assert pipe.iteration.joinable
    assert_joins_give_alone(pipe, [r for r, _ in rows], [t for _, t in rows])


@settings(max_examples=10)
@given(rows=joins, decoding=st.sampled_from([{"name": "threshold", "threshold": 0.1},
                                              {"name": "threshold", "threshold": 0.6},
                                              {"name": "dream", "alg": "maskgit_plus"}]),
       block_length=st.sampled_from([1, 3, 4]))
def test_rows_joining_a_dream_blockwise_generation_give_their_alone_output(dream_ckpt, rows, decoding, block_length):
    """``dream_blockwise`` without cache: rows at different blocks, first-column and later steps share forwards."""
    it = {"name": "dream_blockwise", "gen_length": 3 * block_length, "block_length": block_length,
          "steps": 3 * block_length}
    pipe = dream_pipeline(dream_ckpt, iteration=it, decoding=decoding, cache={"name": "none"})
    assert pipe.iteration.joinable
    assert_joins_give_alone(pipe, [r for r, _ in rows], [t for _, t in rows])


@settings(max_examples=10)
@given(rows=joins, tau=st.sampled_from([0.0, 0.1, 0.6]), cache=st.sampled_from(["prefix", "dual"]))
def test_rows_joining_a_cached_dream_blockwise_generation_give_their_alone_output(dream_ckpt, rows, tau, cache):
    """``dream_blockwise`` with Fast-dLLM's caches: each row's K/V are kept and served as alone (rows at their
    first-column step, at later steps and at other blocks share one forward)."""
    it = {"name": "dream_blockwise", "gen_length": 12, "block_length": 4, "steps": 12}
    pipe = dream_pipeline(dream_ckpt, iteration=it, decoding={"name": "threshold", "threshold": tau},
                          cache={"name": cache})
    assert_joins_give_alone(pipe, [r for r, _ in rows], [t for _, t in rows])
