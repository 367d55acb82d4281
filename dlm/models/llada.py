"""LLaDA adapter: loads a local LLaDA checkpoint (LLaDA's own config.json schema and tensor names).

Architecture (LLaDA-8B, OLMo-derived "llama" block): RMSNorm pre-norm, RoPE (NeoX layout), SwiGLU, SDPA
attention with no causal mask, logits not shifted (position i predicts token i). Source: the model code
published with GSAI-ML/LLaDA-8B-Instruct and Nie et al., "Large Language Diffusion Models" (2025).
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Literal

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
    MODEL_TYPES,
    check_model_type,
    check_token_ids,
    check_tokenizer,
    config_bool,
    config_float,
    config_ids,
    config_int,
    is_llada_moe_config,
    read_config,
)
from dlm.models.finite import check_finite_forward
from dlm.models.hub import resolve_checkpoint
from dlm.models.layers import TransformerSpec
from dlm.models.tokenizer import Tokenizer
from dlm.models.transformer import TransformerAdapter, load_transformer

LLADA_MASK_ID = 126336
LLADA_EOS_ID = 126081
EOT_TOKEN = "<|eot_id|>"
PREFIX = "model.transformer."


EMBEDDED = ("demo", "long", "fewshot")  # checkpoints in dlm/assets/: docs/demo.md, docs/long.md, docs/fewshot.md


def embedded_demo_path() -> Path:
    """Directory of the demo checkpoint shipped inside the package."""
    return embedded_path("demo")


def embedded_path(name: str) -> Path:
    """Directory of the embedded checkpoint ``name`` (one of :data:`EMBEDDED`) inside the package."""
    return Path(str(resources.files("dlm") / "assets" / name))


class LLaDAConfig(BaseModel):
    """``model:`` section for ``name: llada``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path | None = Field(None, description="checkpoint directory; omitted: the embedded model `embedded`")
    embedded: Literal["demo", "long", "fewshot"] = Field(
        "demo", description="embedded model used when path is omitted: demo (8-token answers), long (docs/long.md) "
        "or fewshot (docs/fewshot.md)"
    )
    chat_template: bool = Field(False, description="wrap text prompts in the tokenizer's chat template")
    eos_token_ids: tuple[int, ...] | None = Field(
        None, min_length=1, description="end tokens; default: config eos_token_id plus <|eot_id|> when the tokenizer has it"
    )

    d2f_block_size: int | None = Field(
        None, gt=0, description="D2F's block-causal attention (arXiv 2508.09192, for D2F-distilled checkpoints): the "
                                "prompt one block, then blocks of this size from its end; default: bidirectional"
    )

    @field_validator("path", mode="before")
    @classmethod
    def _not_empty(cls, value):
        return nonempty_path(value)


def nonempty_path(value):
    """Refuse an empty ``path`` (which would silently mean the current directory) and an explicit null (YAML
    reads a bare ``~`` as null, which would silently select the embedded model); expand ``~``."""
    if value is None:
        raise ValueError(
            "is null; YAML reads a bare ~ (or null) as no value, not as your home directory: quote the path "
            "(path: '~/models/x') or leave path out for the embedded model"
        )
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty; give a checkpoint directory (or leave path out for the embedded demo model)")
    return Path(value).expanduser() if isinstance(value, (str, Path)) else value


def llada_spec(cfg: dict, directory: Path) -> TransformerSpec:
    """Translate LLaDA's config.json fields into a :class:`TransformerSpec`, refusing unsupported variants."""
    for key, want in (("block_type", "llama"), ("layer_norm_type", "rms"), ("activation_type", "silu")):
        if cfg.get(key, want) != want:
            raise CheckpointError(f"{directory}/config.json: {key}={cfg[key]!r} is not supported (need {want!r})")
    for key in ("alibi", "scale_logits", "input_emb_norm", "attention_layer_norm"):
        if cfg.get(key):
            raise CheckpointError(f"{directory}/config.json: {key}=true is not supported by the llada adapter")
    if cfg.get("rope") is False:
        raise CheckpointError(f"{directory}/config.json: rope=false is not supported (LLaDA uses RoPE)")
    d_model = config_int(cfg, "d_model", directory, minimum=1, maximum=MAX_WIDTH)
    n_heads = config_int(cfg, "n_heads", directory, minimum=1, maximum=MAX_HEADS)
    n_kv_heads = config_int(cfg, "n_kv_heads", directory, n_heads, minimum=1)
    if d_model % n_heads:
        raise CheckpointError(f"{directory}/config.json: d_model {d_model} is not a multiple of n_heads {n_heads}")
    if n_heads % n_kv_heads:
        raise CheckpointError(
            f"{directory}/config.json: n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}"
        )
    vocab = config_int(cfg, "vocab_size", directory, minimum=1, maximum=MAX_VOCAB)
    vocab = config_int(cfg, "embedding_size", directory, vocab, minimum=vocab, maximum=MAX_VOCAB)
    ratio = config_float(cfg, "mlp_ratio", directory, 4.0, positive=True)
    if ratio * d_model > 16 * MAX_WIDTH:
        raise CheckpointError(f"{directory}/config.json: mlp_ratio {ratio} x d_model {d_model} is beyond dlm's bound "
                              f"of {16 * MAX_WIDTH} MLP units")
    return TransformerSpec(
        vocab_in=vocab,
        vocab_out=vocab,
        dim=d_model,
        n_layers=config_int(cfg, "n_layers", directory, minimum=1, maximum=MAX_LAYERS),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn_dim=config_int(cfg, "mlp_hidden_size", directory, max(1, int(ratio * d_model)), minimum=1,
                           maximum=16 * MAX_WIDTH),
        norm_eps=config_float(cfg, "rms_norm_eps", directory, 1e-5, positive=True),
        rope_theta=config_float(cfg, "rope_theta", directory, 10000.0, positive=True),
        max_length=config_int(cfg, "max_sequence_length", directory, 4096, minimum=2, maximum=MAX_CONTEXT),
        qkv_bias=config_bool(cfg, "include_bias", directory, False)
        or config_bool(cfg, "include_qkv_bias", directory, False),
        tied=config_bool(cfg, "weight_tying", directory, False),
        rope_full_precision=config_bool(cfg, "rope_full_precision", directory, True),
    )


def llada_names(spec: TransformerSpec) -> dict[str, str]:
    """Own parameter name -> LLaDA checkpoint tensor name."""
    names = {"embed.weight": PREFIX + "wte.weight", "norm.weight": PREFIX + "ln_f.weight"}
    if not spec.tied:
        names["head.weight"] = PREFIX + "ff_out.weight"
    for i in range(spec.n_layers):
        own, theirs = f"blocks.{i}.", f"{PREFIX}blocks.{i}."
        pairs = {
            "attn.q.weight": "q_proj.weight",
            "attn.k.weight": "k_proj.weight",
            "attn.v.weight": "v_proj.weight",
            "attn.o.weight": "attn_out.weight",
            "ffn.gate.weight": "ff_proj.weight",
            "ffn.up.weight": "up_proj.weight",
            "ffn.down.weight": "ff_out.weight",
            "attn_norm.weight": "attn_norm.weight",
            "ffn_norm.weight": "ff_norm.weight",
        }
        if spec.qkv_bias:
            pairs.update({f"attn.{p}.bias": f"{p}_proj.bias" for p in "qkv"})
        names.update({own + a: theirs + b for a, b in pairs.items()})
    return names


class LLaDAModel(TransformerAdapter):
    """``llada``: LLaDA-8B-Base/Instruct, LLaDA-1.5 and any checkpoint in their layout."""

    Config = LLaDAConfig

    @classmethod
    def load(cls, config: LLaDAConfig, *, dtype: torch.dtype, device: torch.device) -> "LLaDAModel":
        directory = resolve_checkpoint(config.path) if config.path is not None else embedded_path(config.embedded)
        if config.path is None and not (directory / "config.json").is_file():
            raise CheckpointError(
                f"no model path given and the embedded {config.embedded} model is not installed; set model.path "
                f"to a LLaDA checkpoint directory (`dlm train-demo --tasks {config.embedded} --out DIR` trains one)"
            )
        cfg = read_config(directory)
        check_model_type(cfg, directory, "llada", MODEL_TYPES["llada"])
        if is_llada_moe_config(cfg):  # LLaDA-MoE's config.json also says model_type "llada"
            raise CheckpointError(f"{directory / 'config.json'} is a LLaDA-MoE checkpoint (architectures "
                                  f"{cfg.get('architectures')}, num_experts); set model.name: llada_moe")
        spec = llada_spec(cfg, directory)
        tokenizer = Tokenizer.maybe_load(directory)
        check_tokenizer(tokenizer, spec.vocab_in, str(directory))
        if config.eos_token_ids:
            eos = tuple(config.eos_token_ids)
        else:
            eos_ids = config_ids(cfg, "eos_token_id", directory) or [LLADA_EOS_ID]
            eot = config_ids(cfg, "eot_token_id", directory) or [tokenizer.token_id(EOT_TOKEN) if tokenizer else None]
            eos_ids += [e for e in eot if e is not None and e not in eos_ids]
            eos = tuple(eos_ids)
        mask_id = config_int(cfg, "mask_token_id", directory, LLADA_MASK_ID)
        check_token_ids(str(directory), spec.vocab_in, mask_id=mask_id, eos_ids=eos)
        caps = ModelCapabilities(mask_id=mask_id, eos_ids=eos, max_length=spec.max_length, vocab_size=spec.vocab_in)
        if config.d2f_block_size is not None:
            caps = replace(caps, attention="block_causal", block_size=config.d2f_block_size, blocks_from="prompt")
        # the weights last: every cheap check above fails before gigabytes are read
        net = load_transformer(directory, spec, llada_names(spec), dtype=dtype, device=torch.device(device))
        check_finite_forward(net, mask_id=mask_id, eos_id=eos[0], source=str(directory), dtype=dtype)
        return cls(config, net, caps, tokenizer)
