"""Causal Qwen2-layout adapters: ``qwen2`` (plain autoregressive Qwen2 / Qwen2.5) and ``wedlm`` (WeDLM).

Both load the Qwen2 layout of :mod:`dlm.models.qwen2` (same tensor names, same config.json schema) and run
it with **causal** attention over each row's own positions.

``qwen2``: a plain autoregressive checkpoint (Qwen2/Qwen2.5, and models trained from them without changing
the architecture, such as Jacobi Forcing's Qwen2.5-based models: Hu et al., 2025, "Fast and Accurate Causal Parallel Decoding using
Jacobi Forcing", arXiv 2512.14681, hao-ai-lab/JacobiForcing).
The next-token objective reads the prediction for column ``i`` at output ``i-1``: ``logit_shift = 1``. A
plain config.json names no MASK token, and a causal model never reads the column it predicts, so MASK is
only the canvas placeholder for positions not generated yet. It must be an id the model never predicts
(dlm never proposes MASK): by default ``vocab_size − 1``, which in Qwen2/Qwen2.5 vocabularies is an unused
padding row past the tokenizer's last token (151935 for Qwen2.5-7B); set ``model.mask_token_id`` (or
``mask_token_id`` in config.json) to choose another. End tokens: config.json's ``eos_token_id``, plus
``<|im_end|>`` and ``<|endoftext|>`` when the tokenizer has them.

``wedlm``: WeDLM (Liu et al., 2025, "WeDLM: Reconciling Diffusion Language Models with Standard Causal
Attention for Fast Inference", arXiv 2512.22737, Tencent/WeDLM), a masked-diffusion model kept causal. Its
checkpoints (``hf_compat/modeling_wedlm.py``) use Qwen2's tensor names; a MASK query predicts *its own*
position (the training loss reads the logits of the masked positions themselves), so ``logit_shift = 0``,
and ``mask_token_id`` comes from config.json. The Qwen3-based WeDLM-8B adds per-head QK normalisation
(``qk_norm: true``, ``q_norm``/``k_norm`` tensors), which dlm's transformer does not implement: such a
checkpoint is refused with that reason. The Qwen2.5-based WeDLM-7B loads.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dlm.errors import CheckpointError
from dlm.messages import ModelCapabilities
from dlm.models.checkpoint import MODEL_TYPES, read_config
from dlm.models.hub import resolve_checkpoint
from dlm.models.layers import TransformerSpec
from dlm.models.qwen2 import Qwen2Family, Qwen2FamilyConfig

END_TOKENS = ("<|im_end|>", "<|endoftext|>")


class Qwen2CausalConfig(Qwen2FamilyConfig):
    """``model:`` section for ``name: qwen2`` (``mask_token_id``: the canvas placeholder, default
    config.json's ``mask_token_id`` or ``vocab_size − 1``)."""


class Qwen2CausalModel(Qwen2Family):
    """``qwen2``: autoregressive Qwen2-layout LM, causal attention, next-token (shifted) logits."""

    Config = Qwen2CausalConfig
    family = "qwen2"
    default_eos_ids = (151643,)  # <|endoftext|>
    logit_shift = 1

    @classmethod
    def fallback_mask_id(cls, cfg: dict, spec: TransformerSpec) -> int:
        return spec.vocab_in - 1

    @classmethod
    def capabilities_for(cls, config, cfg: dict, spec: TransformerSpec, mask_id: int, eos: tuple[int, ...]):
        if mask_id in eos:
            raise CheckpointError(
                f"{config.path}: the MASK placeholder {mask_id} is also an end token; set model.mask_token_id to "
                "an id the model never generates"
            )
        return ModelCapabilities(
            mask_id=mask_id, eos_ids=eos, max_length=spec.max_length, vocab_size=spec.vocab_in,
            logit_shift=cls.logit_shift, attention="causal",
        )

    @classmethod
    def load(cls, config, *, dtype, device):
        raw = read_config(resolve_checkpoint(Path(config.path)))
        if raw.get("qk_norm") or raw.get("model_type") == "qwen3":
            raise CheckpointError(
                f"{config.path}/config.json: Qwen3-style per-head QK normalisation (qk_norm, e.g. WeDLM-8B) is "
                "not supported; Qwen2/Qwen2.5-layout checkpoints (e.g. WeDLM-7B) load"
            )
        model = super().load(config, dtype=dtype, device=device)
        if not config.eos_token_ids and model.tokenizer is not None:
            extra = [t for t in (model.tokenizer.token_id(name) for name in END_TOKENS)
                     if t is not None and t not in model.capabilities.eos_ids and t != model.capabilities.mask_id]
            if extra:
                model.capabilities = replace(model.capabilities, eos_ids=(*model.capabilities.eos_ids, *extra))
        return model


class WeDLMConfig(Qwen2FamilyConfig):
    """``model:`` section for ``name: wedlm`` (``mask_token_id``: default config.json's, which WeDLM sets)."""


class WeDLMModel(Qwen2CausalModel):
    """``wedlm``: WeDLM checkpoints, causal attention, a MASK query predicts its own position."""

    Config = WeDLMConfig
    family = "wedlm"
    model_types = ("qwen2", *MODEL_TYPES["wedlm"])
    logit_shift = 0

    @classmethod
    def fallback_mask_id(cls, cfg: dict, spec: TransformerSpec) -> int:
        raise CheckpointError(
            "a WeDLM config.json names its mask_token_id; this one has none: set model.mask_token_id"
        )
