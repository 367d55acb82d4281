"""MDLM adapter: the masked diffusion language model of Sahoo et al. (2024, "Simple and Effective Masked Diffusion
Language Models", arXiv 2406.07524) and its few-step students distilled by DiDi-Instruct (Zheng et al., 2025,
arXiv 2509.25035): a DiT (:mod:`dlm.models.dit`) over GPT-2's tokenizer with one extra id, MASK (the last).

Checkpoints, both read from a local directory (or the Hugging Face cache), safetensors only, no remote code:

- ``kuleshov-group/mdlm-owt`` (169M parameters, OpenWebText, 1024-token context): ``config.json`` with
  ``model_type: mdlm`` (``hidden_dim``, ``cond_dim``, ``n_blocks``, ``n_heads``, ``model_length``, ``vocab_size``,
  ``time_conditioning``), tensors under ``backbone.``;
- ``haoyangzheng/didi-instruct-small``: what ``DIT.from_pretrained`` reads: ``config.json`` holding the DIT's
  arguments (``{"config": {"model": {...}, "algo": {...}}, "vocab_size": ...}``), tensors without prefix; the
  ``discriminator.safetensors`` of reward-guided sampling is not read.

Neither ships a tokenizer: copy GPT-2's ``tokenizer.json`` (or ``vocab.json`` + ``merges.txt``) into the
directory (:mod:`dlm.models.tokenizer`). Logits are not shifted (column ``i`` predicts token ``i``), attention is
bidirectional, and there is no KV cache (``cache: none``): the time conditioning changes every layer. The noise
level of each row's step comes in the plan (:class:`~dlm.messages.NoiseLevel`, from the ``ancestral`` strategy);
a checkpoint with ``time_conditioning: false`` (both released ones) embeds 0 instead, as the reference does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from dlm.errors import CheckpointError, CompositionError
from dlm.messages import CandidateBatch, ForwardPlan, ModelCapabilities, NoiseLevel
from dlm.models.base import ModelAdapter
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
    config_ids,
    config_int,
    load_tensors,
    read_config,
    shard_map,
)
from dlm.models.dit import DiT, DiTSpec
from dlm.models.finite import check_finite_forward
from dlm.models.hub import resolve_checkpoint
from dlm.models.llada import nonempty_path
from dlm.models.tokenizer import GPT2_END, Tokenizer
from dlm.state import GenerationState

GPT2_VOCAB = 50258  # GPT-2's 50257 tokens and MASK: the released checkpoints' vocab_size
GPT2_EOS = 50256


class MDLMConfig(BaseModel):
    """``model:`` section for ``name: mdlm``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(description="checkpoint directory (or a Hugging Face id in the local cache)")
    eos_token_ids: tuple[int, ...] | None = Field(
        None, min_length=1, description="end tokens; default: the tokenizer's <|endoftext|> (GPT-2's 50256)")
    mask_token_id: int | None = Field(None, ge=0, description="MASK id; default: the last id (vocab_size - 1)")

    @field_validator("path", mode="before")
    @classmethod
    def _not_empty(cls, value):
        return nonempty_path(value)


def mdlm_spec(cfg: dict, directory: Path) -> tuple[DiTSpec, bool]:
    """The DiT's sizes and its ``time_conditioning`` from either released ``config.json`` layout."""
    nested = cfg.get("config")
    if isinstance(nested, dict):  # DiDi-Instruct: DIT(config, vocab_size) saved by PyTorchModelHubMixin
        model, algo = nested.get("model"), nested.get("algo", {})
        if not isinstance(model, dict) or not isinstance(algo, dict):
            raise CheckpointError(f"{directory / 'config.json'}: config.model and config.algo must be objects (the "
                                  "DIT's training config, as DiDi-Instruct saves it)")
        if config_bool(algo, "causal_attention", directory, False):
            raise CheckpointError(f"{directory / 'config.json'}: config.algo.causal_attention is true: an "
                                  "autoregressive DiT, not a masked diffusion model; the mdlm adapter needs false")
        for key, want in (("parameterization", "subs"), ("backbone", "dit")):
            if algo.get(key, want) != want:
                raise CheckpointError(f"{directory / 'config.json'}: config.algo.{key} is {algo[key]!r}; the mdlm "
                                      f"adapter reads {want!r} checkpoints")
        sizes = {"dim": ("hidden_size", model), "cond": ("cond_dim", model), "layers": ("n_blocks", model),
                 "heads": ("n_heads", model), "length": ("length", model), "vocab": ("vocab_size", cfg)}
        time = config_bool(algo, "time_conditioning", directory, False)
    else:  # kuleshov-group/mdlm-owt: transformers' MDLMConfig
        check_model_type(cfg, directory, "mdlm", MODEL_TYPES["mdlm"])
        sizes = {"dim": ("hidden_dim", cfg), "cond": ("cond_dim", cfg), "layers": ("n_blocks", cfg),
                 "heads": ("n_heads", cfg), "length": ("model_length", cfg), "vocab": ("vocab_size", cfg)}
        time = config_bool(cfg, "time_conditioning", directory, False)
    bounds = {"dim": MAX_WIDTH, "cond": MAX_WIDTH, "layers": MAX_LAYERS, "heads": MAX_HEADS, "length": MAX_CONTEXT,
              "vocab": MAX_VOCAB}
    v = {name: config_int(where, key, directory, minimum=2 if name == "vocab" else 1, maximum=bounds[name])
         for name, (key, where) in sizes.items()}
    if v["dim"] % v["heads"] or (v["dim"] // v["heads"]) % 2:
        raise CheckpointError(f"{directory / 'config.json'}: the width {v['dim']} must split into {v['heads']} heads "
                              "of an even width (rotary embedding)")
    spec = DiTSpec(vocab=v["vocab"], dim=v["dim"], cond_dim=v["cond"], n_layers=v["layers"], n_heads=v["heads"],
                   max_length=v["length"])
    return spec, time


def dit_names(spec: DiTSpec, prefix: str) -> dict[str, str]:
    """Own parameter name -> checkpoint tensor name (MDLM's ``models/dit.py`` names, under ``prefix``)."""
    names = {
        "embed.weight": "vocab_embed.embedding",
        "time.mlp.0.weight": "sigma_map.mlp.0.weight", "time.mlp.0.bias": "sigma_map.mlp.0.bias",
        "time.mlp.2.weight": "sigma_map.mlp.2.weight", "time.mlp.2.bias": "sigma_map.mlp.2.bias",
        "norm.weight": "output_layer.norm_final.weight",
        "final_modulation.weight": "output_layer.adaLN_modulation.weight",
        "final_modulation.bias": "output_layer.adaLN_modulation.bias",
        "head.weight": "output_layer.linear.weight", "head.bias": "output_layer.linear.bias",
    }
    for i in range(spec.n_layers):
        own, theirs = f"blocks.{i}.", f"blocks.{i}."
        pairs = {"norm1.weight": "norm1.weight", "attn.qkv.weight": "attn_qkv.weight",
                 "attn.o.weight": "attn_out.weight", "norm2.weight": "norm2.weight", "mlp.up.weight": "mlp.0.weight", "mlp.up.bias": "mlp.0.bias",
                 "mlp.down.weight": "mlp.2.weight", "mlp.down.bias": "mlp.2.bias",
                 "modulation.weight": "adaLN_modulation.weight", "modulation.bias": "adaLN_modulation.bias"}
        names.update({own + a: theirs + b for a, b in pairs.items()})
    return {own: prefix + theirs for own, theirs in names.items()}


def load_dit(directory: Path, spec: DiTSpec, *, dtype: torch.dtype, device: torch.device) -> DiT:
    """Build the DiT without random init and fill it from the checkpoint (either layout's tensor names)."""
    present = shard_map(directory)
    if "backbone.vocab_embed.embedding" in present:
        prefix = "backbone."
    elif "vocab_embed.embedding" in present:
        prefix = ""
    else:
        raise CheckpointError(f"checkpoint {directory} has neither backbone.vocab_embed.embedding "
                              "(kuleshov-group/mdlm-owt's names) nor vocab_embed.embedding (DiDi-Instruct's): it is "
                              "not an MDLM DiT")
    with torch.device("meta"):
        net = DiT(spec)
    names = dit_names(spec, prefix)
    shapes = {names[k]: tuple(p.shape) for k, p in net.state_dict().items()}
    rotary = prefix + "rotary_emb.inv_freq"  # a buffer the released files carry; recomputed, checked equal
    if rotary in present:
        shapes[rotary] = (spec.dim // spec.n_heads // 2,)
    tensors = load_tensors(directory, shapes, dtype=dtype, device=device)
    if rotary in tensors:
        hd = spec.dim // spec.n_heads
        want = 1.0 / (spec.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
        if not torch.allclose(tensors.pop(rotary).float().cpu(), want, rtol=1e-2):
            raise CheckpointError(f"{directory}: {rotary} is not the rotary frequencies of base "
                                  f"{spec.rope_theta:g} over heads of width {hd} that the DiT uses")
    state = {own: tensors[theirs] for own, theirs in names.items()}
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval().requires_grad_(False)


class MDLMModel(ModelAdapter):
    """``mdlm``: MDLM (kuleshov-group/mdlm-owt) and DiDi-Instruct students (haoyangzheng/didi-instruct-small)."""

    Config = MDLMConfig

    def __init__(self, config: MDLMConfig, net: DiT, capabilities: ModelCapabilities, tokenizer) -> None:
        self.config, self.net, self.capabilities, self.tokenizer = config, net, capabilities, tokenizer
        self.dtype, self.device = net.embed.weight.dtype, net.embed.weight.device

    @classmethod
    def load(cls, config: MDLMConfig, *, dtype: torch.dtype, device: torch.device) -> "MDLMModel":
        directory = resolve_checkpoint(config.path)
        cfg = read_config(directory)
        spec, time_conditioning = mdlm_spec(cfg, directory)
        tokenizer = Tokenizer.maybe_load(directory)
        check_tokenizer(tokenizer, spec.vocab, str(directory))
        mask_id = spec.vocab - 1 if config.mask_token_id is None else config.mask_token_id
        eos = tuple(config.eos_token_ids or ()) or _end_ids(cfg, directory, tokenizer, spec.vocab)
        check_token_ids(str(directory), spec.vocab, mask_id=mask_id, eos_ids=eos)
        caps = ModelCapabilities(mask_id=mask_id, eos_ids=eos, max_length=spec.max_length, vocab_size=spec.vocab,
                                 kv_cache=False, time_conditioned=time_conditioning)
        net = load_dit(directory, spec, dtype=dtype, device=torch.device(device))
        check_finite_forward(net, mask_id=mask_id, eos_id=eos[0], source=str(directory), dtype=dtype)
        return cls(config, net, caps, tokenizer)

    def new_kv(self, batch: int, length: int):
        raise CompositionError("the mdlm adapter has no KV cache (its time conditioning changes every layer); use "
                               "cache: none")

    @torch.inference_mode()
    def forward(self, state: GenerationState, plan: ForwardPlan) -> Tensor:
        noise = plan.get(NoiseLevel)
        sigma = None
        if self.capabilities.time_conditioned and noise is not None:
            sigma = noise.sigma.to(self.device)
        batch = plan.get(CandidateBatch)
        if batch is not None:  # the candidates' own canvas and padding, K rows per window row
            from dlm.models.transformer import _CandidateView

            sigma = None if sigma is None else sigma.repeat_interleave(batch.count)
            logits = self._forward(_CandidateView(state, batch), plan, sigma)
            return logits.unflatten(0, (len(batch.source_rows), batch.count))
        return self._forward(state, plan, sigma)

    def _forward(self, state, plan: ForwardPlan, sigma: Tensor | None) -> Tensor:
        if plan.kv is not None or plan.columns is not None:
            raise CompositionError("the mdlm adapter runs whole column ranges without a KV store (kv_cache=False); "
                                   "use cache: none")
        lo, hi = plan.logits_start, plan.logits_end
        if lo < plan.start or hi > plan.end:
            raise ValueError(f"forward plan computes columns [{plan.start}, {plan.end}) but its logits span is "
                             f"[{lo}, {hi})")
        ids = state.canvas[plan.rows, plan.start : plan.end]  # [b, q]
        cols = torch.arange(plan.start, plan.end, device=state.device)[None, :]
        pad = state.pad[plan.rows, None]
        positions = (cols - pad).clamp(min=0)  # a row's own positions: what it computes alone
        mask = (cols >= pad)[:, None, None, :] if state.padded else None  # padding is never a key
        return self.net(ids, positions, mask, sigma, logits_from=lo - plan.start, logits_to=hi - plan.start)


def _end_ids(cfg: dict, directory: Path, tokenizer, vocab: int) -> tuple[int, ...]:
    """config.json's ``eos_token_id``, else the tokenizer's ``<|endoftext|>``, else GPT-2's 50256 for a GPT-2-sized
    vocabulary."""
    ids = config_ids(cfg, "eos_token_id", directory)
    if ids:
        return tuple(ids)
    end = tokenizer.token_id(GPT2_END) if tokenizer is not None else None
    if end is not None:
        return (end,)
    if vocab == GPT2_VOCAB:
        return (GPT2_EOS,)
    raise CheckpointError(f"{directory}: no end token known (no eos_token_id in config.json, no tokenizer with "
                          f"{GPT2_END}); set model.eos_token_ids")
