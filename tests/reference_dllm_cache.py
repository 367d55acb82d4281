"""dLLM-Cache's own code (Liu et al. 2025, arXiv 2506.06295; github:maomaocun/dLLM-cache) run on tiny LLaDA
checkpoints, beside dlm's ``dllm_cache``: tests/test_dllm_cache.py and docs/fidelity.md use it.

Nothing is vendored or downloaded. The user gives two checkouts:

- ``DLM_DLLM_CACHE_SRC``: maomaocun/dLLM-cache (its ``dllm_cache`` package: ``register_cache_LLaDA``, the
  ``dLLMCache`` singleton; and ``utils/generate_function.py``: the LLaDA ``generate`` loop their scripts run);
- ``DLM_FAST_DLLM_SRC``: NVlabs/Fast-dLLM, for a LLaDA model file (``llada/model/modeling_llada.py``, GSAI's
  LLaDA model with a ``replace_position`` argument added; the authors load GSAI's through remote code, which dlm
  never runs). Its ``einops`` import must resolve: ``DLM_REFERENCE_PYTHONPATH`` is prepended to ``sys.path``.

The authors' hook replaces each block's ``forward``, ``attention`` and the rotary embedding's ``forward``. One shim,
between the two repositories' files and outside the authors' code: Fast-dLLM's ``LLaDAModel.forward`` passes
``replace_position=None`` to every block, which GSAI's does not and the hooked ``forward`` does not accept; each
hooked ``forward`` is wrapped to drop that argument. No GPU kernel is involved (the checkpoint config turns flash
attention off), so nothing else is patched. Forwards are counted by wrapping the model's ``forward``.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import torch

from tests.reference_harness import count_forwards

SOURCES = ("DLM_DLLM_CACHE_SRC", "DLM_FAST_DLLM_SRC")


def sources() -> tuple[Path, Path] | None:
    """The two checkouts, or None when either variable is unset."""
    paths = [os.environ.get(name) for name in SOURCES]
    return None if not all(paths) else (Path(paths[0]), Path(paths[1]))


def load(checkpoint: Path, dtype: torch.dtype = torch.float64):
    """(the authors' ``generate``, their ``dLLMCache`` class, a Fast-dLLM LLaDA model with their hook registered)."""
    from dlm.tools.vs_fast_dllm import find_llada_dir, load_reference

    dllm_src, fast_src = sources()
    extra = os.environ.get("DLM_REFERENCE_PYTHONPATH")
    for path in ([extra] if extra else []) + [str(dllm_src)]:
        if path not in sys.path:
            sys.path.insert(0, path)
    hooks = importlib.import_module("dllm_cache.hooks")
    cache = importlib.import_module("dllm_cache.cache")
    generate = importlib.import_module("utils.generate_function").generate
    _, model = load_reference(find_llada_dir(fast_src), checkpoint, dtype)
    hooks.register_cache_LLaDA(model, "model.transformer.blocks")
    for block in model.model.transformer.blocks:
        hooked = block.forward
        block.forward = lambda x, replace_position=None, _f=hooked, **kw: _f(x, **kw)  # the one shim (docstring)
    model = count_forwards(model)
    return generate, cache.dLLMCache, model


def reference_generate(generate, dllm_cache_cls, model, prompt: list[int], *, steps: int, gen_length: int,
                       block_length: int, prompt_interval_steps: int, gen_interval_steps: int, transfer_ratio: float,
                       mask_id: int) -> tuple[list[int], int]:
    """The authors' LLaDA loop with their cache, as their scripts and demo run it: (generated ids, forwards)."""
    dllm_cache_cls.new_instance(prompt_interval_steps=prompt_interval_steps, gen_interval_steps=gen_interval_steps,
                                transfer_ratio=transfer_ratio)
    model.calls["n"] = 0
    with torch.no_grad():
        out = generate(torch.tensor([prompt]), None, model, steps=steps, gen_length=gen_length,
                       block_length=block_length, temperature=0.0, cfg_scale=0.0, remasking="low_confidence",
                       mask_id=mask_id)
    return out[0].tolist(), model.calls["n"]
