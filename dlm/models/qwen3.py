"""The Qwen3 layout, dense and sparse (Qwen3-MoE), for the families trained from Qwen3 (SDAR).

Qwen3 (Yang et al., 2025, "Qwen3 Technical Report", arXiv 2505.09388, §2) keeps Qwen2's architecture and
tensor names with three changes, all read from ``config.json``: no q/k/v biases (``attention_bias: false``),
a head width of its own (``head_dim``: 128 in every released size, so ``num_attention_heads × head_dim`` may
differ from ``hidden_size``: 4096 vs 2560 in the 4B), and a per-head RMSNorm of the queries and keys before
RoPE (``self_attn.q_norm.weight`` / ``self_attn.k_norm.weight``, shape ``[head_dim]``). dlm's transformer
has the last two as options (:class:`~dlm.models.layers.TransformerSpec` ``head_size`` and ``qk_norm``), so
the layout is a spec and a name map over the Qwen2 loader.

**Qwen3-MoE** (the same report, §2; transformers 4.x ``modeling_qwen3_moe.py``) is this layout with a sparse
mixture of experts (:mod:`dlm.models.moe`) in place of the MLP of some layers, read from ``num_experts``:
layer ``i`` is sparse iff ``i not in mlp_only_layers and num_experts > 0 and (i + 1) % decoder_sparse_step ==
0`` (``Qwen3MoeDecoderLayer``); a dense layer keeps ``mlp.{gate,up,down}_proj`` of ``intermediate_size``. A
sparse layer has a router ``mlp.gate`` ``[num_experts, hidden]`` (no bias) and ``num_experts`` SwiGLU experts
``mlp.experts.{e}.{gate,up,down}_proj`` of ``moe_intermediate_size``, no shared expert. Routing is
``Qwen3MoeSparseMoeBlock``'s: softmax over the experts in float32, ``torch.topk`` of ``num_experts_per_tok``,
divided by their sum when ``norm_topk_prob``, cast to the model dtype, the weighted expert outputs accumulated
in ascending expert order (:class:`~dlm.models.moe.SoftmaxTopK`). Missing switches take ``Qwen3MoeConfig``'s
defaults (``decoder_sparse_step`` 1, ``mlp_only_layers`` [], ``norm_topk_prob`` false); the sizes
(``num_experts_per_tok``, ``moe_intermediate_size``) must be given. ``output_router_logits`` and
``router_aux_loss_coef`` are training settings and not read.

Refused with the reason: ``use_sliding_window: true``, rope types other than plain RoPE, an activation other
than SiLU, ``attention_bias: true`` (Qwen3 then also puts a bias on ``o_proj``; no released checkpoint of a
family served here sets it), and expert settings the routing cannot follow (``num_experts_per_tok`` above
``num_experts``, ``decoder_sparse_step`` below 1, ``mlp_only_layers`` naming no layer of the model).
"""

from __future__ import annotations

from pathlib import Path

from dlm.errors import CheckpointError
from dlm.models.checkpoint import (
    MAX_CONTEXT,
    MAX_EXPERTS,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    config_bool,
    config_float,
    config_int,
)
from dlm.models.layers import TransformerSpec
from dlm.models.moe import MoESpec, SoftmaxTopK, swiglu_names
from dlm.models.qwen2 import PREFIX, Qwen2Family, qwen2_names, rope_theta


def qwen3_moe_spec(cfg: dict, directory: Path, n_layers: int) -> MoESpec | None:
    """Qwen3-MoE's sparse feed-forward from config.json, or None when no layer is sparse (no ``num_experts``, 0,
    or every layer dense by the rule)."""
    where = f"{directory}/config.json"
    n_experts = config_int(cfg, "num_experts", directory, 0, minimum=0, maximum=MAX_EXPERTS)
    if n_experts == 0:
        return None
    top_k = config_int(cfg, "num_experts_per_tok", directory, minimum=1)
    if top_k > n_experts:
        raise CheckpointError(f"{where}: num_experts_per_tok {top_k} is more than num_experts {n_experts}; "
                              "each token is routed to that many distinct experts")
    step = config_int(cfg, "decoder_sparse_step", directory, 1, minimum=1, maximum=MAX_LAYERS)
    only = cfg.get("mlp_only_layers")
    only = [] if only is None else only
    if not isinstance(only, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in only):
        raise CheckpointError(f"{where}: mlp_only_layers must be a list of layer indices (integers), got {only!r}")
    outside = [i for i in only if not 0 <= i < n_layers]
    if outside:
        raise CheckpointError(f"{where}: mlp_only_layers {outside} name no layer: the model has num_hidden_layers "
                              f"{n_layers}, layers 0 to {n_layers - 1}")
    sparse = tuple(i not in only and (i + 1) % step == 0 for i in range(n_layers))
    if not any(sparse):
        return None
    return MoESpec(
        n_experts=n_experts,
        expert_dim=config_int(cfg, "moe_intermediate_size", directory, minimum=1, maximum=16 * MAX_WIDTH),
        rule=SoftmaxTopK(top_k=top_k, normalize=config_bool(cfg, "norm_topk_prob", directory, False)),
        sparse_layers=sparse,
    )


def qwen3_spec(cfg: dict, directory: Path) -> TransformerSpec:
    """Translate Qwen3's config.json fields into a :class:`TransformerSpec`, refusing unsupported variants."""
    where = f"{directory}/config.json"
    if config_bool(cfg, "use_sliding_window", directory, False):
        raise CheckpointError(f"{where}: use_sliding_window=true is not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act={cfg['hidden_act']!r} is not supported (silu)")
    if config_bool(cfg, "attention_bias", directory, False):
        raise CheckpointError(
            f"{where}: attention_bias=true (biases on q/k/v and o_proj) is not supported in the Qwen3 layout; "
            "no released checkpoint of this family sets it"
        )
    dim = config_int(cfg, "hidden_size", directory, minimum=1, maximum=MAX_WIDTH)
    heads = config_int(cfg, "num_attention_heads", directory, minimum=1, maximum=MAX_HEADS)
    kv_heads = config_int(cfg, "num_key_value_heads", directory, heads, minimum=1)
    if heads % kv_heads:
        raise CheckpointError(f"{where}: {heads} heads not divisible by {kv_heads} kv heads")
    default_head = dim // heads if dim % heads == 0 else None
    head_dim = config_int(cfg, "head_dim", directory, default_head, minimum=2, maximum=MAX_WIDTH)
    if head_dim % 2:
        raise CheckpointError(f"{where}: head_dim must be even for RoPE, got {head_dim}")
    vocab = config_int(cfg, "vocab_size", directory, minimum=1, maximum=MAX_VOCAB)
    n_layers = config_int(cfg, "num_hidden_layers", directory, minimum=1, maximum=MAX_LAYERS)
    moe = qwen3_moe_spec(cfg, directory, n_layers)
    if moe is not None and all(moe.sparse_layers) and cfg.get("intermediate_size") is None:
        ffn_dim = moe.expert_dim  # sizes no layer: every feed-forward is sparse
    else:
        ffn_dim = config_int(cfg, "intermediate_size", directory, minimum=1, maximum=16 * MAX_WIDTH)
    return TransformerSpec(
        vocab_in=vocab,
        vocab_out=vocab,
        dim=dim,
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=kv_heads,
        ffn_dim=ffn_dim,
        norm_eps=config_float(cfg, "rms_norm_eps", directory, 1e-6, positive=True),
        rope_theta=rope_theta(cfg, directory),
        max_length=config_int(cfg, "max_position_embeddings", directory, 32768, minimum=2, maximum=MAX_CONTEXT),
        qkv_bias=False,
        tied=config_bool(cfg, "tie_word_embeddings", directory, False),
        head_size=head_dim,
        qk_norm=True,
        moe=moe,
    )


def qwen3_names(spec: TransformerSpec) -> dict[str, str]:
    """Own parameter name -> Qwen3 (or Qwen3-MoE) checkpoint tensor name: Qwen2's, plus the per-head QK norms, and
    in sparse layers the router and experts instead of the MLP."""
    names = qwen2_names(spec)
    for i in range(spec.n_layers):
        own, theirs = f"blocks.{i}.attn.", f"{PREFIX}layers.{i}.self_attn."
        names[own + "q_norm.weight"] = theirs + "q_norm.weight"
        names[own + "k_norm.weight"] = theirs + "k_norm.weight"
        if spec.moe is not None and spec.moe.sparse_layers[i]:  # Qwen3-MoE: router and experts, no dense MLP
            own, theirs = f"blocks.{i}.", f"{PREFIX}layers.{i}."
            for name in swiglu_names("ffn.", "mlp."):
                del names[own + name]
            names.update({own + a: theirs + b for a, b in spec.moe.ffn_names(i).items()})
    return names


class Qwen3Family(Qwen2Family):
    """Loading shared by the Qwen3-layout adapters: Qwen2's loader with Qwen3's spec and tensor names."""

    @classmethod
    def spec_from(cls, cfg: dict, directory: Path) -> TransformerSpec:
        return qwen3_spec(cfg, directory)

    @classmethod
    def tensor_names(cls, spec: TransformerSpec) -> dict[str, str]:
        return qwen3_names(spec)
