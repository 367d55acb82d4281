"""What every harness running an author's model file needs: the checkpoint's weights loaded into it (safetensors,
no remote code), and its forwards counted so that dlm's NFE can be compared."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def load_weights(model: torch.nn.Module, checkpoint: Path, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` with every ``*.safetensors`` shard of ``checkpoint`` loaded (rotary buffers aside, which the model
    builds itself), in ``dtype`` and eval mode; a tensor missing or left over is an error naming it."""
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(Path(checkpoint).glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if "rotary" not in m and "rope" not in m]
    if missing or unexpected:
        raise RuntimeError(f"the reference model does not take the checkpoint: missing {missing}, "
                           f"unexpected {unexpected}")
    return model.to(dtype).eval()


def count_forwards(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` whose ``forward`` counts its calls in ``model.calls["n"]`` (the reference's NFE)."""
    calls = {"n": 0}
    inner = model.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return inner(*args, **kwargs)

    model.forward = counted
    model.calls = calls
    return model


def zero_mask_row(checkpoint: Path) -> Path:
    """``checkpoint`` (LLaDA's layout) with the MASK row of its output head zeroed in place: the authors' loops
    commit a MASK argmax, which dlm never proposes, so a fidelity case must not produce one."""
    from safetensors.torch import load_file, save_file

    mask = json.loads((Path(checkpoint) / "config.json").read_text())["mask_token_id"]
    for shard in Path(checkpoint).glob("*.safetensors"):
        tensors = load_file(str(shard))
        tensors["model.transformer.ff_out.weight"][mask] = 0
        save_file(tensors, str(shard), metadata={"format": "pt"})
    return checkpoint
