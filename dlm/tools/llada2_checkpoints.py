"""Write random-weight checkpoints in LLaDA2's released layout (BailingMoeV2), with a character tokenizer.

The files are what the ``llada2`` adapter (and the released ``modeling_llada2_moe.py``) read from a real
checkpoint: ``config.json`` with the fields of LLaDA2's released config (``model_type: "llada2_moe"``,
``architectures: ["LLaDA2MoeModelLM"]``; no ``auto_map``, since no model code is shipped), safetensors with its
tensor names (``model.word_embeddings.weight``, ``model.layers.{i}.attention.query_key_value.weight``,
``model.layers.{i}.mlp.gate.expert_bias``, ``model.layers.{i}.mlp.shared_experts.up_proj.weight``, ...),
``tokenizer.json`` and ``tokenizer_config.json``. Token ids of the character tokenizer: EOS 0, ``<|role_end|>`` 1,
MASK 2; config.json names them (the released ids are 156892 and 156895).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from dlm.tools.checkpoints import EOS_ID, MASK_ID, save_tensors, scaled_randn, write_char_tokenizer
from dlm.tools.moe_checkpoints import CHAT_TEMPLATE, SPECIALS


def llada2_config(
    *, vocab_size: int, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
    num_key_value_heads: int | None = None, num_experts: int = 8, num_experts_per_tok: int = 2, n_group: int = 4,
    topk_group: int = 2, moe_intermediate_size: int = 16, intermediate_size: int | None = None,
    first_k_dense_replace: int = 1, num_shared_experts: int = 1, routed_scaling_factor: float = 2.5,
    use_qk_norm: bool = True, use_qkv_bias: bool = False, use_bias: bool = False,
    partial_rotary_factor: float = 0.5, max_position_embeddings: int = 512, tie_word_embeddings: bool = False,
    rope_theta: float = 600000.0, mask_token_id: int | None = MASK_ID, eos_token_id: int = EOS_ID,
) -> dict:
    """A config.json in LLaDA2's schema (the fields of the released LLaDA2.0-mini config, sizes made small)."""
    cfg = {
        "architectures": ["LLaDA2MoeModelLM"],
        "model_type": "llada2_moe",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "moe_intermediate_size": moe_intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads or num_attention_heads,
        "head_dim": hidden_size // num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "use_cache": False,
        "pad_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "tie_word_embeddings": tie_word_embeddings,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "partial_rotary_factor": partial_rotary_factor,
        "use_qkv_bias": use_qkv_bias,
        "use_qk_norm": use_qk_norm,
        "use_bias": use_bias,
        "norm_head": False,
        "embedding_dropout": 0.0,
        "attention_dropout": 0.0,
        "output_dropout": 0.0,
        "num_experts": num_experts,
        "num_shared_experts": num_shared_experts,
        "num_experts_per_tok": num_experts_per_tok,
        "n_group": n_group,
        "topk_group": topk_group,
        "routed_scaling_factor": routed_scaling_factor,
        "first_k_dense_replace": first_k_dense_replace,
        "norm_topk_prob": True,
        "score_function": "sigmoid",
        "router_dtype": "fp32",
        "moe_router_enable_expert_bias": True,
        "output_router_logits": False,
        "use_sliding_window": False,
        "torch_dtype": "float32",
    }
    if mask_token_id is not None:
        cfg["mask_token_id"] = mask_token_id
    return cfg


def random_llada2_tensors(
    cfg: dict, *, seed: int = 0, dtype: torch.dtype = torch.float32, silent_router_rows: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """Random weights with LLaDA2's tensor names and shapes for ``cfg`` (scaled so activations stay O(1)).

    ``silent_router_rows``: experts whose router row and expert bias are zero in every sparse layer, so their
    scores are exactly sigmoid(0) = 0.5 for every token: ties between them, and between groups made only of them.
    """
    g = torch.Generator().manual_seed(seed)
    d, vocab, n_exp = cfg["hidden_size"], cfg["vocab_size"], cfg["num_experts"]
    hd = d // cfg["num_attention_heads"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * hd
    w = scaled_randn(g, dtype)

    def norm(n: int = d) -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(n, generator=g)).to(dtype)

    def bias(n: int) -> torch.Tensor:
        return (0.1 * torch.randn(n, generator=g)).to(dtype)

    def swiglu(prefix: str, hidden: int) -> dict[str, torch.Tensor]:
        return {prefix + "gate_proj.weight": w(hidden, d), prefix + "up_proj.weight": w(hidden, d),
                prefix + "down_proj.weight": w(d, hidden)}

    t = {"model.word_embeddings.weight": torch.randn(vocab, d, generator=g).to(dtype), "model.norm.weight": norm()}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = w(vocab, d) * 4
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = p + "attention."
        t.update({a + "query_key_value.weight": w(qkv, d) * 2, a + "dense.weight": w(d, d)})
        if cfg["use_qkv_bias"]:
            t[a + "query_key_value.bias"] = bias(qkv)
        if cfg["use_bias"]:
            t[a + "dense.bias"] = bias(d)
        if cfg["use_qk_norm"]:
            t.update({a + "query_layernorm.weight": norm(hd), a + "key_layernorm.weight": norm(hd)})
        t.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm()})
        if i < cfg["first_k_dense_replace"]:
            t.update(swiglu(p + "mlp.", cfg["intermediate_size"]))
            continue
        router = w(n_exp, d) * 2
        expert_bias = (0.05 * torch.randn(n_exp, generator=g)).to(dtype)
        router[list(silent_router_rows)] = 0
        expert_bias[list(silent_router_rows)] = 0
        t.update({p + "mlp.gate.weight": router, p + "mlp.gate.expert_bias": expert_bias})
        for e in range(n_exp):
            t.update(swiglu(f"{p}mlp.experts.{e}.", cfg["moe_intermediate_size"]))
        if cfg["num_shared_experts"]:
            t.update(swiglu(p + "mlp.shared_experts.", cfg["moe_intermediate_size"] * cfg["num_shared_experts"]))
    return t


def make_llada2_checkpoint(
    directory: Path,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    num_experts: int = 8,
    num_experts_per_tok: int = 2,
    n_group: int = 4,
    topk_group: int = 2,
    moe_intermediate_size: int = 16,
    intermediate_size: int | None = None,
    first_k_dense_replace: int = 1,
    num_shared_experts: int = 1,
    routed_scaling_factor: float = 2.5,
    use_qk_norm: bool = True,
    use_qkv_bias: bool = False,
    use_bias: bool = False,
    partial_rotary_factor: float = 0.5,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    silent_router_rows: Sequence[int] = (),
    seed: int = 0,
    shards: int = 1,
    tokenizer: bool = True,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random LLaDA2-layout checkpoint to ``directory`` and return it (the first ``first_k_dense_replace``
    layers dense, the others sparse; see :func:`llada2_config` and :func:`random_llada2_tensors`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = (write_char_tokenizer(directory, model_max_length=max_position_embeddings, specials=SPECIALS,
                                  chat_template=CHAT_TEMPLATE) if tokenizer else 0)
    vocab = max(vocab, vocab_size or 0) or 64
    cfg = llada2_config(
        vocab_size=vocab, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads, num_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok, n_group=n_group, topk_group=topk_group,
        moe_intermediate_size=moe_intermediate_size, intermediate_size=intermediate_size,
        first_k_dense_replace=first_k_dense_replace, num_shared_experts=num_shared_experts,
        routed_scaling_factor=routed_scaling_factor, use_qk_norm=use_qk_norm, use_qkv_bias=use_qkv_bias,
        use_bias=use_bias, partial_rotary_factor=partial_rotary_factor,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
    )
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    tensors = random_llada2_tensors(cfg, seed=seed, dtype=dtype, silent_router_rows=silent_router_rows)
    save_tensors(directory, tensors, shards=shards)
    return directory


__all__ = ["make_llada2_checkpoint", "llada2_config", "random_llada2_tensors"]
