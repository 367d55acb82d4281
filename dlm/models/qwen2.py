"""Qwen2-layout checkpoints, shared by the Dream and Fast-dLLM v2 adapters.

Dream 7B (Ye et al., 2025, "Dream 7B: Diffusion Large Language Models") and Fast-dLLM v2 (Wu et al., 2025,
arXiv 2509.26328) are both initialised from Qwen2.5 and keep its architecture and tensor names exactly:
RMSNorm pre-norm, RoPE (NeoX ``rotate_half`` layout), SwiGLU, grouped-query attention with biases on the
q/k/v projections and none on ``o_proj``. Only the attention pattern (bidirectional or block-causal) and
the sampler differ, so one loader serves both: ``config.json`` in Qwen2's schema (rope theta in the legacy
``rope_theta`` field or transformers 5's ``rope_parameters``), ``model.safetensors`` or shards with an
index, and the tokenizer (with its chat template) when the directory has one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dlm.errors import CheckpointError
from dlm.messages import ModelCapabilities
from dlm.models.checkpoint import (
    MAX_CONTEXT,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    check_model_type,
    check_token_ids,
    check_tokenizer,
    config_bool,
    config_float,
    config_ids,
    config_int,
    read_config,
)
from dlm.models.layers import Transformer, TransformerSpec
from dlm.models.finite import check_finite_forward
from dlm.models.hub import resolve_checkpoint
from dlm.models.llada import nonempty_path
from dlm.models.tokenizer import Tokenizer
from dlm.models.transformer import TransformerAdapter, load_transformer

PREFIX = "model."


class Qwen2FamilyConfig(BaseModel):
    """``model:`` section shared by the Qwen2-layout families."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(..., description="checkpoint directory (config.json, *.safetensors, tokenizer files)")
    chat_template: bool = Field(False, description="wrap text prompts in the tokenizer's chat template")
    mask_token_id: int | None = Field(None, description="MASK id; default: config.json mask_token_id")
    eos_token_ids: tuple[int, ...] | None = Field(
        None, min_length=1, description="end tokens; default: from config.json"
    )

    @field_validator("path", mode="before")
    @classmethod
    def _not_empty(cls, value):
        return nonempty_path(value)


def rope_theta(cfg: dict, directory: Path) -> float:
    """RoPE base from ``rope_theta`` (transformers 4.x) or ``rope_parameters`` (5.x); only plain RoPE."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for key, source in (("rope_parameters", params), ("rope_scaling", scaling)):
        if not isinstance(source, dict):
            raise CheckpointError(f"{directory}/config.json: {key} must be an object, got {source!r}")
        kind = source.get("rope_type", source.get("type", "default"))
        if kind not in ("default", None):
            raise CheckpointError(
                f"{directory}/config.json: rope type {kind!r} is not supported (only plain RoPE, 'default')"
            )
    if params.get("rope_theta") is not None:
        return config_float(params, "rope_theta", directory, 10000.0, positive=True)
    return config_float(cfg, "rope_theta", directory, 10000.0, positive=True)


def qwen2_spec(cfg: dict, directory: Path) -> TransformerSpec:
    """Translate Qwen2's config.json fields into a :class:`TransformerSpec`, refusing unsupported variants."""
    if config_bool(cfg, "use_sliding_window", directory, False):
        raise CheckpointError(f"{directory}/config.json: use_sliding_window=true is not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{directory}/config.json: hidden_act={cfg['hidden_act']!r} is not supported (silu)")
    dim = config_int(cfg, "hidden_size", directory, minimum=1, maximum=MAX_WIDTH)
    heads = config_int(cfg, "num_attention_heads", directory, minimum=1, maximum=MAX_HEADS)
    if dim % heads:
        raise CheckpointError(f"{directory}/config.json: hidden_size {dim} is not a multiple of {heads} heads")
    head_dim = config_int(cfg, "head_dim", directory, dim // heads)
    if head_dim != dim // heads:
        raise CheckpointError(
            f"{directory}/config.json: head_dim {head_dim} differs from hidden_size / num_attention_heads "
            f"= {dim // heads}, which Qwen2 requires"
        )
    kv_heads = config_int(cfg, "num_key_value_heads", directory, heads, minimum=1)
    if heads % kv_heads:
        raise CheckpointError(f"{directory}/config.json: {heads} heads not divisible by {kv_heads} kv heads")
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
        qkv_bias=config_bool(cfg, "attention_bias", directory, True),
        tied=config_bool(cfg, "tie_word_embeddings", directory, False),
    )


def qwen2_names(spec: TransformerSpec) -> dict[str, str]:
    """Own parameter name -> Qwen2 checkpoint tensor name."""
    names = {"embed.weight": PREFIX + "embed_tokens.weight", "norm.weight": PREFIX + "norm.weight"}
    if not spec.tied:
        names["head.weight"] = "lm_head.weight"
    for i in range(spec.n_layers):
        own, theirs = f"blocks.{i}.", f"{PREFIX}layers.{i}."
        pairs = {
            "attn.q.weight": "self_attn.q_proj.weight",
            "attn.k.weight": "self_attn.k_proj.weight",
            "attn.v.weight": "self_attn.v_proj.weight",
            "attn.o.weight": "self_attn.o_proj.weight",
            "ffn.gate.weight": "mlp.gate_proj.weight",
            "ffn.up.weight": "mlp.up_proj.weight",
            "ffn.down.weight": "mlp.down_proj.weight",
            "attn_norm.weight": "input_layernorm.weight",
            "ffn_norm.weight": "post_attention_layernorm.weight",
        }
        if spec.qkv_bias:
            pairs.update({f"attn.{p}.bias": f"self_attn.{p}_proj.bias" for p in "qkv"})
        names.update({own + a: theirs + b for a, b in pairs.items()})
    return names


class Qwen2Family(TransformerAdapter):
    """Loading shared by the Qwen2-layout adapters; subclasses set their defaults and capabilities."""

    Config = Qwen2FamilyConfig
    family = "qwen2"
    # config.json model_type values this adapter loads (see check_model_type): its own family's, and "qwen2",
    # the layout every Qwen2-derived family keeps and the test checkpoints write
    model_types: tuple[str, ...] = ("qwen2",)
    default_mask_id: int
    default_eos_ids: tuple[int, ...]

    def __init__(self, config, net: Transformer, capabilities: ModelCapabilities, tokenizer, raw: dict) -> None:
        super().__init__(config, net, capabilities, tokenizer)
        self.checkpoint_config = raw

    @classmethod
    def capabilities_for(
        cls, config, cfg: dict, spec: TransformerSpec, mask_id: int, eos: tuple[int, ...]
    ) -> ModelCapabilities:
        raise NotImplementedError

    @classmethod
    def fallback_mask_id(cls, cfg: dict, spec: TransformerSpec) -> int:
        """MASK id when neither the model section nor config.json names one."""
        return cls.default_mask_id

    @classmethod
    def default_eos(cls, cfg: dict, directory: Path) -> tuple[int, ...]:
        return tuple(config_ids(cfg, "eos_token_id", directory)) or cls.default_eos_ids

    @classmethod
    def spec_from(cls, cfg: dict, directory: Path) -> TransformerSpec:
        """The network's sizes from config.json (Qwen2's schema; the Qwen3 layout overrides it)."""
        return qwen2_spec(cfg, directory)

    @classmethod
    def tensor_names(cls, spec: TransformerSpec) -> dict[str, str]:
        """Own parameter name -> checkpoint tensor name."""
        return qwen2_names(spec)

    @classmethod
    def check_config(cls, cfg: dict, directory: Path) -> None:
        """Refuse a config.json this adapter cannot load, before anything else is read (default: the
        ``model_type`` check)."""
        check_model_type(cfg, directory, cls.family, cls.model_types)

    @classmethod
    def load(cls, config, *, dtype: torch.dtype, device: torch.device):
        directory = resolve_checkpoint(Path(config.path))
        cfg = read_config(directory)
        cls.check_config(cfg, directory)
        spec = cls.spec_from(cfg, directory)
        tokenizer = Tokenizer.maybe_load(directory)
        check_tokenizer(tokenizer, spec.vocab_in, str(directory))
        if config.mask_token_id is not None:
            mask_id = config.mask_token_id
        else:
            present = cfg.get("mask_token_id") is not None
            mask_id = config_int(cfg, "mask_token_id", directory) if present else cls.fallback_mask_id(cfg, spec)
        eos = tuple(config.eos_token_ids) if config.eos_token_ids else cls.default_eos(cfg, directory)
        check_token_ids(str(directory), spec.vocab_in, mask_id=mask_id, eos_ids=eos)
        caps = cls.capabilities_for(config, cfg, spec, mask_id, eos)
        # the weights last: every cheap check above fails before gigabytes are read
        net = load_transformer(directory, spec, cls.tensor_names(spec), dtype=dtype, device=torch.device(device))
        check_finite_forward(net, mask_id=mask_id, eos_id=eos[0], source=str(directory), dtype=dtype)
        return cls(config, net, caps, tokenizer, cfg)
