"""Sparse-dLLM's own code (Song et al. 2025, arXiv 2508.02558; github:OpenMOSS/Sparse-dLLM) run on tiny LLaDA
checkpoints, beside dlm's ``sparse``: tests/test_sparse_cache.py uses it.

Nothing is vendored or downloaded. The user gives a checkout in ``DLM_SPARSE_DLLM_SRC`` (its root, or a folder
holding ``opencompass/models/sparse_dllm/{modeling_llada,configuration_llada,llada_generate}.py``, e.g. ``git
archive HEAD opencompass/models/sparse_dllm | tar -x -C /tmp/sparse-dllm``); ``DLM_REFERENCE_PYTHONPATH`` is
prepended to ``sys.path`` (for ``einops``, if the model file's imports need it). The authors' model file is their
LLaDA with the eviction (``CustomCache``) inside its attention; their ``generate`` builds a ``CustomCache`` per
block. Weights are read with safetensors (no remote code); flash attention is off; nothing is patched.
Forwards are counted by wrapping the model's ``forward``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import torch

from tests.reference_harness import count_forwards, load_weights


def source() -> Path | None:
    path = os.environ.get("DLM_SPARSE_DLLM_SRC")
    return Path(path) if path else None


def load(checkpoint: Path, *, block_length: int, keep_ratio: float, kernel_size: int | None,
         dtype: torch.dtype = torch.float64):
    """(the authors' ``generate``, their LLaDA model configured for ``block_length``, ``keep_ratio``, ``kernel_size``)."""

    extra = os.environ.get("DLM_REFERENCE_PYTHONPATH")
    for path in [str(source())] + ([extra] if extra else []):
        if path not in sys.path:
            sys.path.insert(0, path)
    package = "opencompass.models.sparse_dllm"
    modeling = importlib.import_module(f"{package}.modeling_llada")
    configuration = importlib.import_module(f"{package}.configuration_llada")
    generate = importlib.import_module(f"{package}.llada_generate").generate
    cfg = json.loads((checkpoint / "config.json").read_text())
    for key in ("architectures", "model_type", "auto_map"):
        cfg.pop(key, None)
    config = configuration.LLaDAConfig(**cfg)
    config.flash_attention, config.use_cache = False, False
    config.block_len, config.keep_ratio, config.kernel_size = block_length, keep_ratio, kernel_size
    model = modeling.LLaDAModelLM(config, init_params=False)
    model = count_forwards(load_weights(model, checkpoint, dtype))
    return generate, model


def reference_generate(generate, model, prompt: list[int], *, steps: int, gen_length: int, block_length: int,
                       mask_id: int) -> tuple[list[int], int]:
    """The authors' LLaDA loop with their eviction: (generated ids, forwards)."""
    model.calls["n"] = 0
    with torch.no_grad():
        out = generate(model, torch.tensor([prompt]), steps=steps, gen_length=gen_length, block_length=block_length,
                       temperature=0.0, cfg_scale=0.0, remasking="low_confidence", mask_id=mask_id)
    return out[0, len(prompt):].tolist(), model.calls["n"]
