"""``diffusion_gemma``: DiffusionGemma (``DiffusionGemmaForBlockDiffusion``, transformers >= 5.13) in its on-disk layout.

The network is :mod:`dlm.models.gemma` (an encoder and a decoder over one stack of Gemma-4 MoE blocks, see there).
This module reads the checkpoint and turns dlm's forward plans into encoder and decoder calls:

- **The encoder cache** is the model's own run memory, on the state (``state.memory["model"]``, a
  :class:`GemmaMemory`: every layer's keys and values per canvas column, and the columns each row has encoded).
  A forward whose canvas starts at column ``s`` first encodes the row's columns not yet encoded before ``s`` (the
  prompt at the first canvas, each finished canvas at the next), as transformers' ``generate`` runs its encoder
  before each canvas. The cache is exact (the encoder is causal: nothing it caches ever changes), so it is the
  model's, not a cache manager's approximation; plans come from ``cache: none``.
- **The decoder** runs on the window's logits span (the canvas), attending to the encoded columns before it; the
  plan's other columns are either encoded already (before the canvas) or not generated yet (after it).
- **Self-conditioning** runs a plan's :class:`~dlm.messages.SoftInputs` (``capabilities.soft_inputs``): at the
  columns it records, the adapter stores the soft embedding of the step's tempered logits
  (:meth:`~dlm.models.gemma.DiffusionGemmaNet.soft_embedding`: ``softmax(logits / T) @ E · embed_scale`` in
  transformers' dtypes), and at the columns it feeds it passes the stored one through the decoder's
  self-conditioning block instead of adding it to the token embedding. A column not fed gets a zero soft
  embedding (a canvas' first step, transformers' ``self_conditioning_mask``). ``entropy_bound`` attaches them.

Tensor names (the layout ``save_pretrained`` writes, which loads the hub checkpoints unconverted: transformers has
no conversion rule for this family): the text weights under ``model.decoder.`` (``embed_tokens``,
``layers.{i}.self_attn.{q,k,v,o}_proj``, ``{q,k}_norm``, ``mlp.{gate,up,down}_proj``, ``router.{proj,scale,
per_expert_scale}``, ``experts.{gate_up_proj,down_proj}`` as 3-D tensors, the seven layernorms, ``layer_scalar``,
``norm``, ``self_conditioning.*``), and ``model.encoder.language_model.layers.{i}.layer_scalar``. The encoder's tied
copies (``model.encoder.language_model.*``), ``lm_head.weight`` (tied) and the vision tower are read over when a
checkpoint holds them: dlm runs the text path only.

There is no MASK token: a canvas starts from uniformly random tokens. dlm's state still needs an id for the
columns no canvas has reached yet; it is ``vocab_size`` (outside the vocabulary, so it is never embedded nor
proposed), and a composition that would hand it to the model is refused (:mod:`dlm.compat`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from dlm.models.llada import nonempty_path
from dlm.errors import CheckpointError, CompositionError
from dlm.memory import RowMemory, row_field
from dlm.messages import ForwardPlan, ModelCapabilities, SoftInputs
from dlm.models.base import ModelAdapter
from dlm.models.checkpoint import (
    MAX_CONTEXT, MAX_EXPERTS, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH, MODEL_TYPES, check_model_type,
    check_tokenizer, config_float, config_ids, config_int, load_tensors, read_config, read_json,
)
from dlm.models.gemma import DiffusionGemmaNet, EncoderCache, GemmaSpec
from dlm.models.hub import resolve_checkpoint
from dlm.models.tokenizer import Tokenizer
from dlm.state import GenerationState

# transformers' DiffusionGemmaGenerationConfig._get_default_generation_params (used when generation_config.json
# leaves a setting out)
GENERATION_DEFAULTS = {"max_denoising_steps": 48, "entropy_bound": 0.1, "t_min": 0.4, "t_max": 0.8,
                       "stability_threshold": 1, "confidence_threshold": 0.005}


class DiffusionGemmaConfig(BaseModel):
    """``model:`` section for ``name: diffusion_gemma``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(..., description="checkpoint directory (config.json, *.safetensors, tokenizer files)")
    chat_template: bool = Field(False, description="wrap text prompts in the tokenizer's chat template")
    eos_token_ids: tuple[int, ...] | None = Field(None, min_length=1,
                                                  description="end tokens; default: generation_config.json's or "
                                                              "config.json's eos_token_id")

    @field_validator("path", mode="before")
    @classmethod
    def _not_empty(cls, value):
        return nonempty_path(value)


def _bad(directory: Path, message: str) -> CheckpointError:
    return CheckpointError(f"{Path(directory) / 'config.json'}: {message}")


def gemma_spec(cfg: dict, directory: Path) -> tuple[GemmaSpec, int]:
    """The text stack's :class:`GemmaSpec` and the canvas length, from DiffusionGemma's config.json."""
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        raise _bad(directory, "needs a text_config object (DiffusionGemmaConfig's layout)")
    act = text.get("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise _bad(directory, f"text_config.hidden_activation={act!r} is not supported (gelu_pytorch_tanh)")
    if text.get("use_bidirectional_attention") not in (None, "vision"):
        raise _bad(directory, f"text_config.use_bidirectional_attention={text['use_bidirectional_attention']!r} "
                              "is not supported: the released encoder is causal (null or 'vision')")
    if text.get("attention_bias"):
        raise _bad(directory, "text_config.attention_bias=true is not supported (the released model has none)")
    n_layers = config_int(text, "num_hidden_layers", directory, minimum=1, maximum=MAX_LAYERS)
    kinds = text.get("layer_types") or ["sliding_attention" if (i + 1) % 6 else "full_attention"
                                        for i in range(n_layers)]
    if not isinstance(kinds, list) or len(kinds) != n_layers or any(
            k not in ("sliding_attention", "full_attention") for k in kinds):
        raise _bad(directory, f"text_config.layer_types must list 'sliding_attention' or 'full_attention' for each "
                              f"of the {n_layers} layers, got {kinds!r}")
    heads = config_int(text, "num_attention_heads", directory, minimum=1, maximum=MAX_HEADS)
    kv = config_int(text, "num_key_value_heads", directory, minimum=1, maximum=MAX_HEADS)
    head_dim = config_int(text, "head_dim", directory, 256, minimum=2, maximum=MAX_WIDTH)
    per_layer = text.get("per_layer_config") or {}
    full = [i for i, k in enumerate(kinds) if k == "full_attention"]
    overrides = {tuple(sorted((per_layer.get(str(i)) or {}).items())) for i in full}
    if len(overrides) > 1:
        raise _bad(directory, "text_config.per_layer_config gives the full-attention layers different sizes; dlm "
                              "reads one global head size and key/value head count")
    over = dict(next(iter(overrides))) if overrides else {}
    global_head = config_int(over, "head_dim", directory, text.get("global_head_dim", 512), minimum=2,
                             maximum=MAX_WIDTH)
    global_kv = config_int(over, "num_key_value_heads", directory,
                           text.get("num_global_key_value_heads") or kv, minimum=1, maximum=MAX_HEADS)
    for h in (kv, global_kv):
        if heads % h:
            raise _bad(directory, f"num_attention_heads {heads} is not a multiple of the key/value heads {h}")
    rope = text.get("rope_parameters") or {}
    local, glob = rope.get("sliding_attention") or {}, rope.get("full_attention") or {}
    if local.get("rope_type", "default") != "default" or glob.get("rope_type", "proportional") != "proportional" or \
            glob.get("factor", 1.0) != 1.0:
        raise _bad(directory, f"rope_parameters {rope!r} are not supported: sliding layers 'default', full layers "
                              "'proportional' without a factor, as released")
    n_experts = config_int(text, "num_experts", directory, minimum=1, maximum=MAX_EXPERTS)
    window = config_int(text, "sliding_window", directory, 512, minimum=2)
    canvas = config_int(cfg, "canvas_length", directory, 256, minimum=1, maximum=MAX_CONTEXT)
    softcap = text.get("final_logit_softcapping", 30.0)
    spec = GemmaSpec(
        vocab=config_int(text, "vocab_size", directory, minimum=1, maximum=MAX_VOCAB),
        dim=config_int(text, "hidden_size", directory, minimum=1, maximum=MAX_WIDTH),
        n_layers=n_layers, n_heads=heads, sliding=tuple(k == "sliding_attention" for k in kinds),
        head_dim=head_dim, kv_heads=kv, global_head_dim=global_head, global_kv_heads=global_kv,
        ffn_dim=config_int(text, "intermediate_size", directory, minimum=1, maximum=16 * MAX_WIDTH),
        n_experts=n_experts, top_k=config_int(text, "top_k_experts", directory, minimum=1, maximum=n_experts),
        expert_dim=config_int(text, "moe_intermediate_size", directory, minimum=1, maximum=16 * MAX_WIDTH),
        norm_eps=config_float(text, "rms_norm_eps", directory, 1e-6, positive=True), window=window,
        theta_local=config_float(local, "rope_theta", directory, 10_000.0, positive=True),
        theta_global=config_float(glob, "rope_theta", directory, 1_000_000.0, positive=True),
        global_rotary_factor=config_float(glob, "partial_rotary_factor", directory, 0.25, positive=True),
        softcap=None if softcap is None else config_float(text, "final_logit_softcapping", directory, 30.0,
                                                          positive=True),
        max_length=config_int(text, "max_position_embeddings", directory, 131_072, minimum=2, maximum=MAX_CONTEXT),
    )
    return spec, canvas


def gemma_names(spec: GemmaSpec) -> dict[str, str]:
    """Own parameter (and buffer) name -> checkpoint tensor name."""
    d = "model.decoder."
    names = {"embed.weight": d + "embed_tokens.weight", "norm.weight": d + "norm.weight",
             "self_conditioning.pre_norm.weight": d + "self_conditioning.pre_norm.weight"}
    for own, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
        names[f"self_conditioning.ffn.{own}.weight"] = f"{d}self_conditioning.{theirs}.weight"
    norms = {"input_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
             "pre_ffn_norm": "pre_feedforward_layernorm", "post_ffn_norm": "post_feedforward_layernorm",
             "post_ffn_norm_1": "post_feedforward_layernorm_1", "post_ffn_norm_2": "post_feedforward_layernorm_2",
             "pre_ffn_norm_2": "pre_feedforward_layernorm_2"}
    for i in range(spec.n_layers):
        own, theirs = f"blocks.{i}.", f"{d}layers.{i}."
        pairs = {f"{a}.weight": f"{b}.weight" for a, b in norms.items()}
        for p in ("q", "k", "o") + (("v",) if spec.sliding[i] else ()):
            pairs[f"attn.{p}.weight"] = f"self_attn.{p}_proj.weight"
        pairs.update({"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight",
                      "mlp.gate.weight": "mlp.gate_proj.weight", "mlp.up.weight": "mlp.up_proj.weight",
                      "mlp.down.weight": "mlp.down_proj.weight", "router.gate.weight": "router.proj.weight",
                      "router.scale": "router.scale", "router.per_expert_scale": "router.per_expert_scale",
                      "experts.gate_up": "experts.gate_up_proj", "experts.down": "experts.down_proj",
                      "decoder_scalar": "layer_scalar"})
        names.update({own + a: theirs + b for a, b in pairs.items()})
        names[own + "encoder_scalar"] = f"model.encoder.language_model.layers.{i}.layer_scalar"
    return names


# tensors a released checkpoint may hold that the text path does not read: the encoder's tied copies of the decoder's
# weights, the tied head, the vision tower and its projection
IGNORED = re.compile(r"^(lm_head\.weight|model\.encoder\.(vision_tower|embed_vision)\..*"
                     r"|model\.encoder\.language_model\.(?!layers\.\d+\.layer_scalar$).*)$")


def load_gemma(directory: Path, spec: GemmaSpec, *, dtype: torch.dtype, device: torch.device) -> DiffusionGemmaNet:
    with torch.device("meta"):
        net = DiffusionGemmaNet(spec)
    names = gemma_names(spec)
    shapes = {names[k]: tuple(p.shape) for k, p in net.state_dict().items()}
    tensors = load_tensors(directory, shapes, dtype=dtype, device=device, ignored=IGNORED.match)
    net.load_state_dict({own: tensors[theirs] for own, theirs in names.items()}, strict=True, assign=True)
    return net.eval().requires_grad_(False)


def generation_settings(directory: Path) -> dict:
    """The sampler settings of the checkpoint's generation_config.json (transformers' defaults where it is silent)."""
    out = dict(GENERATION_DEFAULTS)
    file = Path(directory) / "generation_config.json"
    if not file.is_file():
        return out
    gen = read_json(file)
    if not isinstance(gen, dict):
        raise CheckpointError(f"{file} must hold a JSON object")
    for key in ("max_denoising_steps", "t_min", "t_max", "stability_threshold", "confidence_threshold"):
        if gen.get(key) is not None:
            out[key] = gen[key]
    sampler = gen.get("sampler_config")
    if isinstance(sampler, dict) and sampler.get("entropy_bound") is not None:
        out["entropy_bound"] = sampler["entropy_bound"]
    for key in ("eos_token_id", "pad_token_id"):
        if gen.get(key) is not None:
            out[key] = gen[key]
    return out


@dataclass
class GemmaMemory(RowMemory):
    """The model's run memory: the encoder cache and the columns each row has encoded ([0, encoded))."""

    cache: EncoderCache = row_field()
    encoded: Tensor = row_field()  # [B] long


class DiffusionGemmaModel(ModelAdapter):
    """``diffusion_gemma``: DiffusionGemma's text path (encoder with its cache, decoder with self-conditioning)."""

    Config = DiffusionGemmaConfig

    def __init__(self, config, net: DiffusionGemmaNet, capabilities: ModelCapabilities, tokenizer, canvas_length: int,
                 generation: dict) -> None:
        self.config, self.net, self.capabilities, self.tokenizer = config, net, capabilities, tokenizer
        self.canvas_length, self.generation = canvas_length, generation
        # the sampler settings of generation_config.json, handed to a decoding strategy that takes them (Pipeline)
        self.generation_defaults = {k: generation[k] for k in GENERATION_DEFAULTS}
        self.dtype, self.device = net.embed.weight.dtype, net.embed.weight.device

    @classmethod
    def load(cls, config: DiffusionGemmaConfig, *, dtype: torch.dtype, device: torch.device) -> "DiffusionGemmaModel":
        directory = resolve_checkpoint(Path(config.path))
        cfg = read_config(directory)
        check_model_type(cfg, directory, "diffusion_gemma", MODEL_TYPES["diffusion_gemma"])
        spec, canvas = gemma_spec(cfg, directory)
        generation = generation_settings(directory)
        tokenizer = Tokenizer.maybe_load(directory)
        check_tokenizer(tokenizer, spec.vocab, str(directory))
        if config.eos_token_ids:
            eos = tuple(config.eos_token_ids)
        else:
            source = {"eos_token_id": generation["eos_token_id"]} if "eos_token_id" in generation else cfg["text_config"]
            eos = tuple(config_ids(source, "eos_token_id", directory)) or (1,)
        if any(not 0 <= e < spec.vocab for e in eos):
            raise CheckpointError(f"{directory}: end token ids {list(eos)} must lie in [0, {spec.vocab})")
        caps = ModelCapabilities(mask_id=spec.vocab, eos_ids=eos, max_length=spec.max_length, vocab_size=spec.vocab,
                                 attention="bidirectional", kv_cache=False, block_size=canvas,
                                 soft_inputs=True, canvas="noise")
        net = load_gemma(directory, spec, dtype=dtype, device=torch.device(device))
        return cls(config, net, caps, tokenizer, canvas, generation)

    def new_kv(self, batch: int, length: int):
        raise CompositionError("diffusion_gemma keeps its own encoder cache; use cache: none")

    def memory(self, state: GenerationState) -> GemmaMemory:
        """The model's run memory on ``state``, created for every row at the first forward."""
        mem = state.memory.get("model")
        if mem is None:
            cache = EncoderCache.empty(self.net.spec, state.batch_size, state.length, self.dtype, state.device)
            mem = state.memory["model"] = GemmaMemory(cache, torch.zeros(state.batch_size, dtype=torch.long,
                                                                         device=state.device))
        return mem

    @torch.inference_mode()
    def forward(self, state: GenerationState, plan: ForwardPlan) -> Tensor:
        if plan.columns is not None or plan.kv is not None or plan.without(SoftInputs).extensions:
            raise CompositionError("diffusion_gemma runs plans of a column range without a KV store (cache: none)")
        start, end = plan.logits_start, plan.logits_end  # the canvas: what the decoder runs on
        if start < plan.start or end > plan.end:
            raise CompositionError(f"diffusion_gemma's canvas [{start}, {end}) lies outside the plan's columns "
                                   f"[{plan.start}, {plan.end})")
        mem = self.memory(state)
        rows = plan.rows
        pad = state.pad[rows]
        cols = torch.arange(state.length, device=state.device)
        valid = cols[None, :] >= pad[:, None]  # [b, L]: columns that may be keys
        encoded = mem.encoded[rows]
        for done in sorted(set(encoded.tolist())):  # rows that encoded the same columns so far run together
            if done >= start:
                if done > start:
                    raise CompositionError(f"diffusion_gemma's canvas at column {start} lies inside the encoded "
                                           f"columns [0, {done}): a finished canvas cannot be denoised again")
                continue
            which = (encoded == done).nonzero().squeeze(1)
            sub = rows[which]
            ids = state.canvas[sub, done:start]
            positions = (cols[None, done:start] - pad[which, None]).clamp(min=0)
            self.net.encode(ids, positions, mem.cache, sub, done, valid[which, :start])
            mem.encoded[sub] = start
        ids = state.canvas[rows, start:end]
        positions = (cols[None, start:end] - pad[:, None]).clamp(min=0)
        soft = plan.get(SoftInputs)
        logits = self.net.decode(ids, positions, mem.cache, rows, start, valid[:, :start],
                                 None if soft is None else self._fed(soft, rows, start, end))
        if soft is not None and soft.record is not None:
            self._record(soft, rows, logits, start, end)
        return logits

    def _fed(self, soft: SoftInputs, rows: Tensor, start: int, end: int) -> Tensor | None:
        """The self-conditioning input [b, q, dim] of the canvas ``[start, end)``: the stored soft embedding where
        ``soft.feed`` marks the column, zeros elsewhere (None: nothing fed)."""
        feed = soft.feed[:, start:end]  # [b, q]
        if soft.store.values is None or not bool(feed.any()):
            return None
        return soft.store.values[rows, start:end] * feed[..., None].to(self.dtype)

    def _record(self, soft: SoftInputs, rows: Tensor, logits: Tensor, start: int, end: int) -> None:
        """Store the soft embedding of ``logits`` [b, q, vocab] (tempered as the reference tempers its processed
        logits: float32 divided by the row's temperature) at the canvas columns ``soft.record`` marks."""
        t = soft.temperature
        if isinstance(t, Tensor):
            t = t.to(logits.device)[:, None, None]
        embedded = self.net.soft_embedding(logits / t)  # [b, q, dim]
        if soft.scale is not None:
            embedded = embedded * soft.scale.to(device=embedded.device, dtype=embedded.dtype)[:, None, None]
        values = soft.store.allocate(self.net.embed.weight)
        record = soft.record[:, start:end, None]
        values[rows, start:end] = torch.where(record, embedded, values[rows, start:end])
