"""Reading Hugging Face–layout checkpoint directories: ``config.json`` and safetensors shards.

Weights are read with safetensors only (no pickle, no remote code). Every tensor the model expects must be
present with the right shape, and every tensor present must be expected; otherwise the checkpoint is
refused with a :class:`~dlm.errors.CheckpointError` that names the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open

from dlm.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_config(directory: Path) -> dict:
    """The parsed ``config.json`` of a checkpoint directory."""
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; a checkpoint directory needs one")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err


def shard_map(directory: Path) -> dict[str, Path]:
    """Tensor name -> shard file, from ``model.safetensors.index.json`` or a single ``model.safetensors``."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index} is not a valid safetensors index (needs 'weight_map'): {err}") from err
        out = {}
        for name, shard in weight_map.items():
            file = directory / shard
            if not file.is_file():
                raise CheckpointError(f"{index} maps tensor {name!r} to {shard}, which does not exist")
            out[name] = file
        return out
    single = directory / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        raise CheckpointError(
            f"{directory} holds only pickle weights (*.bin/*.pt); dlm loads safetensors only, never pickle. "
            "Convert the checkpoint to safetensors first."
        )
    raise CheckpointError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def load_tensors(
    directory: Path,
    expected: Mapping[str, tuple[int, ...]],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> dict[str, torch.Tensor]:
    """Load exactly the tensors of ``expected`` (checkpoint name -> shape), cast to ``dtype`` on ``device``."""
    shards = shard_map(directory)
    missing = sorted(set(expected) - set(shards))
    if missing:
        raise CheckpointError(
            f"checkpoint {directory} is missing tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    unexpected = sorted(set(shards) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"checkpoint {directory} has unexpected tensor {unexpected[0]!r}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            + "; its config.json may not describe these weights"
        )
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(shards[name], []).append(name)
    out = {}
    load_device = str(device) if torch.device(device).type != "meta" else "cpu"
    for file, names in by_file.items():
        with safe_open(file, framework="pt", device=load_device) as f:
            for name in names:
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(expected[name]):
                    raise CheckpointError(
                        f"tensor {name!r} in {file.name} has shape {list(shape)}, "
                        f"expected {list(expected[name])} from config.json"
                    )
                out[name] = f.get_tensor(name).to(dtype)
    return out
