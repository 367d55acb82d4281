"""Write random-weight checkpoints in SDAR's layout (the Qwen3 layout), with a character tokenizer.

The files are what a released dense SDAR checkpoint folder holds (``JetLM/SDAR-4B-Chat``): ``config.json``
with the keys of SDAR's own config.json (``model_type: sdar``, ``block_size``, ``mask_token_id``,
``head_dim``, ``attention_bias: false``, the ``auto_map`` of its remote code, ...), safetensors with Qwen3's
tensor names (no q/k/v biases, ``self_attn.q_norm`` / ``k_norm`` of shape ``[head_dim]``), and
``tokenizer.json`` + ``tokenizer_config.json``. Token ids of the character tokenizer: EOS 0, EOT 1 (the
``<|im_end|>``-like stop token), MASK 2. By default ``head_dim`` (16) differs from ``hidden_size /
num_attention_heads`` (8), as in the released 4B (128 vs 80), so a loader that derives it would fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlm.tools.checkpoints import EOS_ID, EOT_ID, MASK_ID, save_tensors, scaled_randn, write_char_tokenizer


def sdar_config(
    *, vocab_size: int, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
    num_key_value_heads: int, head_dim: int, intermediate_size: int, block_size: int = 4,
    max_position_embeddings: int = 512, tie_word_embeddings: bool = False, rope_theta: float = 1000000.0,
    mask_token_id: int = MASK_ID, eos_token_id: int = EOS_ID, extra: dict | None = None,
) -> dict:
    """A config.json with the keys and values of the released SDAR-*-Chat configs, sizes as given."""
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
    cfg.update(extra or {})
    return cfg


def random_sdar_tensors(cfg: dict, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights with SDAR's (Qwen3's) tensor names and shapes for ``cfg`` (activations stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    d, ffn, vocab, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]
    qd, kvd = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    w = scaled_randn(g, dtype)

    def norm(n: int) -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(n, generator=g)).to(dtype)

    t = {"model.embed_tokens.weight": torch.randn(vocab, d, generator=g).to(dtype), "model.norm.weight": norm(d)}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = w(vocab, d) * 4
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({
            p + "self_attn.q_proj.weight": w(qd, d) * 2, p + "self_attn.k_proj.weight": w(kvd, d) * 2,
            p + "self_attn.v_proj.weight": w(kvd, d), p + "self_attn.o_proj.weight": w(d, qd),
            p + "self_attn.q_norm.weight": norm(hd), p + "self_attn.k_norm.weight": norm(hd),
            p + "mlp.gate_proj.weight": w(ffn, d), p + "mlp.up_proj.weight": w(ffn, d),
            p + "mlp.down_proj.weight": w(d, ffn),
            p + "input_layernorm.weight": norm(d), p + "post_attention_layernorm.weight": norm(d),
        })
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
    seed: int = 0,
    shards: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random dense SDAR-layout checkpoint to ``directory`` and return it.

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
        tie_word_embeddings=tie_word_embeddings, eos_token_id=eos_token_id,
    )
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    save_tensors(directory, random_sdar_tensors(cfg, seed=seed, dtype=dtype), shards=shards)
    return directory


__all__ = ["make_sdar_checkpoint", "sdar_config", "random_sdar_tensors", "EOS_ID", "EOT_ID", "MASK_ID"]
