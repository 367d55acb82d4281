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
from pydantic import BaseModel, ConfigDict, Field

from dlm.errors import CheckpointError
from dlm.messages import ModelCapabilities
from dlm.models.checkpoint import read_config
from dlm.models.layers import Transformer, TransformerSpec
from dlm.models.tokenizer import Tokenizer
from dlm.models.transformer import TransformerAdapter, load_transformer

PREFIX = "model."


class Qwen2FamilyConfig(BaseModel):
    """``model:`` section shared by the Qwen2-layout families."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(..., description="checkpoint directory (config.json, *.safetensors, tokenizer files)")
    chat_template: bool = Field(False, description="wrap text prompts in the tokenizer's chat template")
    mask_token_id: int | None = Field(None, description="MASK id; default: config.json mask_token_id")
    eos_token_ids: tuple[int, ...] | None = Field(None, description="end tokens; default: from config.json")


def _require(cfg: dict, key: str, directory: Path):
    if cfg.get(key) is None:
        raise CheckpointError(f"{directory}/config.json has no {key!r}; a Qwen2-layout config needs it")
    return cfg[key]


def rope_theta(cfg: dict, directory: Path) -> float:
    """RoPE base from ``rope_theta`` (transformers 4.x) or ``rope_parameters`` (5.x); only plain RoPE."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for source in (params, scaling):
        kind = source.get("rope_type", source.get("type", "default"))
        if kind not in ("default", None):
            raise CheckpointError(
                f"{directory}/config.json: rope type {kind!r} is not supported (only plain RoPE, 'default')"
            )
    theta = params.get("rope_theta", cfg.get("rope_theta"))
    return float(theta if theta is not None else 10000.0)


def qwen2_spec(cfg: dict, directory: Path) -> TransformerSpec:
    """Translate Qwen2's config.json fields into a :class:`TransformerSpec`, refusing unsupported variants."""
    if cfg.get("use_sliding_window"):
        raise CheckpointError(f"{directory}/config.json: use_sliding_window=true is not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{directory}/config.json: hidden_act={cfg['hidden_act']!r} is not supported (silu)")
    dim = int(_require(cfg, "hidden_size", directory))
    heads = int(_require(cfg, "num_attention_heads", directory))
    if dim % heads:
        raise CheckpointError(f"{directory}/config.json: hidden_size {dim} is not a multiple of {heads} heads")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and int(head_dim) != dim // heads:
        raise CheckpointError(
            f"{directory}/config.json: head_dim {head_dim} differs from hidden_size / num_attention_heads "
            f"= {dim // heads}, which Qwen2 requires"
        )
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise CheckpointError(f"{directory}/config.json: {heads} heads not divisible by {kv_heads} kv heads")
    vocab = int(_require(cfg, "vocab_size", directory))
    return TransformerSpec(
        vocab_in=vocab,
        vocab_out=vocab,
        dim=dim,
        n_layers=int(_require(cfg, "num_hidden_layers", directory)),
        n_heads=heads,
        n_kv_heads=kv_heads,
        ffn_dim=int(_require(cfg, "intermediate_size", directory)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta(cfg, directory),
        max_length=int(cfg.get("max_position_embeddings", 32768)),
        qkv_bias=bool(cfg.get("attention_bias", True)),
        tied=bool(cfg.get("tie_word_embeddings", False)),
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


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class Qwen2Family(TransformerAdapter):
    """Loading shared by the Qwen2-layout adapters; subclasses set their defaults and capabilities."""

    Config = Qwen2FamilyConfig
    family = "qwen2"
    default_mask_id: int
    default_eos_ids: tuple[int, ...]

    def __init__(self, config, net: Transformer, capabilities: ModelCapabilities, tokenizer, raw: dict) -> None:
        self.config, self.net, self.capabilities, self.tokenizer = config, net, capabilities, tokenizer
        self.checkpoint_config = raw
        self.dtype, self.device = net.embed.weight.dtype, net.embed.weight.device

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
    def default_eos(cls, cfg: dict) -> tuple[int, ...]:
        return tuple(_ids(cfg.get("eos_token_id"))) or cls.default_eos_ids

    @classmethod
    def load(cls, config, *, dtype: torch.dtype, device: torch.device):
        directory = Path(config.path)
        cfg = read_config(directory)
        spec = qwen2_spec(cfg, directory)
        net = load_transformer(directory, spec, qwen2_names(spec), dtype=dtype, device=torch.device(device))
        tokenizer = Tokenizer.maybe_load(directory)
        mask_id = config.mask_token_id if config.mask_token_id is not None else cfg.get("mask_token_id")
        mask_id = int(mask_id if mask_id is not None else cls.fallback_mask_id(cfg, spec))
        if not 0 <= mask_id < spec.vocab_in:
            raise CheckpointError(
                f"{directory}: mask token id {mask_id} is outside the vocabulary of {spec.vocab_in}; set "
                f"model.mask_token_id or mask_token_id in config.json"
            )
        eos = tuple(config.eos_token_ids) if config.eos_token_ids else cls.default_eos(cfg)
        caps = cls.capabilities_for(config, cfg, spec, mask_id, eos)
        return cls(config, net, caps, tokenizer, cfg)
