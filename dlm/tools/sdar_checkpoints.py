"""Write random-weight checkpoints in SDAR's layouts (Qwen3's, and Qwen3-MoE's), with a character tokenizer.

The files are what a released SDAR checkpoint folder holds (``JetLM/SDAR-4B-Chat``; with ``num_experts > 0``
``JetLM/SDAR-30B-A3B-Chat``): ``config.json`` with the keys of SDAR's own config.json (``model_type: sdar``,
``block_size``, ``mask_token_id``, ``head_dim``, ``attention_bias: false``, the ``auto_map`` of its remote
code, ...; the MoE one ``model_type: sdar_moe``, ``SDARMoeForCausalLM`` and Qwen3-MoE's expert keys),
safetensors with Qwen3's tensor names (no q/k/v biases, ``self_attn.q_norm`` / ``k_norm`` of shape
``[head_dim]``; sparse layers ``mlp.gate`` and ``mlp.experts.{e}.{gate,up,down}_proj``), and ``tokenizer.json``
+ ``tokenizer_config.json``. Token ids of the character tokenizer: EOS 0, EOT 1 (the ``<|im_end|>``-like stop
token), MASK 2. By default ``head_dim`` (16) differs from ``hidden_size / num_attention_heads`` (8), as in the
released 4B (128 vs 80), so a loader that derives it would fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from dlm.tools.checkpoints import EOS_ID, EOT_ID, MASK_ID, save_tensors, scaled_randn, write_char_tokenizer


def sdar_config(
    *, vocab_size: int, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
    num_key_value_heads: int, head_dim: int, intermediate_size: int, block_size: int = 4,
    max_position_embeddings: int = 512, tie_word_embeddings: bool = False, rope_theta: float = 1000000.0,
    mask_token_id: int = MASK_ID, eos_token_id: int = EOS_ID, num_experts: int = 0, num_experts_per_tok: int = 2,
    moe_intermediate_size: int = 16, decoder_sparse_step: int = 1, mlp_only_layers: Sequence[int] = (),
    norm_topk_prob: bool = True, extra: dict | None = None,
) -> dict:
    """A config.json with the keys and values of the released SDAR-*-Chat configs, sizes as given; with
    ``num_experts > 0`` SDAR-30B-A3B-Chat's (Qwen3-MoE's expert keys, ``model_type: sdar_moe``)."""
    cfg = {
        "architectures": ["SDARForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_sdar.SDARConfig",
            "AutoModel": "modeling_sdar.SDARModel",
            "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_implementation": "flex_attention",
        "bos_token_id": eos_token_id,
        "debug": False,
        "eos_token_id": eos_token_id,
        "block_size": block_size,
        "mask_token_id": mask_token_id,
        "ep_size": 1,
        "fuse_cross_entropy": True,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "max_window_layers": num_hidden_layers,
        "micro_forward": False,
        "model_type": "sdar",
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": rope_theta,
        "skip_checkpoint": False,
        "sliding_window": None,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "float32",
        "transformers_version": "4.52.4",
        "use_cache": False,
        "use_deepep": False,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    if num_experts:
        cfg.update({
            "architectures": ["SDARMoeForCausalLM"],
            "auto_map": {
                "AutoConfig": "configuration_sdar_moe.SDARMoeConfig",
                "AutoModel": "modeling_sdar_moe.SDARMoeModel",
                "AutoModelForCausalLM": "modeling_sdar_moe.SDARMoeForCausalLM",
            },
            "model_type": "sdar_moe",
            "decoder_sparse_step": decoder_sparse_step,
            "mlp_only_layers": list(mlp_only_layers),
            "moe_intermediate_size": moe_intermediate_size,
            "norm_topk_prob": norm_topk_prob,
            "num_experts": num_experts,
            "num_experts_per_tok": num_experts_per_tok,
            "output_router_logits": False,
            "router_aux_loss_coef": 0.001,
        })
    cfg.update(extra or {})
    return cfg


def sparse_layer(cfg: dict, i: int) -> bool:
    """Whether layer ``i`` of ``cfg`` is a sparse MoE layer (Qwen3-MoE's rule, ``Qwen3MoeDecoderLayer``)."""
    return (i not in cfg.get("mlp_only_layers", []) and cfg.get("num_experts", 0) > 0
            and (i + 1) % cfg.get("decoder_sparse_step", 1) == 0)


def random_sdar_tensors(
    cfg: dict, *, seed: int = 0, dtype: torch.dtype = torch.float32, silent_router_rows: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """Random weights with SDAR's (Qwen3's or Qwen3-MoE's) tensor names and shapes for ``cfg`` (activations stay
    O(1)). ``silent_router_rows``: experts whose router row is zero in every sparse layer, so their router logits
    are exactly 0 and their probabilities tie bitwise."""
    g = torch.Generator().manual_seed(seed)
    d, ffn, vocab, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]
    qd, kvd = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    w = scaled_randn(g, dtype)

    def norm(n: int) -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(n, generator=g)).to(dtype)

    def swiglu(prefix: str, hidden: int) -> dict[str, torch.Tensor]:
        return {prefix + "gate_proj.weight": w(hidden, d), prefix + "up_proj.weight": w(hidden, d),
                prefix + "down_proj.weight": w(d, hidden)}

    t = {"model.embed_tokens.weight": torch.randn(vocab, d, generator=g).to(dtype), "model.norm.weight": norm(d)}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = w(vocab, d) * 4
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({
            p + "self_attn.q_proj.weight": w(qd, d) * 2, p + "self_attn.k_proj.weight": w(kvd, d) * 2,
            p + "self_attn.v_proj.weight": w(kvd, d), p + "self_attn.o_proj.weight": w(d, qd),
            p + "self_attn.q_norm.weight": norm(hd), p + "self_attn.k_norm.weight": norm(hd),
        })
        if sparse_layer(cfg, i):
            router = w(cfg["num_experts"], d) * 2
            router[list(silent_router_rows)] = 0
            t[p + "mlp.gate.weight"] = router
            for e in range(cfg["num_experts"]):
                t.update(swiglu(f"{p}mlp.experts.{e}.", cfg["moe_intermediate_size"]))
        else:
            t.update(swiglu(p + "mlp.", ffn))
        t.update({p + "input_layernorm.weight": norm(d), p + "post_attention_layernorm.weight": norm(d)})
    return t


def make_sdar_checkpoint(
    directory: Path,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int | None = 16,
    intermediate_size: int = 64,
    block_size: int = 4,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    eos_token_id: int = EOS_ID,
    extra_vocab: int = 0,
    num_experts: int = 0,
    num_experts_per_tok: int = 2,
    moe_intermediate_size: int = 16,
    decoder_sparse_step: int = 1,
    mlp_only_layers: Sequence[int] = (),
    norm_topk_prob: bool = True,
    silent_router_rows: Sequence[int] = (),
    seed: int = 0,
    shards: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random SDAR-layout checkpoint to ``directory`` and return it: dense (SDAR-1.7B/4B/8B), or with
    ``num_experts > 0`` sparse-MoE (SDAR-30B-A3B; :func:`sparse_layer` says which layers are sparse).

    ``head_dim=None`` takes ``hidden_size // num_attention_heads``; ``eos_token_id=1`` makes EOT the stop token
    (as ``<|im_end|>`` ends an SDAR chat turn); ``extra_vocab`` adds embedding rows past the tokenizer's ids.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_char_tokenizer(directory, model_max_length=max_position_embeddings) + extra_vocab
    cfg = sdar_config(
        vocab_size=vocab, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        head_dim=head_dim or hidden_size // num_attention_heads, intermediate_size=intermediate_size,
        block_size=block_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, eos_token_id=eos_token_id, num_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok, moe_intermediate_size=moe_intermediate_size,
        decoder_sparse_step=decoder_sparse_step, mlp_only_layers=mlp_only_layers, norm_topk_prob=norm_topk_prob,
    )
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    tensors = random_sdar_tensors(cfg, seed=seed, dtype=dtype, silent_router_rows=silent_router_rows)
    save_tensors(directory, tensors, shards=shards)
    return directory


__all__ = ["make_sdar_checkpoint", "sdar_config", "random_sdar_tensors", "sparse_layer", "EOS_ID", "EOT_ID",
           "MASK_ID"]
