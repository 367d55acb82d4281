"""D2F's own generator (Wang et al. 2025, arXiv 2508.09192; github:zhijie-group/Discrete-Diffusion-Forcing@771f745)
run on tiny LLaDA checkpoints, beside dlm's ``d2f``: tests/test_d2f.py uses it.

Nothing is vendored or downloaded. The user gives the ``D2F-eval`` folder of a checkout in ``DLM_D2F_SRC`` (e.g.
``git archive HEAD D2F-eval | tar -x -C /tmp/d2f`` and ``DLM_D2F_SRC=/tmp/d2f/D2F-eval``). Their
``eval_llada.py`` is imported as it is, with its LLaDA (``model_cache/llada/modeling_llada.py``); its lm-eval
wrapper ``DreamLoRA`` is built without its ``__init__`` (which loads a Hugging Face model and a LoRA on GPUs),
setting the attributes ``_generate_block_single`` reads. Where ``peft`` or ``accelerate`` is not installed, or
lm-eval has no ``lm_eval.models.utils.get_dtype`` (0.4.13 has none), an empty stand-in is registered while
``eval_llada.py`` is imported, for its module-level imports (the generator uses none of them). Weights are read
with safetensors (no remote code). No file of theirs is changed, but their model module's ``F`` is given a
``scaled_dot_product_attention`` that casts the float attention mask to the queries' dtype (:class:`_Functional`:
their float32 mask beside float64 queries meets a torch CPU kernel issue). Their loop stops at the hard-coded id
126081, so the checkpoints given here have a vocabulary covering it. Forwards are counted by
wrapping the model's ``forward``.
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

D2F_EOS_ID = 126081  # eval_llada.py's hard-coded end token


def source() -> Path | None:
    path = os.environ.get("DLM_D2F_SRC")
    return Path(path) if path else None


def _import_eval_llada():
    """eval_llada.py, with empty stand-ins for its imports the generator never uses (``peft``, ``accelerate``) and
    lm-eval's ``get_dtype`` (gone from newer lm-eval; only ``DreamLoRA.__init__`` calls it) where they are not
    installed, registered only while it is imported (transformers probes for accelerate)."""
    importlib.import_module("transformers")
    importlib.import_module("lm_eval.api.model")
    names = {"peft": ("LoraConfig", "get_peft_model", "PeftConfig", "PeftModel"),
             "accelerate": ("Accelerator", "InitProcessGroupKwargs")}
    added = []
    for module, attributes in names.items():
        try:
            importlib.import_module(module)
        except ImportError:
            stand_in = types.ModuleType(module)
            for name in attributes:
                setattr(stand_in, name, type(name, (), {}))
            sys.modules[module] = stand_in
            added.append(module)
    utils = importlib.import_module("lm_eval.models.utils")
    no_get_dtype = not hasattr(utils, "get_dtype")  # newer lm-eval dropped it; only DreamLoRA.__init__ calls it
    if no_get_dtype:
        utils.get_dtype = lambda dtype: dtype
    try:
        return importlib.import_module("eval_llada")
    finally:
        for module in added:
            del sys.modules[module]
        if no_get_dtype:
            del utils.get_dtype


class _Functional:
    """``torch.nn.functional`` for their model module, but for one call: ``scaled_dot_product_attention`` gets its
    float mask in the query's dtype. Their model casts the mask to float32 (``attention_bias.to(torch.float)``); with
    float64 queries torch 2.13's CPU kernel then attends wrongly from 16 keys on (seen with a plain
    ``F.scaled_dot_product_attention`` call, without their code), where matching dtypes give the exact attention."""

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    @staticmethod
    def scaled_dot_product_attention(q, k, v, attn_mask=None, **kwargs):
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(q.dtype)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kwargs)


class _Silent:
    """The generator decodes the canvas every step for nothing; it only needs ``decode``."""

    def decode(self, ids, skip_special_tokens=False):
        return ""


def load(checkpoint: Path, dtype: torch.dtype = torch.float64):
    """(the authors' lm-eval wrapper class, their LLaDA model on ``checkpoint``)."""

    if str(source()) not in sys.path:
        sys.path.insert(0, str(source()))
    eval_llada = _import_eval_llada()
    configuration = importlib.import_module("model_cache.llada.configuration_llada")
    modeling = importlib.import_module("model_cache.llada.modeling_llada")
    modeling.F = _Functional()  # see _Functional: the mask in the queries' dtype
    cfg = json.loads((checkpoint / "config.json").read_text())
    for key in ("architectures", "model_type", "auto_map"):
        cfg.pop(key, None)
    config = configuration.LLaDAConfig(**cfg)
    config.flash_attention = False
    model = modeling.LLaDAModelLM(config, init_params=False)
    model = count_forwards(load_weights(model, checkpoint, dtype))
    return eval_llada.DreamLoRA, model


def reference_generate(wrapper_cls, model, prompt: list[int], *, gen_length: int, block_size: int,
                       block_add_threshold: float, decoded_token_threshold: float, skip_threshold: float,
                       mask_id: int, max_length: int = 512) -> tuple[list[int], int]:
    """Their ``_generate_block_single`` at temperature 0: (generated ids, forwards)."""
    lm = wrapper_cls.__new__(wrapper_cls)  # no __init__: it loads weights and sets up GPUs
    lm.model, lm._device, lm.tokenizer = model, torch.device("cpu"), _Silent()
    lm.target_dtype, lm.max_length, lm.max_new_tokens, lm.mask_token_id = model.dtype, max_length, gen_length, mask_id
    lm.block_size, lm.block_add_threshold, lm.skip_threshold = block_size, block_add_threshold, skip_threshold
    lm.decoded_token_threshold, lm.sampling_strategy = decoded_token_threshold, "default"
    lm.temperature, lm.top_p, lm.top_k = 0.0, None, None
    model.calls["n"] = 0
    out = lm._generate_block_single(torch.tensor([prompt]))
    return out, model.calls["n"]
