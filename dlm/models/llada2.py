"""LLaDA2 adapter: LLaDA2.0 and LLaDA2.1 (mini 16B-A1.4B, flash 100B-A6.1B) in their released on-disk layout.

LLaDA2.0 (Bie et al., 2025, "LLaDA2.0: Scaling Up Diffusion Language Models to 100B", arXiv 2512.15745) and
LLaDA2.1 (arXiv 2602.08676) are block-diffusion LMs on Ant Group's BailingMoeV2 architecture. Read from the model
code published with the checkpoints (``modeling_llada2_moe.py``, class ``LLaDA2MoeModelLM``, config class
``LLaDA2MoeConfig`` with ``model_type: "llada2_moe"``; LLaDA2.1's file computes the same forward):

- pre-norm RMSNorm blocks; attention through one fused projection ``attention.query_key_value`` whose output
  rows are the query heads, then the key heads, then the value heads (GQA), an optional bias on it
  (``use_qkv_bias``), RMSNorm over each head's query and key (``use_qk_norm``), RoPE in the NeoX ``rotate_half``
  layout on the first ``partial_rotary_factor`` of each head, the output projection ``attention.dense`` (with a
  bias when ``use_bias``);
- the first ``first_k_dense_replace`` layers keep a dense SwiGLU of ``intermediate_size``; every later layer is a
  sparse MoE (:mod:`dlm.models.moe`): ``num_experts`` SwiGLU experts of ``moe_intermediate_size``, routed by
  :class:`~dlm.models.moe.GroupLimitedTopK` (sigmoid scores, ``expert_bias`` for the choice only, ``n_group``
  groups of which ``topk_group`` are kept, top ``num_experts_per_tok``, the weights normalised and multiplied by
  ``routed_scaling_factor``), plus ``num_shared_experts`` shared experts run on every token as one SwiGLU of
  ``num_shared_experts * moe_intermediate_size``;
- logits unshifted, attention **block-causal** at inference: LLaDA2's ``generate`` builds a mask in which a
  position sees its own block and every earlier one (``block_length``, 32 as published). The block length is a
  setting of the model section (``model.block_length``), not of config.json: the model's attention kind needs it.

What the released code does and this adapter does too (docs/fidelity.md): the router's product, sigmoid and
weights are float32 whatever the model dtype, and each token's weighted expert outputs are summed in float32
slot by slot; normalisation of the kept weights is hard-coded (config.json's ``norm_topk_prob`` and
``score_function`` are not read by it; a ``score_function`` other than sigmoid is refused here rather than
silently computed as sigmoid). ``norm_head``, ``use_sliding_window`` and ``sliding_window`` are not read (the
released forward ignores them under SDPA).

Token ids of the released checkpoints (the defaults of LLaDA2's ``generate``): MASK 156895, EOS 156892; the
end-of-turn token ``<|role_end|>`` is added to the end tokens when the tokenizer has it. Tensor names:
``model.word_embeddings``, ``model.layers.{i}.attention.{query_key_value,dense}`` (+ ``query_layernorm``,
``key_layernorm``), ``model.layers.{i}.mlp.{gate_proj,up_proj,down_proj}`` (dense layers),
``model.layers.{i}.mlp.gate`` (+ ``.expert_bias``), ``model.layers.{i}.mlp.experts.{e}.*``,
``model.layers.{i}.mlp.shared_experts.*``, ``model.layers.{i}.{input,post_attention}_layernorm``,
``model.norm``, ``lm_head``.
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
from dlm.models.llada_moe import ROLE_END
from dlm.models.moe import GroupLimitedTopK, MoESpec, group_limit_problem
from dlm.models.qwen2 import Qwen2FamilyConfig, rope_theta
from dlm.models.tokenizer import Tokenizer
from dlm.models.transformer import TransformerAdapter, load_transformer

LLADA2_MASK_ID = 156895
LLADA2_EOS_ID = 156892
LLADA2_BLOCK_LENGTH = 32  # block_length of the released generate (and of the model cards' examples)


class LLaDA2Config(Qwen2FamilyConfig):
    """``model:`` section for ``name: llada2``."""

    block_length: int = Field(
        LLADA2_BLOCK_LENGTH, gt=0,
        description="attention block size (block-causal: a position sees its own block and earlier ones); the "
                    "block_length of LLaDA2's generate, 32 as published",
    )


def _bad(directory: Path, message: str) -> CheckpointError:
    return CheckpointError(f"{Path(directory) / 'config.json'}: {message}")


def llada2_spec(cfg: dict, directory: Path) -> TransformerSpec:
    """Translate LLaDA2's config.json fields into a :class:`TransformerSpec`, refusing unsupported variants.

    Missing switches take the defaults of the released config class (``use_qkv_bias`` false, ``use_qk_norm`` and
    ``use_bias`` true, ``partial_rotary_factor`` 0.5, ``n_group`` 8, ``topk_group`` 4, ``routed_scaling_factor``
    2.5, ``first_k_dense_replace`` 0, ``num_shared_experts`` 0, ``rms_norm_eps`` 1e-5, ``rope_theta`` 10000,
    ``max_position_embeddings`` 16384); sizes must be given."""
    if cfg.get("hidden_act", "silu") != "silu":
        raise _bad(directory, f"hidden_act={cfg['hidden_act']!r} is not supported (silu)")
    score = cfg.get("score_function", "sigmoid")
    if score != "sigmoid":
        raise _bad(directory, f"score_function={score!r} is not supported: the released modeling code computes "
                              "sigmoid router scores whatever this field says")
    dim = config_int(cfg, "hidden_size", directory, minimum=1, maximum=MAX_WIDTH)
    heads = config_int(cfg, "num_attention_heads", directory, minimum=1, maximum=MAX_HEADS)
    if dim % heads:
        raise _bad(directory, f"hidden_size {dim} is not a multiple of num_attention_heads {heads}")
    head_dim = dim // heads
    if cfg.get("head_dim") is not None and config_int(cfg, "head_dim", directory) != head_dim:
        raise _bad(directory, f"head_dim {cfg['head_dim']} differs from hidden_size / num_attention_heads = "
                              f"{head_dim}; dlm's attention needs them equal (as in every released LLaDA2)")
    kv_heads = config_int(cfg, "num_key_value_heads", directory, minimum=1)
    if heads % kv_heads:
        raise _bad(directory, f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    n_layers = config_int(cfg, "num_hidden_layers", directory, minimum=1, maximum=MAX_LAYERS)
    n_experts = config_int(cfg, "num_experts", directory, minimum=1, maximum=MAX_EXPERTS)
    top_k = config_int(cfg, "num_experts_per_tok", directory, minimum=1)
    rule = GroupLimitedTopK(
        top_k=top_k, n_group=config_int(cfg, "n_group", directory, 8, minimum=1),
        topk_group=config_int(cfg, "topk_group", directory, 4, minimum=1),
        scaling=config_float(cfg, "routed_scaling_factor", directory, 2.5),
    )
    problem = group_limit_problem(rule, n_experts)
    if problem:
        raise _bad(directory, problem)
    dense = config_int(cfg, "first_k_dense_replace", directory, 0, minimum=0)
    sparse = tuple(i >= dense for i in range(n_layers))
    expert_dim = config_int(cfg, "moe_intermediate_size", directory, minimum=1, maximum=16 * MAX_WIDTH)
    dense_dim = (config_int(cfg, "intermediate_size", directory, minimum=1, maximum=16 * MAX_WIDTH)
                 if not all(sparse) else expert_dim)  # ffn_dim only sizes the dense layers
    shared = config_int(cfg, "num_shared_experts", directory, 0, minimum=0, maximum=MAX_EXPERTS)
    factor = config_float(cfg, "partial_rotary_factor", directory, 0.5)
    rotary = int(head_dim * factor)
    if not 0 < factor <= 1 or rotary < 2 or rotary % 2:
        raise _bad(directory, f"partial_rotary_factor {factor} must give an even number of rotated dims in "
                              f"(0, head_dim {head_dim}], got {rotary}")
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
        max_length=config_int(cfg, "max_position_embeddings", directory, 16384, minimum=2, maximum=MAX_CONTEXT),
        qkv_bias=config_bool(cfg, "use_qkv_bias", directory, False),
        o_bias=config_bool(cfg, "use_bias", directory, True),
        tied=config_bool(cfg, "tie_word_embeddings", directory, False),
        qk_norm=config_bool(cfg, "use_qk_norm", directory, True),
        rotary_dim=rotary,
        fused_qkv=True,
        moe=MoESpec(n_experts=n_experts, expert_dim=expert_dim, rule=rule, sparse_layers=sparse,
                    shared_dim=expert_dim * shared or None),
    )


def llada2_names(spec: TransformerSpec) -> dict[str, str]:
    """Own parameter (and buffer) name -> LLaDA2 checkpoint tensor name."""
    names = {"embed.weight": "model.word_embeddings.weight", "norm.weight": "model.norm.weight"}
    if not spec.tied:
        names["head.weight"] = "lm_head.weight"
    moe = spec.moe
    for i in range(spec.n_layers):
        own, theirs = f"blocks.{i}.", f"model.layers.{i}."
        pairs = {"attn.qkv.weight": "attention.query_key_value.weight", "attn.o.weight": "attention.dense.weight",
                 "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight"}
        if spec.qkv_bias:
            pairs["attn.qkv.bias"] = "attention.query_key_value.bias"
        if spec.o_bias:
            pairs["attn.o.bias"] = "attention.dense.bias"
        if spec.qk_norm:
            pairs.update({"attn.q_norm.weight": "attention.query_layernorm.weight",
                          "attn.k_norm.weight": "attention.key_layernorm.weight"})
        pairs.update(moe.ffn_names(i, bias="mlp.gate.expert_bias", shared="mlp.shared_experts."))
        names.update({own + a: theirs + b for a, b in pairs.items()})
    return names


class LLaDA2Model(TransformerAdapter):
    """``llada2``: LLaDA2.0 / LLaDA2.1 (mini, flash) and any checkpoint in their layout; block-causal attention."""

    Config = LLaDA2Config

    @classmethod
    def load(cls, config: LLaDA2Config, *, dtype: torch.dtype, device: torch.device) -> "LLaDA2Model":
        directory = resolve_checkpoint(Path(config.path))
        cfg = read_config(directory)
        check_model_type(cfg, directory, "llada2", MODEL_TYPES["llada2"])
        spec = llada2_spec(cfg, directory)
        tokenizer = Tokenizer.maybe_load(directory)
        check_tokenizer(tokenizer, spec.vocab_in, str(directory))
        mask_id, eos = special_ids(config, cfg, directory, spec.vocab_in, mask_default=LLADA2_MASK_ID,
                                   eos_default=LLADA2_EOS_ID, tokenizer=tokenizer, extra_token=ROLE_END)
        caps = ModelCapabilities(mask_id=mask_id, eos_ids=eos, max_length=spec.max_length, vocab_size=spec.vocab_in,
                                 attention="block_causal", block_size=config.block_length)
        # the weights last: every cheap check above fails before gigabytes are read
        net = load_transformer(directory, spec, llada2_names(spec), dtype=dtype, device=torch.device(device))
        check_finite_forward(net, mask_id=mask_id, eos_id=eos[0], source=str(directory), dtype=dtype)
        return cls(config, net, caps, tokenizer)
