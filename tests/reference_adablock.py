"""AdaBlock-dLLM's own LLaDA generators (Lu et al., arXiv 2509.26432; github:lgxi24/AdaBlock-dLLM @ 491b205) run on
tiny LLaDA checkpoints, beside dlm's ``adablock``: tests/test_adablock.py uses it.

Nothing is vendored or downloaded. The user gives their ``llada`` folder in ``DLM_ADABLOCK_SRC`` (the checkout's
root or the folder itself, e.g. ``git archive HEAD llada | tar -x -C /tmp/adablock``); ``DLM_REFERENCE_PYTHONPATH``
is prepended to ``sys.path`` if their imports need a package. Their ``generate_adablock.py`` (``generate_adablock``,
``generate_adablock_prefix_cache``, ``generate_adablock_dual_cache``) and ``model/modeling_llada.py`` (Fast-dLLM's
LLaDA with ``replace_position``) are imported under their own module names, which are then taken out of
``sys.modules`` again (Fast-dLLM's checkout has a ``model`` package of the same name). Weights are read with
safetensors (no remote code); flash attention is off; nothing is patched. Forwards are counted by wrapping the
model's ``forward``. Delimiters are token ids in their code (``delimiter_ids``), passed as given.
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
    path = os.environ.get("DLM_ADABLOCK_SRC")
    if not path:
        return None
    return Path(path) / "llada" if (Path(path) / "llada" / "generate_adablock.py").exists() else Path(path)


def _import_theirs():
    """(their generators module, their modeling module, their configuration module), imported from the checkout."""
    names = ("generate_adablock", "model", "model.modeling_llada", "model.configuration_llada")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    extra = os.environ.get("DLM_REFERENCE_PYTHONPATH")
    paths = [str(source())] + ([extra] if extra else [])
    sys.path[:0] = paths
    try:
        return tuple(importlib.import_module(n) for n in ("generate_adablock", "model.modeling_llada",
                                                           "model.configuration_llada"))
    finally:
        del sys.path[: len(paths)]
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def load(checkpoint: Path, dtype: torch.dtype = torch.float64):
    """(their generators module, their LLaDA model filled from ``checkpoint``, forwards counted in ``model.calls``)."""

    generators, modeling, configuration = _import_theirs()
    cfg = json.loads((checkpoint / "config.json").read_text())
    for key in ("architectures", "model_type", "auto_map"):
        cfg.pop(key, None)
    config = configuration.LLaDAConfig(**cfg)
    config.flash_attention, config.use_cache = False, False
    model = modeling.LLaDAModelLM(config, init_params=False)
    model = count_forwards(load_weights(model, checkpoint, dtype))
    return generators, model


def reference_generate(generators, model, prompt: list[int], *, cache: str, gen_length: int, block_length: int,
                       threshold: float, delimiter_ids: list[int], delimiter_threshold: float | None,
                       mask_id: int) -> tuple[list[int], int, list[int]]:
    """Their loop for ``cache`` (none, prefix, dual): (generated ids, forwards, their block lengths)."""
    generate = {"none": generators.generate_adablock, "prefix": generators.generate_adablock_prefix_cache,
                "dual": generators.generate_adablock_dual_cache}[cache]
    model.calls["n"] = 0
    with torch.no_grad():
        out, nfe, blocks = generate(
            model, torch.tensor([prompt]), steps=gen_length // block_length, gen_length=gen_length,
            init_block_length=block_length, temperature=0.0, remasking="low_confidence", mask_id=mask_id,
            threshold=threshold, delimiter_ids=list(delimiter_ids),
            delimiter_threshold=float("inf") if delimiter_threshold is None else delimiter_threshold)
    assert sum(nfe) == model.calls["n"]
    return out[0, len(prompt):].tolist(), model.calls["n"], list(blocks)
