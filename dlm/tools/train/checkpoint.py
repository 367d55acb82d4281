"""Save a trained :class:`~dlm.models.layers.Transformer` in the LLaDA checkpoint layout.

config.json uses LLaDA's field names (incl. ``mask_token_id`` / ``eos_token_id``), model.safetensors uses
LLaDA's tensor names (the inverse of :func:`dlm.models.llada.llada_names`), and the tokenizer files are the
character tokenizer, so the ``llada`` adapter loads the result like any LLaDA checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlm.models.layers import Transformer, TransformerSpec
from dlm.models.llada import llada_names
from dlm.tools.checkpoints import EOS_ID, MASK_ID, llada_config, save_tensors, write_char_tokenizer


def demo_config(spec: TransformerSpec, **extra) -> dict:
    """LLaDA config.json for ``spec`` with the demo vocabulary's MASK and EOS ids."""
    cfg = llada_config(
        vocab_size=spec.vocab_in, d_model=spec.dim, n_layers=spec.n_layers, n_heads=spec.n_heads,
        n_kv_heads=spec.n_kv_heads, mlp_hidden_size=spec.ffn_dim, max_sequence_length=spec.max_length,
        weight_tying=spec.tied, mask_token_id=MASK_ID, eos_token_id=EOS_ID, rope_theta=spec.rope_theta,
    )
    cfg["rms_norm_eps"] = spec.norm_eps
    cfg.update(extra)
    return cfg


def save_llada_checkpoint(
    net: Transformer, directory: Path, *, dtype: torch.dtype = torch.bfloat16, extra: dict | None = None
) -> Path:
    """Write ``net`` to ``directory`` as config.json + model.safetensors + tokenizer files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_char_tokenizer(directory, chat_template=None, model_max_length=net.spec.max_length)
    if vocab != net.spec.vocab_in:
        raise ValueError(f"the model has {net.spec.vocab_in} embeddings, the tokenizer {vocab} tokens")
    names = llada_names(net.spec)
    tensors = {names[k]: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    save_tensors(directory, tensors)
    (directory / "config.json").write_text(json.dumps(demo_config(net.spec, **(extra or {})), indent=2) + "\n")
    return directory
