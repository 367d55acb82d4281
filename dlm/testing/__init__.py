"""Helpers for tests, benchmarks and plugin authors: tiny checkpoints in real on-disk layouts, and the
contract test kit (the package :mod:`dlm.testing.contracts`, imported on first use) that checks a component
against its interface."""

from dlm.tools.checkpoints import CHARS, SPECIAL_TOKENS, make_llada_checkpoint, write_char_tokenizer
from dlm.tools.diffusion_gemma_checkpoints import make_diffusion_gemma_checkpoint
from dlm.tools.llada2_checkpoints import make_llada2_checkpoint
from dlm.tools.mdlm_checkpoints import make_mdlm_checkpoint
from dlm.tools.moe_checkpoints import make_llada_moe_checkpoint
from dlm.tools.sdar_checkpoints import make_sdar_checkpoint

_CONTRACTS = (
    "CHECKS",
    "ContractViolation",
    "check_component",
    "check_decoding_strategy",
    "check_cache_manager",
    "check_iteration_manager",
    "check_model_adapter",
    "contract_test",
)

__all__ = ["make_llada_checkpoint", "make_diffusion_gemma_checkpoint", "make_llada_moe_checkpoint",
           "make_llada2_checkpoint", "make_sdar_checkpoint", "make_mdlm_checkpoint", "write_char_tokenizer", "CHARS",
           "SPECIAL_TOKENS", *_CONTRACTS]


def __getattr__(name: str):
    if name in _CONTRACTS:  # lazy: the kit imports the whole pipeline
        from dlm.testing import contracts

        return getattr(contracts, name)
    raise AttributeError(f"module 'dlm.testing' has no attribute {name!r}")
