"""d²Cache's own code (Jiang et al., ICLR 2026, arXiv 2509.23094; github:Kamichanw/d2Cache) run on tiny LLaDA
checkpoints, beside dlm's ``d2cache``: tests/test_d2cache.py and docs/fidelity.md use it.

Nothing is vendored or downloaded. The user gives a checkout in ``DLM_D2CACHE_SRC`` (its root, or a folder holding
its ``src``: ``git archive HEAD src | tar -x -C /tmp/d2cache``); ``DLM_REFERENCE_PYTHONPATH`` is prepended to
``sys.path`` for the packages their ``src/__init__.py`` and ``src/utils/__init__.py`` import (omegaconf, hydra-core,
loguru, python-dotenv, accelerate and its psutil: ``pip install --target DIR``). Their loop is
``src/generation/vanilla.py``'s ``vanilla_generate`` with ``cache_cls=d2Cache`` (``src/cache/d2cache.py``) on their
LLaDA (``src/models/llada/modeling_llada.py``) with eager attention, as d2Cache requires; weights are read with
safetensors (no remote code); flash attention is off. Their files are not patched. Three shims, outside their code:

- ``src.models`` (and its ``llada``/``dream`` subpackages) are bare packages over their folders: the ``__init__``
  files import the evaluation wrappers (lm-eval, accelerate's launcher), which a generation does not use; the names
  ``LLaDAModelLM``/``DreamModel`` that ``prepare_logits_for_generation`` imports from ``src.models`` are bound to
  their classes (``DreamModel`` to a stand-in: no Dream model runs here);
- ``src.generation.utils.get_token_freq`` returns None: ``prepare_logits_for_generation`` loads the PC-sampler's
  token frequencies of the real 126k vocabulary on every call, which a tiny vocabulary cannot index; they are read
  only with ``debias`` (off);
- their ``LLaDAModelLM.tie_weights()`` takes no arguments, which transformers 5 passes from ``post_init``: the
  model is an instance of a subclass whose ``tie_weights`` takes and drops them, then calls theirs.

Forwards are counted by wrapping the model's ``forward``; ``MASK_TOKEN_ID`` is set as their scripts set it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import types
from pathlib import Path

import torch

from tests.reference_harness import count_forwards, load_weights


def source() -> Path | None:
    path = os.environ.get("DLM_D2CACHE_SRC")
    return Path(path) if path else None


def _bare(name: str, folder: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    sys.modules[name] = module
    return module


def _tie_weights(self, *args, **kwargs):
    """Their ``tie_weights``, taking the arguments newer transformers pass (the third shim, module doc)."""
    return super(type(self), self).tie_weights()


def load(checkpoint: Path, dtype: torch.dtype = torch.float64):
    """(their ``vanilla_generate``, their ``d2Cache`` class, their LLaDA model on ``checkpoint``)."""

    extra = os.environ.get("DLM_REFERENCE_PYTHONPATH")
    for path in [str(source())] + ([extra] if extra else []):
        if path not in sys.path:
            sys.path.insert(0, path)
    root = source() / "src"
    models = _bare("src.models", root / "models")  # the shims (module doc)
    _bare("src.models.llada", root / "models" / "llada")
    _bare("src.models.dream", root / "models" / "dream")
    modeling = importlib.import_module("src.models.llada.modeling_llada")
    configuration = importlib.import_module("src.models.llada.configuration_llada")
    models.LLaDAModelLM, models.DreamModel = modeling.LLaDAModelLM, type("DreamModel", (), {})
    vanilla = importlib.import_module("src.generation.vanilla")
    importlib.import_module("src.generation.utils").get_token_freq = lambda *args: None
    d2cache = importlib.import_module("src.cache.d2cache").d2Cache
    cfg = json.loads((checkpoint / "config.json").read_text())
    for key in ("architectures", "model_type", "auto_map"):
        cfg.pop(key, None)
    config = configuration.LLaDAConfig(**cfg)
    config.flash_attention, config.use_cache = False, False
    config._attn_implementation = "eager"
    model = type("LLaDAModelLM", (modeling.LLaDAModelLM,), {"tie_weights": _tie_weights})(config)
    model = count_forwards(load_weights(model, checkpoint, dtype))
    return vanilla.vanilla_generate, d2cache, model


def reference_generate(generate, d2cache, model, prompt: list[int], *, gen_length: int, block_length: int,
                       mask_id: int, threshold: float | None = None, **cache) -> tuple[list[int], int]:
    """Their semi-autoregressive loop with their cache, one token a step (or ``threshold``): (generated ids,
    forwards). ``cache``: ``rollout_p``, ``current_k``, ``sigma``, ``inflate_w``."""
    import functools

    os.environ["MASK_TOKEN_ID"] = str(mask_id)
    model.calls["n"] = 0
    with torch.no_grad():
        record = generate(model, torch.tensor([prompt]), gen_length=gen_length, block_length=block_length,
                          num_transfer_tokens=1, temperature=0.0, mask_token_id=mask_id, threshold=threshold,
                          cache_cls=functools.partial(d2cache, **cache))
    frame = record.initial_frame
    for delta in record.deltas:
        frame = frame.apply_delta(delta)
    return frame.as_batch().generated_tokens[0].tolist(), model.calls["n"]
