"""The LLaDA adapter loads the real on-disk layout and computes what transformers' Llama computes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dlm.messages import ForwardPlan
from dlm.errors import CheckpointError
from dlm.iteration.base import left_padded_canvas
from dlm.models.llada import LLaDAConfig, LLaDAModel


def load(path, dtype=torch.float64):
    return LLaDAModel.load(LLaDAConfig(path=path), dtype=dtype, device=torch.device("cpu"))


def full_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits of every column of one unpadded row, through the adapter's public forward."""
    state = left_padded_canvas([ids], 0, model.capabilities, torch.device("cpu"))
    rows = torch.arange(1)
    n = ids.numel()
    plan = ForwardPlan(rows=rows, all_rows=True, start=0, end=n, kv=None, key_end=n, refresh=False,
                       logits_start=0, logits_end=n)
    return model.forward(state, plan)[0]


def to_llama(ckpt):
    """transformers' LlamaForCausalLM, non-causal, with LLaDA's tensors renamed (models-env.md §1.4)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((ckpt / "config.json").read_text())
    hf_cfg = LlamaConfig(
        vocab_size=cfg["embedding_size"], hidden_size=cfg["d_model"], intermediate_size=cfg["mlp_hidden_size"],
        num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"],
        num_key_value_heads=cfg["n_kv_heads"], rms_norm_eps=cfg["rms_norm_eps"],
        max_position_embeddings=cfg["max_sequence_length"], rope_theta=cfg["rope_theta"],
        tie_word_embeddings=cfg["weight_tying"], attention_bias=False, mlp_bias=False,
    )
    hf_cfg.is_causal = False
    hf_cfg.rope_parameters = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    ren = {"attn_out": "self_attn.o_proj", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
           "v_proj": "self_attn.v_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
           "ff_out": "mlp.down_proj", "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm"}
    sd = {}
    for name, t in load_file(str(ckpt / "model.safetensors")).items():
        name = name.removeprefix("model.transformer.")
        if name.startswith("blocks."):
            _, i, mod, w = name.split(".")
            sd[f"model.layers.{i}.{ren[mod]}.{w}"] = t
        else:
            sd[{"wte.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight",
                "ff_out.weight": "lm_head.weight"}[name]] = t
    model = LlamaForCausalLM(hf_cfg).to(torch.float64)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def test_logits_equal_transformers_llama_non_causal(tiny_ckpt):
    model = load(tiny_ckpt)
    llama = to_llama(tiny_ckpt)
    ids = torch.randint(3, 60, (20,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = llama(ids[None]).logits[0]
    ours = full_logits(model, ids)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


def test_attention_is_bidirectional(tiny_ckpt):
    model = load(tiny_ckpt)
    ids = torch.randint(3, 60, (12,), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[-1] = (changed[-1] + 1 - 3) % 57 + 3
    assert not torch.allclose(full_logits(model, ids)[0], full_logits(model, changed)[0])


def test_sharded_and_tied_checkpoint_loads(sharded_ckpt):
    model = load(sharded_ckpt)
    assert model.net.head is None  # weight tying: logits through the embedding
    assert full_logits(model, torch.tensor([5, 6, 7])).shape == (3, model.net.spec.vocab_out)


def test_dtype_setting_is_honoured(tiny_ckpt):
    assert load(tiny_ckpt, torch.bfloat16).net.embed.weight.dtype == torch.bfloat16


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_tensor_is_named(tiny_ckpt, tmp_path):
    ck = _copy(tiny_ckpt, tmp_path / "ck")
    t = load_file(str(ck / "model.safetensors"))
    del t["model.transformer.blocks.1.up_proj.weight"]
    save_file(t, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.transformer\.blocks\.1\.up_proj\.weight'"):
        load(ck)


def test_unexpected_tensor_is_named(tiny_ckpt, tmp_path):
    ck = _copy(tiny_ckpt, tmp_path / "ck")
    t = load_file(str(ck / "model.safetensors"))
    t["model.transformer.blocks.9.q_proj.weight"] = torch.zeros(2, 2)
    save_file(t, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.transformer\.blocks\.9\.q_proj\.weight'"):
        load(ck)


def test_misshaped_tensor_is_named(tiny_ckpt, tmp_path):
    ck = _copy(tiny_ckpt, tmp_path / "ck")
    t = load_file(str(ck / "model.safetensors"))
    t["model.transformer.ln_f.weight"] = torch.ones(31)
    save_file(t, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'model\.transformer\.ln_f\.weight'.*\[31\].*\[32\]"):
        load(ck)


def test_pickle_only_checkpoint_is_refused(tiny_ckpt, tmp_path):
    ck = _copy(tiny_ckpt, tmp_path / "ck")
    (ck / "model.safetensors").unlink()
    (ck / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load(ck)


def test_missing_config_field_is_named(tiny_ckpt, tmp_path):
    ck = _copy(tiny_ckpt, tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    del cfg["n_layers"]
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="'n_layers'"):
        load(ck)


def test_capabilities_come_from_checkpoint(tiny_ckpt):
    caps = load(tiny_ckpt).capabilities
    assert caps.mask_id == 2 and caps.eos_ids == (0, 1) and caps.max_length == 512


@pytest.mark.parametrize("full_precision", [True, False])
def test_bfloat16_rotates_in_float32_as_lladas_rope_full_precision(tiny_ckpt, tmp_path, full_precision):
    """LLaDA's config says rope_full_precision (default true): a bfloat16 model rotates queries and keys in
    float32 and rounds once, as the released modeling_llada.py does; with it false, in bfloat16."""
    from dlm.models.kv import KVBuffer
    from dlm.models.layers import apply_rope

    ckpt = _copy(tiny_ckpt, tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["rope_full_precision"] = full_precision
    (ckpt / "config.json").write_text(json.dumps(cfg))
    net = load(ckpt, dtype=torch.bfloat16).net
    assert net.spec.rope_full_precision is full_precision
    ids = torch.tensor([[5, 9, 14, 20, 33, 7]])
    positions = torch.arange(6)[None]
    s = net.spec
    kv = KVBuffer(s.n_layers, 1, s.n_kv_heads, 6, s.head_dim, dtype=torch.bfloat16, device=torch.device("cpu"))
    net(ids, positions, None, kv=kv, rows=None, key_end=6)
    block = net.blocks[0]
    k = block.attn.k(block.attn_norm(net.embed(ids))).view(1, 6, s.n_kv_heads, s.head_dim).transpose(1, 2)
    cos, sin = (t[positions] for t in net.rope(torch.device("cpu")))
    if full_precision:
        want = apply_rope(k.float(), cos, sin).bfloat16()
    else:
        want = apply_rope(k, cos.bfloat16(), sin.bfloat16())
    assert torch.equal(kv.keys[0], want)
