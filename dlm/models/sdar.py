"""SDAR adapter: JetAstra's block-diffusion models trained from Qwen3 (SDAR-1.7B/4B/8B-Chat) and Qwen3-MoE
(SDAR-30B-A3B-Chat / -Sci).

Cheng et al., 2025, "SDAR: A Synergistic Diffusion-AutoRegression Paradigm for Scalable Sequence Generation",
arXiv 2510.06303 (github:JetAstra/SDAR: ``training/model/SDAR-*-Chat/modeling_sdar.py`` and ``generate.py``).
The weights and names are Qwen3's (:mod:`dlm.models.qwen3`: per-head QK norm, ``head_dim`` of its own, no
biases), ``config.json`` has ``model_type: sdar`` and two fields of SDAR's own: ``block_size`` (4 for the
default checkpoints; 8–64 for the block-size variants) and ``mask_token_id`` (151669, ``<|MASK|>``).

- **Attention**: block-causal over each row's own positions, blocks of ``block_size`` counted from
  position 0 (a query at ``q`` sees key ``k`` iff ``q // bs >= k // bs``), as ``block_diffusion_generate``
  builds its mask. Completed blocks' K/V are therefore final (``cache: block`` is exact; SDAR's generate
  stores a block's K/V once it holds no mask).
- **Logits are not shifted** (``logit_shift = 0``): the training loss reads the output at each masked
  position itself, and the released generate uses ``logits[:, i]`` for block position ``i``.
- **End tokens**: config.json's ``eos_token_id`` (151643 ``<|endoftext|>``), plus ``<|im_end|>`` (151645)
  when the tokenizer has it: the two ids of the checkpoints' ``generation_config.json``, which SDAR's generate
  takes as its ``stopping_criteria_idx``.

The 30B-A3B checkpoints (``model_type: sdar_moe``, architecture ``SDARMoeForCausalLM``) are Qwen3-MoE with the
same attention, logits and tokens: every layer a sparse mixture of 128 experts of width 768, 8 per token, their
weights normalised (``norm_topk_prob: true``). The layout, the rule for which layers are sparse and the
routing are :mod:`dlm.models.qwen3`'s (Qwen3-MoE); an ``sdar`` config with ``num_experts > 0`` loads the same
way. The released ``modeling_sdar_moe.py`` is not public; docs/fidelity.md says what the MoE block was checked
against.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pydantic import Field

from dlm.errors import CheckpointError
from dlm.messages import ModelCapabilities
from dlm.models.checkpoint import MODEL_TYPES, check_model_type, config_int
from dlm.models.layers import TransformerSpec
from dlm.models.qwen2 import Qwen2FamilyConfig
from dlm.models.qwen3 import Qwen3Family

SDAR_MASK_ID = 151669  # <|MASK|>
SDAR_EOS_ID = 151643  # <|endoftext|>
SDAR_BLOCK_SIZE = 4
IM_END = "<|im_end|>"


class SDARConfig(Qwen2FamilyConfig):
    """``model:`` section for ``name: sdar``."""

    block_size: int | None = Field(
        None, gt=0, description="attention block size; default: config.json block_size (4 for SDAR-*-Chat)"
    )


class SDARModel(Qwen3Family):
    """``sdar``: block-causal Qwen3-layout block-diffusion LM with unshifted logits."""

    Config = SDARConfig
    family = "sdar"
    model_types = MODEL_TYPES["sdar"]
    default_mask_id = SDAR_MASK_ID
    default_eos_ids = (SDAR_EOS_ID,)

    @classmethod
    def check_config(cls, cfg: dict, directory: Path) -> None:
        check_model_type(cfg, directory, cls.family, cls.model_types)
        moe_type = str(cfg.get("model_type", "")).lower().replace("-", "_") == "sdar_moe"
        if moe_type and cfg.get("num_experts") is None:
            raise CheckpointError(
                f"{Path(directory) / 'config.json'}: model_type 'sdar_moe' but no 'num_experts'; a sparse-MoE SDAR "
                "config names its experts (num_experts 128, num_experts_per_tok 8, moe_intermediate_size 768 for "
                "SDAR-30B-A3B)"
            )

    @classmethod
    def capabilities_for(cls, config, cfg: dict, spec: TransformerSpec, mask_id: int, eos: tuple[int, ...]):
        bs = config.block_size or config_int(cfg, "block_size", Path(config.path), SDAR_BLOCK_SIZE, minimum=1)
        return ModelCapabilities(
            mask_id=mask_id,
            eos_ids=eos,
            max_length=spec.max_length,
            vocab_size=spec.vocab_in,
            logit_shift=0,
            attention="block_causal",
            block_size=int(bs),
        )

    @classmethod
    def load(cls, config, *, dtype, device):
        model = super().load(config, dtype=dtype, device=device)
        if not config.eos_token_ids and model.tokenizer is not None:
            im_end = model.tokenizer.token_id(IM_END)
            caps = model.capabilities
            if im_end is not None and im_end not in caps.eos_ids and im_end != caps.mask_id:
                model.capabilities = replace(caps, eos_ids=(*caps.eos_ids, im_end))
        return model
