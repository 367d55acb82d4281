"""LLaDA adapter: loads a local LLaDA checkpoint (LLaDA's own config.json schema and tensor names).

Architecture (LLaDA-8B, OLMo-derived "llama" block): RMSNorm pre-norm, RoPE (NeoX layout), SwiGLU, SDPA
attention with no causal mask, logits not shifted (position i predicts token i). Source: the model code
published with GSAI-ML/LLaDA-8B-Instruct and Nie et al., "Large Language Diffusion Models" (2025).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from dlm.errors import CheckpointError
from dlm.models.base import ModelCapabilities, TransformerAdapter
from dlm.models.checkpoint import load_tensors, read_config
from dlm.models.layers import Transformer, TransformerSpec
from dlm.models.tokenizer import Tokenizer

LLADA_MASK_ID = 126336
LLADA_EOS_ID = 126081
EOT_TOKEN = "<|eot_id|>"
PREFIX = "model.transformer."


EMBEDDED = ("demo", "long")  # checkpoints shipped in dlm/assets/: docs/demo.md, docs/long.md


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
    embedded: Literal["demo", "long"] = Field(
        "demo", description="embedded model used when path is omitted: demo (8-token answers) or long (docs/long.md)"
    )
    chat_template: bool = Field(False, description="wrap text prompts in the tokenizer's chat template")
    eos_token_ids: tuple[int, ...] | None = Field(
        None, description="end tokens; default: config eos_token_id plus <|eot_id|> when the tokenizer has it"
    )


def _require(cfg: dict, key: str, directory: Path):
    if cfg.get(key) is None:
        raise CheckpointError(f"{directory}/config.json has no {key!r}; a LLaDA config needs it")
    return cfg[key]


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
    d_model = int(_require(cfg, "d_model", directory))
    n_heads = int(_require(cfg, "n_heads", directory))
    vocab = int(_require(cfg, "vocab_size", directory))
    ffn = cfg.get("mlp_hidden_size") or int(cfg.get("mlp_ratio", 4) * d_model)
    return TransformerSpec(
        vocab_in=int(cfg.get("embedding_size") or vocab),
        vocab_out=int(cfg.get("embedding_size") or vocab),
        dim=d_model,
        n_layers=int(_require(cfg, "n_layers", directory)),
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("n_kv_heads") or n_heads),
        ffn_dim=int(ffn),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        max_length=int(cfg.get("max_sequence_length", 4096)),
        qkv_bias=bool(cfg.get("include_bias") or cfg.get("include_qkv_bias")),
        tied=bool(cfg.get("weight_tying", False)),
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


def load_transformer(
    directory: Path, spec: TransformerSpec, names: dict[str, str], *, dtype: torch.dtype, device: torch.device
) -> Transformer:
    """Build a :class:`Transformer` without random init and fill it from the checkpoint (names: own -> file)."""
    with torch.device("meta"):
        net = Transformer(spec)
    shapes = {names[k]: tuple(p.shape) for k, p in net.state_dict().items()}
    tensors = load_tensors(directory, shapes, dtype=dtype, device=device)
    net.load_state_dict({own: tensors[theirs] for own, theirs in names.items()}, strict=True, assign=True)
    return net.eval().requires_grad_(False)


class LLaDAModel(TransformerAdapter):
    """``llada``: LLaDA-8B-Base/Instruct, LLaDA-1.5 and any checkpoint in their layout."""

    Config = LLaDAConfig

    def __init__(self, config: LLaDAConfig, net: Transformer, capabilities: ModelCapabilities, tokenizer) -> None:
        self.config, self.net, self.capabilities, self.tokenizer = config, net, capabilities, tokenizer
        self.dtype, self.device = net.embed.weight.dtype, net.embed.weight.device

    @classmethod
    def load(cls, config: LLaDAConfig, *, dtype: torch.dtype, device: torch.device) -> "LLaDAModel":
        directory = Path(config.path) if config.path is not None else embedded_path(config.embedded)
        if config.path is None and not (directory / "config.json").is_file():
            raise CheckpointError(
                f"no model path given and the embedded {config.embedded} model is not installed; set model.path "
                "to a LLaDA checkpoint directory"
            )
        cfg = read_config(directory)
        spec = llada_spec(cfg, directory)
        net = load_transformer(directory, spec, llada_names(spec), dtype=dtype, device=torch.device(device))
        tokenizer = Tokenizer.maybe_load(directory)
        if config.eos_token_ids:
            eos = tuple(config.eos_token_ids)
        else:
            eos_ids = [int(cfg.get("eos_token_id", LLADA_EOS_ID))]
            eot = cfg.get("eot_token_id") or (tokenizer.token_id(EOT_TOKEN) if tokenizer else None)
            if eot is not None and eot not in eos_ids:
                eos_ids.append(int(eot))
            eos = tuple(eos_ids)
        caps = ModelCapabilities(
            mask_id=int(cfg.get("mask_token_id", LLADA_MASK_ID)),
            eos_ids=eos,
            max_length=spec.max_length,
            vocab_size=spec.vocab_in,
        )
        return cls(config, net, caps, tokenizer)
