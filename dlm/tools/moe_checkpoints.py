"""Write random-weight checkpoints in LLaDA-MoE's released layout, with a character tokenizer.

The files are what the ``llada_moe`` adapter (and the released ``modeling_lladamoe.py``) read from a real
checkpoint: ``config.json`` with the fields of LLaDA-MoE's config class (``model_type: "llada"``,
``architectures: ["LLaDAMoEModelLM"]``; no ``auto_map``, since no model code is shipped), safetensors with its
tensor names (``model.layers.{i}.mlp.experts.{e}.gate_proj.weight``, ...), ``tokenizer.json`` and
``tokenizer_config.json``. Token ids of the character tokenizer: EOS 0, ``<|role_end|>`` 1 (LLaDA-MoE's end of
turn), MASK 2; config.json names the MASK id (the released ids are 156895 and 156892).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from dlm.tools.checkpoints import EOS_ID, MASK_ID, save_tensors, scaled_randn, write_char_tokenizer

SPECIALS = ("<|endoftext|>", "<|role_end|>", "<|mdm_mask|>", "<|startoftext|>", "<role>", "</role>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<role>{{ m['role'] | upper }}</role>{{ m['content'] }}<|role_end|>{% endfor %}"
    "{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}"
)


def llada_moe_config(
    *, vocab_size: int, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
    num_key_value_heads: int | None = None, num_experts: int = 4, num_experts_per_tok: int = 2,
    expert_intermediate_size: int = 16, dense_intermediate_size: int | None = None,
    moe_layer_freq: Sequence[int] | None = None, shared_expert_intermediate_size: int | None = None,
    qk_layernorm: bool = True, partial_rotary_factor: float = 1.0, attention_bias: bool = False,
    expert_bias: bool = False, norm_topk_prob: bool = False, clip_qkv: float | None = None,
    max_position_embeddings: int = 512, tie_word_embeddings: bool = False, rope_theta: float = 50000.0,
    mask_token_id: int | None = MASK_ID, eos_token_id: int = EOS_ID,
) -> dict:
    """A config.json in LLaDA-MoE's schema (the fields of its released config class)."""
    cfg = {
        "architectures": ["LLaDAMoEModelLM"],
        "model_type": "llada",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "dense_intermediate_size": dense_intermediate_size or 4 * hidden_size,
        "expert_intermediate_size": expert_intermediate_size,
        "shared_expert_intermediate_size": shared_expert_intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads or num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-5,
        "use_cache": False,
        "pad_token_id": eos_token_id,
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "tie_word_embeddings": tie_word_embeddings,
        "rope_theta": rope_theta,
        "partial_rotary_factor": partial_rotary_factor,
        "rope_scaling": None,
        "attention_bias": attention_bias,
        "attention_dropout": 0.0,
        "clip_qkv": clip_qkv,
        "num_experts_per_tok": num_experts_per_tok,
        "num_experts": num_experts,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.01,
        "norm_topk_prob": norm_topk_prob,
        "qk_layernorm": qk_layernorm,
        "moe_layer_freq": list(moe_layer_freq) if moe_layer_freq is not None else [1] * num_hidden_layers,
        "moe_router_enable_expert_bias": expert_bias,
        "moe_router_score_function": "softmax",
        "routed_scaling_factor": 1,
        "router_num_group": -2,
        "router_topk_group": -2,
        "torch_dtype": "float32",
    }
    if mask_token_id is not None:
        cfg["mask_token_id"] = mask_token_id
    return cfg


def random_llada_moe_tensors(
    cfg: dict, *, seed: int = 0, dtype: torch.dtype = torch.float32, silent_router_rows: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """Random weights with LLaDA-MoE's tensor names and shapes for ``cfg`` (scaled so activations stay O(1)).

    ``silent_router_rows``: experts whose router row is zero in every sparse layer, so their router logits are
    exactly 0 for every row: exact ties between them (duplicated rows would not do: a matrix product does not
    promise equal results for equal columns).
    """
    g = torch.Generator().manual_seed(seed)
    d, vocab, n_exp = cfg["hidden_size"], cfg["vocab_size"], cfg["num_experts"]
    hd = d // cfg["num_attention_heads"]
    kvd = cfg["num_key_value_heads"] * hd
    w = scaled_randn(g, dtype)

    def norm(n: int = d) -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(n, generator=g)).to(dtype)

    def bias(n: int) -> torch.Tensor:
        return (0.1 * torch.randn(n, generator=g)).to(dtype)

    def swiglu(prefix: str, hidden: int) -> dict[str, torch.Tensor]:
        return {prefix + "gate_proj.weight": w(hidden, d), prefix + "up_proj.weight": w(hidden, d),
                prefix + "down_proj.weight": w(d, hidden)}

    t = {"model.embed_tokens.weight": torch.randn(vocab, d, generator=g).to(dtype), "model.norm.weight": norm()}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = w(vocab, d) * 4
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        t.update({a + "q_proj.weight": w(d, d) * 2, a + "k_proj.weight": w(kvd, d) * 2, a + "v_proj.weight": w(kvd, d),
                  a + "o_proj.weight": w(d, d)})
        if cfg["attention_bias"]:
            t.update({a + "q_proj.bias": bias(d), a + "k_proj.bias": bias(kvd), a + "v_proj.bias": bias(kvd),
                      a + "o_proj.bias": bias(d)})
        if cfg["qk_layernorm"]:
            t.update({a + "q_norm.weight": norm(hd), a + "k_norm.weight": norm(hd)})
        t.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm()})
        if cfg["moe_layer_freq"][i] == 0:
            t.update(swiglu(p + "mlp.", cfg["dense_intermediate_size"]))
            continue
        router = w(n_exp, d) * 2
        router[list(silent_router_rows)] = 0
        t[p + "mlp.gate.weight"] = router
        if cfg["moe_router_enable_expert_bias"]:
            t[p + "mlp.expert_bias"] = (0.05 * torch.randn(n_exp, generator=g)).to(dtype)
        for e in range(n_exp):
            t.update(swiglu(f"{p}mlp.experts.{e}.", cfg["expert_intermediate_size"]))
        if cfg["shared_expert_intermediate_size"] is not None:
            t.update(swiglu(p + "shared_expert.", cfg["shared_expert_intermediate_size"]))
    return t


def make_llada_moe_checkpoint(
    directory: Path,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    num_experts: int = 4,
    num_experts_per_tok: int = 2,
    expert_intermediate_size: int = 16,
    dense_intermediate_size: int | None = None,
    moe_layer_freq: Sequence[int] | None = None,
    shared_expert_intermediate_size: int | None = None,
    qk_layernorm: bool = True,
    partial_rotary_factor: float = 1.0,
    attention_bias: bool = False,
    expert_bias: bool = False,
    clip_qkv: float | None = None,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    silent_router_rows: Sequence[int] = (),
    seed: int = 0,
    shards: int = 1,
    tokenizer: bool = True,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random LLaDA-MoE-layout checkpoint to ``directory`` and return it (every layer sparse unless
    ``moe_layer_freq`` says otherwise; see :func:`llada_moe_config` and :func:`random_llada_moe_tensors`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = (write_char_tokenizer(directory, model_max_length=max_position_embeddings, specials=SPECIALS,
                                  chat_template=CHAT_TEMPLATE) if tokenizer else 0)
    vocab = max(vocab, vocab_size or 0) or 64
    cfg = llada_moe_config(
        vocab_size=vocab, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads, num_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok, expert_intermediate_size=expert_intermediate_size,
        dense_intermediate_size=dense_intermediate_size, moe_layer_freq=moe_layer_freq,
        shared_expert_intermediate_size=shared_expert_intermediate_size, qk_layernorm=qk_layernorm,
        partial_rotary_factor=partial_rotary_factor, attention_bias=attention_bias, expert_bias=expert_bias,
        clip_qkv=clip_qkv, max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
    )
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    tensors = random_llada_moe_tensors(cfg, seed=seed, dtype=dtype, silent_router_rows=silent_router_rows)
    save_tensors(directory, tensors, shards=shards)
    return directory


__all__ = ["make_llada_moe_checkpoint", "llada_moe_config", "random_llada_moe_tensors"]
