"""Write random-weight checkpoints in the Qwen2 layout (Dream, Fast-dLLM v2, plain Qwen2, WeDLM), with a
character tokenizer.

The files are what the ``dream`` and ``fast_dllm_v2`` adapters read from a real checkpoint: ``config.json``
with Qwen2's field names (plus ``mask_token_id`` and, for block diffusion, ``bd_size``), safetensors with
Qwen2's tensor names (q/k/v with bias, o_proj without), ``tokenizer.json`` + ``tokenizer_config.json``.
Token ids of the character tokenizer: EOS 0, EOT 1 (the "<|im_end|>"-like stop token), MASK 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlm.tools.checkpoints import scaled_randn, EOS_ID, EOT_ID, MASK_ID, save_tensors, write_char_tokenizer


def qwen2_config(
    *, vocab_size: int, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
    num_key_value_heads: int, intermediate_size: int, max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False, rope_theta: float = 10000.0, rope_form: str = "legacy",
    mask_token_id: int | None = MASK_ID, eos_token_id: int = EOS_ID, extra: dict | None = None,
) -> dict:
    """A config.json in Qwen2's schema; ``rope_form`` 'legacy' (``rope_theta``) or 'parameters' (5.x);
    ``mask_token_id=None`` leaves the field out, as in a plain autoregressive Qwen2 config."""
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "intermediate_size": intermediate_size,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
        "use_sliding_window": False,
        "eos_token_id": eos_token_id,
        "pad_token_id": EOS_ID,
        "bos_token_id": EOS_ID,
        "torch_dtype": "float32",
    }
    if mask_token_id is not None:
        cfg["mask_token_id"] = mask_token_id
    if rope_form == "legacy":
        cfg["rope_theta"] = rope_theta
        cfg["rope_scaling"] = None
    else:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    cfg.update(extra or {})
    return cfg


def random_qwen2_tensors(cfg: dict, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights with Qwen2's tensor names and shapes for ``cfg`` (scaled so activations stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    d, ffn, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kvd = cfg["num_key_value_heads"] * hd

    w = scaled_randn(g, dtype)

    def b(n: int) -> torch.Tensor:
        return (0.1 * torch.randn(n, generator=g)).to(dtype)

    def norm() -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(d, generator=g)).to(dtype)

    t = {"model.embed_tokens.weight": torch.randn(vocab, d, generator=g).to(dtype), "model.norm.weight": norm()}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = w(vocab, d) * 4
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({
            p + "self_attn.q_proj.weight": w(d, d) * 2, p + "self_attn.q_proj.bias": b(d),
            p + "self_attn.k_proj.weight": w(kvd, d) * 2, p + "self_attn.k_proj.bias": b(kvd),
            p + "self_attn.v_proj.weight": w(kvd, d), p + "self_attn.v_proj.bias": b(kvd),
            p + "self_attn.o_proj.weight": w(d, d),
            p + "mlp.gate_proj.weight": w(ffn, d), p + "mlp.up_proj.weight": w(ffn, d),
            p + "mlp.down_proj.weight": w(d, ffn),
            p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
        })
    return t


def make_qwen2_checkpoint(
    directory: Path,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    rope_form: str = "legacy",
    eos_token_id: int = EOS_ID,
    bd_size: int | None = None,
    mask_token_id: int | None = MASK_ID,
    extra_vocab: int = 0,
    seed: int = 0,
    shards: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random Qwen2-layout checkpoint to ``directory`` and return it.

    ``bd_size`` adds Fast-dLLM v2's block size field; ``eos_token_id=1`` makes EOT the stop token (as
    ``<|im_end|>`` is for Fast-dLLM v2). ``mask_token_id=None`` writes a plain autoregressive Qwen2 config
    (no MASK token); ``extra_vocab`` adds embedding rows past the tokenizer's last id, as Qwen2/Qwen2.5 pad
    their vocabularies (the ``qwen2`` adapter's default MASK placeholder is the last of them).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_char_tokenizer(directory, model_max_length=max_position_embeddings) + extra_vocab
    cfg = qwen2_config(
        vocab_size=vocab, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, rope_form=rope_form, eos_token_id=eos_token_id,
        mask_token_id=mask_token_id, extra={"bd_size": bd_size} if bd_size else None,
    )
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    save_tensors(directory, random_qwen2_tensors(cfg, seed=seed, dtype=dtype), shards=shards)
    return directory


__all__ = ["make_qwen2_checkpoint", "qwen2_config", "random_qwen2_tensors", "EOS_ID", "EOT_ID", "MASK_ID"]
