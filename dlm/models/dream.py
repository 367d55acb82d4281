"""Dream adapter: Dream-v0-Base/Instruct-7B and any checkpoint in Dream's (= Qwen2's) layout.

Ye et al., 2025, "Dream 7B: Diffusion Large Language Models". Dream is initialised from Qwen2.5-7B and keeps
its weights' names; its attention is bidirectional (``is_causal=False``), and because it keeps Qwen's
next-token objective ("AR initialisation"), the prediction for position ``i`` is read from the output at
position ``i-1``: ``logit_shift = 1``. Dream's sampler therefore shifts the logits right by one
(``cat([logits[:, :1], logits[:, :-1]])``); here the adapter reads outputs ``[start-1, end-1)`` for a window
``[start, end)``, which is the same thing without ever reading the unused column-0 logit.

Special ids (Dream's config.json): MASK 151666, EOS = PAD 151643 (``<|endoftext|>``); ``<|im_end|>``
(151645) also ends a chat turn and is added to the end tokens when the tokenizer has it.
"""

from __future__ import annotations

from dataclasses import replace

from dlm.messages import ModelCapabilities
from dlm.models.checkpoint import MODEL_TYPES
from dlm.models.layers import TransformerSpec
from dlm.models.qwen2 import Qwen2Family, Qwen2FamilyConfig

DREAM_MASK_ID = 151666
DREAM_EOS_ID = 151643
IM_END = "<|im_end|>"


class DreamConfig(Qwen2FamilyConfig):
    """``model:`` section for ``name: dream``."""


class DreamModel(Qwen2Family):
    """``dream``: bidirectional Qwen2-layout diffusion LM with shifted logits."""

    Config = DreamConfig
    family = "dream"
    model_types = ("qwen2", *MODEL_TYPES["dream"])
    default_mask_id = DREAM_MASK_ID
    default_eos_ids = (DREAM_EOS_ID,)

    @classmethod
    def capabilities_for(cls, config, cfg: dict, spec: TransformerSpec, mask_id: int, eos: tuple[int, ...]):
        return ModelCapabilities(
            mask_id=mask_id,
            eos_ids=eos,
            max_length=spec.max_length,
            vocab_size=spec.vocab_in,
            logit_shift=1,
            attention="bidirectional",
        )

    @classmethod
    def load(cls, config, *, dtype, device):
        model = super().load(config, dtype=dtype, device=device)
        if not config.eos_token_ids and model.tokenizer is not None:
            im_end = model.tokenizer.token_id(IM_END)
            if im_end is not None and im_end not in model.capabilities.eos_ids:
                model.capabilities = replace(model.capabilities, eos_ids=(*model.capabilities.eos_ids, im_end))
        return model
