"""LLaDA-MoE adapter: LLaDA-MoE-7B-A1B-Base / Instruct and any checkpoint in their released layout.

Zhu et al., 2025, "LLaDA-MoE: A Sparse MoE Diffusion Language Model" (arXiv 2509.24389): a masked diffusion
LM on an OLMoE-style transformer (Muennighoff et al., 2024, arXiv 2409.02060). Read from the model code
published with the checkpoints (``modeling_lladamoe.py``, class ``LLaDAMoEModelLM``; its config class is
``LLaDAConfig`` with ``model_type: "llada"``): pre-norm RMSNorm blocks, attention without a causal mask,
RMSNorm over each head's query and key before RoPE (``qk_layernorm``), RoPE in the NeoX ``rotate_half`` layout
on ``partial_rotary_factor`` of each head, and in each layer whose ``moe_layer_freq`` entry is non-zero a
sparse MoE feed-forward (:mod:`dlm.models.moe`): softmax router over ``num_experts`` SwiGLU experts of
``expert_intermediate_size``, top ``num_experts_per_tok``, the kept probabilities as weights, plus an unweighted
shared expert when ``shared_expert_intermediate_size`` is set. Layers whose entry is 0 have a dense SwiGLU of
``dense_intermediate_size``. Logits are not shifted. 16 layers, d 2048, 64 experts, top 8 for the released
7B-A1B.

What the released code does and this adapter does too (docs/fidelity.md, docs/models.md):

- The router's softmax and top-k run in float32 whatever the model dtype.
- ``norm_topk_prob`` in config.json is not read: the released block hard-codes no normalisation. The model
  section's ``norm_topk_prob`` changes that on purpose. ``moe_router_score_function``, ``routed_scaling_factor``
  and the group settings (fields of the shared config class, used by LLaDA2's code) are not read either.
- With ``moe_router_enable_expert_bias`` the checkpoint holds ``mlp.expert_bias``, added to the probabilities
  before the choice and kept in the weights.

Token ids of the released checkpoints (dInfer and llama.cpp use them): MASK 156895, EOS 156892; the
end-of-turn token ``<|role_end|>`` is added to the end tokens when the tokenizer has it. Tensor names:
``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj`` (+ ``q_norm``/``k_norm``),
``model.layers.{i}.mlp.gate`` (router), ``model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj``,
``model.layers.{i}.shared_expert.*``, ``model.layers.{i}.{input,post_attention}_layernorm``, ``model.norm``,
``lm_head``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from dlm.errors import CheckpointError
from dlm.messages import ModelCapabilities
from dlm.models.checkpoint import (
    MAX_CONTEXT,
    MAX_EXPERTS,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    MODEL_TYPES,
    check_model_type,
    check_tokenizer,
    config_bool,
    config_float,
    config_int,
    read_config,
    special_ids,
)
from dlm.models.finite import check_finite_forward
from dlm.models.hub import resolve_checkpoint
from dlm.models.layers import TransformerSpec
from dlm.models.moe import MoESpec, SoftmaxTopK
from dlm.models.qwen2 import Qwen2FamilyConfig, rope_theta
from dlm.models.tokenizer import Tokenizer
from dlm.models.transformer import TransformerAdapter, load_transformer

LLADA_MOE_MASK_ID = 156895
LLADA_MOE_EOS_ID = 156892
ROLE_END = "<|role_end|>"


class LLaDAMoEConfig(Qwen2FamilyConfig):
    """``model:`` section for ``name: llada_moe``."""

    norm_topk_prob: bool | None = Field(
        None, description="divide the kept router weights by their sum; default: as the released modeling code, "
                          "never (config.json's norm_topk_prob is not read)"
    )


def _bad(directory: Path, message: str) -> CheckpointError:
    return CheckpointError(f"{Path(directory) / 'config.json'}: {message}")


def _sparse_layers(cfg: dict, directory: Path, n_layers: int) -> tuple[bool, ...]:
    """``moe_layer_freq``: one entry per layer, 0 for a dense layer, anything else for a sparse one."""
    freq = cfg.get("moe_layer_freq")
    if freq is None:
        raise _bad(directory, "has no 'moe_layer_freq' (one entry per layer: 1 for a sparse MoE layer, 0 for a "
                              "dense one); the model needs it")
    if (not isinstance(freq, list) or len(freq) != n_layers
            or any(isinstance(f, bool) or not isinstance(f, int) for f in freq)):
        raise _bad(directory, f"moe_layer_freq must be a list of {n_layers} integers (num_hidden_layers), "
                              f"got {freq!r}")
    return tuple(f != 0 for f in freq)


def llada_moe_spec(cfg: dict, directory: Path, *, normalize: bool = False) -> TransformerSpec:
    """Translate LLaDA-MoE's config.json fields into a :class:`TransformerSpec`, refusing unsupported variants."""
    if "d_model" in cfg and "hidden_size" not in cfg:
        raise _bad(directory, "is a dense LLaDA config (d_model, n_layers, ...), not LLaDA-MoE's; set model.name: llada")
    if cfg.get("hidden_act", "silu") != "silu":
        raise _bad(directory, f"hidden_act={cfg['hidden_act']!r} is not supported (silu)")
    dim = config_int(cfg, "hidden_size", directory, minimum=1, maximum=MAX_WIDTH)
    heads = config_int(cfg, "num_attention_heads", directory, minimum=1, maximum=MAX_HEADS)
    if dim % heads:
        raise _bad(directory, f"hidden_size {dim} is not a multiple of num_attention_heads {heads}")
    head_dim = dim // heads
    if cfg.get("head_dim") is not None and config_int(cfg, "head_dim", directory) != head_dim:
        raise _bad(directory, f"head_dim {cfg['head_dim']} differs from hidden_size / num_attention_heads = "
                              f"{head_dim}, which LLaDA-MoE's attention uses")
    kv_heads = config_int(cfg, "num_key_value_heads", directory, heads, minimum=1)
    if heads % kv_heads:
        raise _bad(directory, f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    n_layers = config_int(cfg, "num_hidden_layers", directory, minimum=1, maximum=MAX_LAYERS)
    n_experts = config_int(cfg, "num_experts", directory, minimum=1, maximum=MAX_EXPERTS)
    top_k = config_int(cfg, "num_experts_per_tok", directory, minimum=1)
    if top_k > n_experts:
        raise _bad(directory, f"num_experts_per_tok {top_k} is more than num_experts {n_experts}")
    sparse = _sparse_layers(cfg, directory, n_layers)
    expert_dim = config_int(cfg, "expert_intermediate_size", directory, minimum=1, maximum=16 * MAX_WIDTH)
    dense_dim = (config_int(cfg, "dense_intermediate_size", directory, minimum=1, maximum=16 * MAX_WIDTH)
                 if not all(sparse) else expert_dim)  # ffn_dim only sizes the dense layers
    shared = cfg.get("shared_expert_intermediate_size")
    shared_dim = None if shared is None else config_int(cfg, "shared_expert_intermediate_size", directory, minimum=1,
                                                        maximum=16 * MAX_WIDTH)
    if cfg.get("rope_theta") is None and not (cfg.get("rope_parameters") or {}).get("rope_theta"):
        raise _bad(directory, "has no 'rope_theta'; the model needs it (50000 for LLaDA-MoE-7B-A1B)")
    factor = config_float(cfg, "partial_rotary_factor", directory, 1.0)
    rotary = int(head_dim * factor)
    if not 0 < factor <= 1 or rotary < 2 or rotary % 2:
        raise _bad(directory, f"partial_rotary_factor {factor} must give an even number of rotated dims in "
                              f"(0, head_dim {head_dim}], got {rotary}")
    clip = cfg.get("clip_qkv")
    clip = None if clip is None else config_float(cfg, "clip_qkv", directory, 0.0, positive=True)
    bias = config_bool(cfg, "attention_bias", directory, False)
    rule = SoftmaxTopK(top_k=top_k, normalize=normalize,
                       expert_bias=config_bool(cfg, "moe_router_enable_expert_bias", directory, False))
    vocab = config_int(cfg, "vocab_size", directory, minimum=1, maximum=MAX_VOCAB)
    return TransformerSpec(
        vocab_in=vocab,
        vocab_out=vocab,
        dim=dim,
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=kv_heads,
        ffn_dim=dense_dim,
        norm_eps=config_float(cfg, "rms_norm_eps", directory, 1e-5, positive=True),
        rope_theta=rope_theta(cfg, directory),
        max_length=config_int(cfg, "max_position_embeddings", directory, 4096, minimum=2, maximum=MAX_CONTEXT),
        qkv_bias=bias,
        o_bias=bias,
        tied=config_bool(cfg, "tie_word_embeddings", directory, False),
        qk_norm=config_bool(cfg, "qk_layernorm", directory, False),
        clip_qkv=clip,
        rotary_dim=rotary,
        moe=MoESpec(n_experts=n_experts, expert_dim=expert_dim, rule=rule, sparse_layers=sparse, shared_dim=shared_dim),
    )


def llada_moe_names(spec: TransformerSpec) -> dict[str, str]:
    """Own parameter (and buffer) name -> LLaDA-MoE checkpoint tensor name."""
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not spec.tied:
        names["head.weight"] = "lm_head.weight"
    moe = spec.moe
    for i in range(spec.n_layers):
        own, theirs = f"blocks.{i}.", f"model.layers.{i}."
        pairs = {f"attn.{p}.weight": f"self_attn.{p}_proj.weight" for p in "qkvo"}
        pairs.update({"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight"})
        if spec.qkv_bias:
            pairs.update({f"attn.{p}.bias": f"self_attn.{p}_proj.bias" for p in "qkv"})
        if spec.o_bias:
            pairs["attn.o.bias"] = "self_attn.o_proj.bias"
        if spec.qk_norm:
            pairs.update({"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"})
        pairs.update(moe.ffn_names(i, bias="mlp.expert_bias" if moe.rule.expert_bias else None, shared="shared_expert."))
        names.update({own + a: theirs + b for a, b in pairs.items()})
    return names


class LLaDAMoEModel(TransformerAdapter):
    """``llada_moe``: LLaDA-MoE-7B-A1B-Base/Instruct and any checkpoint in their layout."""

    Config = LLaDAMoEConfig

    @classmethod
    def load(cls, config: LLaDAMoEConfig, *, dtype: torch.dtype, device: torch.device) -> "LLaDAMoEModel":
        directory = resolve_checkpoint(Path(config.path))
        cfg = read_config(directory)
        check_model_type(cfg, directory, "llada_moe", ("llada", *MODEL_TYPES["llada_moe"]))
        spec = llada_moe_spec(cfg, directory, normalize=bool(config.norm_topk_prob))
        tokenizer = Tokenizer.maybe_load(directory)
        check_tokenizer(tokenizer, spec.vocab_in, str(directory))
        mask_id, eos = special_ids(config, cfg, directory, spec.vocab_in, mask_default=LLADA_MOE_MASK_ID,
                                   eos_default=LLADA_MOE_EOS_ID, tokenizer=tokenizer, extra_token=ROLE_END)
        caps = ModelCapabilities(mask_id=mask_id, eos_ids=eos, max_length=spec.max_length, vocab_size=spec.vocab_in)
        # the weights last: every cheap check above fails before gigabytes are read
        net = load_transformer(directory, spec, llada_moe_names(spec), dtype=dtype, device=torch.device(device))
        check_finite_forward(net, mask_id=mask_id, eos_id=eos[0], source=str(directory), dtype=dtype)
        return cls(config, net, caps, tokenizer)
