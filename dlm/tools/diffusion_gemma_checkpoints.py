"""Write random-weight checkpoints in DiffusionGemma's layout (what ``DiffusionGemmaForBlockDiffusion.save_pretrained``
writes, transformers >= 5.13), without transformers: ``config.json`` with its ``text_config`` and ``vision_config``,
``generation_config.json`` (the sampler settings), ``model.safetensors`` with the text weights under
``model.decoder.`` and the encoder's ``layer_scalar`` buffers (transformers writes the tied encoder copies and the
head once, as the decoder's), and, by default, the character tokenizer of :mod:`dlm.tools.checkpoints`.

Used by the contract kit (its noise-canvas model) and the tests; a transformers that has DiffusionGemma loads the
directory (the vision tower, which dlm never reads, is left to its initialisation).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlm.tools.checkpoints import EOS_ID, EOT_ID, save_tensors, scaled_randn, write_char_tokenizer

LAYER_TYPES = ("sliding_attention", "sliding_attention", "full_attention")
VISION = {"model_type": "gemma4_vision", "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8, "position_embedding_size": 16,
          "patch_size": 2}  # a tiny vision config, so that transformers builds a small tower (dlm ignores it)


def diffusion_gemma_config(
    *, vocab_size: int, hidden_size: int = 32, intermediate_size: int = 48, layer_types=LAYER_TYPES,
    num_attention_heads: int = 4, num_key_value_heads: int = 2, head_dim: int = 8, global_head_dim: int = 16,
    num_global_key_value_heads: int = 1, sliding_window: int = 4, num_experts: int = 4, top_k_experts: int = 2,
    moe_intermediate_size: int = 16, max_position_embeddings: int = 256, canvas_length: int = 8,
    eos_token_id=(EOS_ID, EOT_ID),
) -> dict:
    """A config.json in DiffusionGemma's schema (the full-attention layers' sizes in ``per_layer_config``, as
    transformers writes them)."""
    full = {str(i): {"head_dim": global_head_dim, "num_key_value_heads": num_global_key_value_heads}
            for i, k in enumerate(layer_types) if k == "full_attention"}
    text = {
        "model_type": "diffusion_gemma_text", "vocab_size": vocab_size, "hidden_size": hidden_size,
        "intermediate_size": intermediate_size, "num_hidden_layers": len(layer_types), "layer_types": list(layer_types),
        "num_attention_heads": num_attention_heads, "num_key_value_heads": num_key_value_heads, "head_dim": head_dim,
        "per_layer_config": full, "sliding_window": sliding_window, "num_experts": num_experts,
        "top_k_experts": top_k_experts, "moe_intermediate_size": moe_intermediate_size,
        "max_position_embeddings": max_position_embeddings, "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6, "attention_bias": False, "use_bidirectional_attention": None,
        "final_logit_softcapping": 30.0, "tie_word_embeddings": True, "bos_token_id": 3, "pad_token_id": EOS_ID,
        "eos_token_id": list(eos_token_id),
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "proportional", "rope_theta": 1000000.0,
                                               "partial_rotary_factor": 0.25}},
    }
    return {"architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
            "canvas_length": canvas_length, "tie_word_embeddings": True, "text_config": text,
            "vision_config": dict(VISION)}


def random_diffusion_gemma_tensors(cfg: dict, *, seed: int = 0,
                                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights with DiffusionGemma's tensor names and shapes for ``cfg``: fan-in scaled projections, norm
    weights, router scales and layer scalars away from 1, so each one matters."""
    g = torch.Generator().manual_seed(seed)
    text = cfg["text_config"]
    d, ffn, vocab, moe = text["hidden_size"], text["intermediate_size"], text["vocab_size"], text["moe_intermediate_size"]
    heads, n_exp = text["num_attention_heads"], text["num_experts"]
    w = scaled_randn(g, dtype)

    def around_one(*shape: int) -> torch.Tensor:
        return (1.0 + 0.3 * torch.randn(*shape, generator=g)).to(dtype)

    p = "model.decoder."
    t = {p + "embed_tokens.weight": (torch.randn(vocab, d, generator=g) * 0.5).to(dtype), p + "norm.weight": around_one(d),
         p + "self_conditioning.pre_norm.weight": around_one(d), p + "self_conditioning.gate_proj.weight": w(ffn, d),
         p + "self_conditioning.up_proj.weight": w(ffn, d), p + "self_conditioning.down_proj.weight": w(d, ffn)}
    for i, kind in enumerate(text["layer_types"]):
        sizes = text["per_layer_config"].get(str(i), {}) if kind == "full_attention" else {}
        hd = sizes.get("head_dim", text["head_dim"])
        kv = sizes.get("num_key_value_heads", text["num_key_value_heads"])
        b = f"{p}layers.{i}."
        t.update({
            b + "self_attn.q_proj.weight": w(heads * hd, d), b + "self_attn.k_proj.weight": w(kv * hd, d),
            b + "self_attn.o_proj.weight": w(d, heads * hd), b + "self_attn.q_norm.weight": around_one(hd),
            b + "self_attn.k_norm.weight": around_one(hd),
            b + "mlp.gate_proj.weight": w(ffn, d), b + "mlp.up_proj.weight": w(ffn, d), b + "mlp.down_proj.weight": w(d, ffn),
            b + "router.proj.weight": w(n_exp, d), b + "router.scale": around_one(d),
            b + "router.per_expert_scale": around_one(n_exp),
            b + "experts.gate_up_proj": w(n_exp, 2 * moe, d), b + "experts.down_proj": w(n_exp, d, moe),
            b + "layer_scalar": (0.5 + torch.rand(1, generator=g)).to(dtype),
            f"model.encoder.language_model.layers.{i}.layer_scalar": (0.5 + torch.rand(1, generator=g)).to(dtype),
        })
        if kind == "sliding_attention":  # full layers use their keys as values
            t[b + "self_attn.v_proj.weight"] = w(kv * hd, d)
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2",
                     "pre_feedforward_layernorm_2"):
            t[f"{b}{norm}.weight"] = around_one(d)
    return t


def make_diffusion_gemma_checkpoint(
    directory: Path, *, seed: int = 0, tokenizer: bool = True, vocab_size: int | None = None,
    canvas_length: int = 8, generation: dict | None = None, dtype: torch.dtype = torch.float32, **sizes,
) -> Path:
    """Write a random DiffusionGemma-layout checkpoint to ``directory`` and return it.

    With ``tokenizer=True`` the vocabulary is the character tokenizer's (EOS 0 and EOT 1 end a row; its MASK token
    is an ordinary id here: DiffusionGemma has none); ``vocab_size`` may ask for a larger one. ``generation``: the
    sampler settings of generation_config.json (``max_denoising_steps``, ``t_min``, ...; ``entropy_bound`` goes in
    its ``sampler_config``, as transformers serialises that dataclass); ``sizes``: :func:`diffusion_gemma_config`'s."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    max_len = sizes.get("max_position_embeddings", 256)
    vocab = write_char_tokenizer(directory, model_max_length=max_len, chat_template=None) if tokenizer else 0
    vocab = max(vocab, vocab_size or 0) or 64
    cfg = diffusion_gemma_config(vocab_size=vocab, canvas_length=canvas_length, **sizes)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = dict(generation or {})
    if "entropy_bound" in gen:
        gen["sampler_config"] = {"entropy_bound": gen.pop("entropy_bound"), "_cls_name": "EntropyBoundSamplerConfig"}
    (directory / "generation_config.json").write_text(json.dumps(gen, indent=2))
    save_tensors(directory, random_diffusion_gemma_tensors(cfg, seed=seed, dtype=dtype))
    return directory
