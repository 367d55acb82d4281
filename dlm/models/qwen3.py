"""The Qwen3 layout (dense), for the families trained from Qwen3 (SDAR).

Qwen3 (Yang et al., 2025, "Qwen3 Technical Report", arXiv 2505.09388, §2) keeps Qwen2's architecture and
tensor names with three changes, all read from ``config.json``: no q/k/v biases (``attention_bias: false``),
a head width of its own (``head_dim``: 128 in every released size, so ``num_attention_heads × head_dim`` may
differ from ``hidden_size``: 4096 vs 2560 in the 4B), and a per-head RMSNorm of the queries and keys before
RoPE (``self_attn.q_norm.weight`` / ``self_attn.k_norm.weight``, shape ``[head_dim]``). dlm's transformer
has the last two as options (:class:`~dlm.models.layers.TransformerSpec` ``head_size`` and ``qk_norm``), so
the layout is a spec and a name map over the Qwen2 loader.

Refused with the reason: ``use_sliding_window: true``, rope types other than plain RoPE, an activation other
than SiLU, and ``attention_bias: true`` (Qwen3 then also puts a bias on ``o_proj``; no released checkpoint of
a family served here sets it). A sparse-MoE config (Qwen3-MoE: ``num_experts``) is the family adapter's to
refuse, since it knows what it would need (:meth:`Qwen3Family.check_config`).
"""

from __future__ import annotations

from pathlib import Path

from dlm.errors import CheckpointError
from dlm.models.checkpoint import (
    MAX_CONTEXT,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    config_bool,
    config_float,
    config_int,
)
from dlm.models.layers import TransformerSpec
from dlm.models.qwen2 import PREFIX, Qwen2Family, qwen2_names, rope_theta


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
    return TransformerSpec(
        vocab_in=vocab,
        vocab_out=vocab,
        dim=dim,
        n_layers=config_int(cfg, "num_hidden_layers", directory, minimum=1, maximum=MAX_LAYERS),
        n_heads=heads,
        n_kv_heads=kv_heads,
        ffn_dim=config_int(cfg, "intermediate_size", directory, minimum=1, maximum=16 * MAX_WIDTH),
        norm_eps=config_float(cfg, "rms_norm_eps", directory, 1e-6, positive=True),
        rope_theta=rope_theta(cfg, directory),
        max_length=config_int(cfg, "max_position_embeddings", directory, 32768, minimum=2, maximum=MAX_CONTEXT),
        qkv_bias=False,
        tied=config_bool(cfg, "tie_word_embeddings", directory, False),
        head_size=head_dim,
        qk_norm=True,
    )


def qwen3_names(spec: TransformerSpec) -> dict[str, str]:
    """Own parameter name -> Qwen3 checkpoint tensor name (Qwen2's, plus the per-head QK norms)."""
    names = qwen2_names(spec)
    for i in range(spec.n_layers):
        own, theirs = f"blocks.{i}.attn.", f"{PREFIX}layers.{i}.self_attn."
        names[own + "q_norm.weight"] = theirs + "q_norm.weight"
        names[own + "k_norm.weight"] = theirs + "k_norm.weight"
    return names


class Qwen3Family(Qwen2Family):
    """Loading shared by the Qwen3-layout adapters: Qwen2's loader with Qwen3's spec and tensor names."""

    @classmethod
    def spec_from(cls, cfg: dict, directory: Path) -> TransformerSpec:
        return qwen3_spec(cfg, directory)

    @classmethod
    def tensor_names(cls, spec: TransformerSpec) -> dict[str, str]:
        return qwen3_names(spec)
