"""Fast-dLLM v2 adapter: block-diffusion LMs adapted from Qwen2.5 (Wu et al., 2025, arXiv 2509.26328).

Weights are Qwen2.5's (same tensor names, see :mod:`dlm.models.qwen2`). At inference the attention is
block-causal over each row's own positions: a query at position ``q`` sees key ``k`` iff
``q // bd_size >= k // bd_size`` (bidirectional inside a block, causal across blocks; ``bd_size`` from
config.json, default 32). Training keeps the causal-LM label shift, so logits are shifted like Dream's
(``logit_shift = 1``): the prediction for position ``i`` is the output at ``i-1``.

Special ids: MASK 151665 (``config.mask_token_id``), stop token ``<|im_end|>`` 151645 (config.json's
``eos_token_id``; the reference's ``stop_token``). Because blocks are causal, the K/V of completed blocks
are final: the block-level cache (``cache: block``) is exact.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from dlm.messages import ModelCapabilities
from dlm.models.checkpoint import MODEL_TYPES, config_int
from dlm.models.layers import TransformerSpec
from dlm.models.qwen2 import Qwen2Family, Qwen2FamilyConfig

V2_MASK_ID = 151665
V2_STOP_ID = 151645
V2_BLOCK_SIZE = 32


class FastDLLMv2Config(Qwen2FamilyConfig):
    """``model:`` section for ``name: fast_dllm_v2``."""

    bd_size: int | None = Field(None, gt=0, description="attention block size; default: config.json bd_size or 32")


class FastDLLMv2Model(Qwen2Family):
    """``fast_dllm_v2``: block-causal Qwen2-layout block-diffusion LM with shifted logits."""

    Config = FastDLLMv2Config
    family = "fast_dllm_v2"
    model_types = ("qwen2", *MODEL_TYPES["fast_dllm_v2"])
    default_mask_id = V2_MASK_ID
    default_eos_ids = (V2_STOP_ID,)

    @classmethod
    def capabilities_for(cls, config, cfg: dict, spec: TransformerSpec, mask_id: int, eos: tuple[int, ...]):
        bd = config.bd_size or config_int(cfg, "bd_size", Path(config.path), V2_BLOCK_SIZE, minimum=1)
        return ModelCapabilities(
            mask_id=mask_id,
            eos_ids=eos,
            max_length=spec.max_length,
            vocab_size=spec.vocab_in,
            logit_shift=1,
            attention="block_causal",
            block_size=int(bd),
        )
