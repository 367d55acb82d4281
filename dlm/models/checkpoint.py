"""Reading Hugging Face–layout checkpoint directories: ``config.json`` and safetensors shards.

Weights are read with safetensors only (no pickle, no remote code). Every tensor the model expects must be
present with the right shape, a floating-point dtype and finite values, and every tensor present must be
expected; otherwise the checkpoint is refused with a :class:`~dlm.errors.CheckpointError` that names the
tensor. ``config.json`` values are read through :func:`config_int` and friends, which refuse a value of the
wrong type naming the file and the key, so a malformed config never surfaces as a Python traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open

from dlm.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
SINGLE_FILE = "model.safetensors"


def read_config(directory: Path) -> dict:
    """The parsed ``config.json`` of a checkpoint directory (a JSON object)."""
    directory = Path(directory)
    path = directory / "config.json"
    if directory.is_file():
        raise CheckpointError(f"checkpoint path {directory} is a file; give the directory that holds config.json")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; a checkpoint directory needs one")
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} must hold a JSON object of settings, got a {type(cfg).__name__}")
    return cfg


def _bad(directory: Path, key: str, want: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{Path(directory) / 'config.json'}: {key} must be {want}, got {value!r}")


def config_int(cfg: dict, key: str, directory: Path, default: Any = None, *, minimum: int | None = None) -> int:
    """``cfg[key]`` as an int (``default`` when absent or null); a non-integer or one below ``minimum`` is refused."""
    value = cfg.get(key)
    if value is None:
        if default is None:
            raise CheckpointError(f"{Path(directory) / 'config.json'} has no {key!r}; the model needs it")
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise _bad(directory, key, "an integer", value)
    if minimum is not None and value < minimum:
        raise _bad(directory, key, f"an integer >= {minimum}", value)
    return int(value)


def config_float(cfg: dict, key: str, directory: Path, default: float, *, positive: bool = False) -> float:
    """``cfg[key]`` as a finite float (``default`` when absent or null)."""
    value = cfg.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise _bad(directory, key, "a number", value)
    if positive and value <= 0:
        raise _bad(directory, key, "a positive number", value)
    return float(value)


def config_bool(cfg: dict, key: str, directory: Path, default: bool) -> bool:
    """``cfg[key]`` as a bool (``default`` when absent or null)."""
    value = cfg.get(key)
    value = default if value is None else value
    if not isinstance(value, bool):
        raise _bad(directory, key, "true or false", value)
    return value


def config_ids(cfg: dict, key: str, directory: Path) -> list[int]:
    """``cfg[key]`` as a list of token ids: one id or a list of ids; absent or null gives []."""
    value = cfg.get(key)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise _bad(directory, key, "a token id (an integer >= 0) or a list of them", value)
    return list(values)


def check_token_ids(source: str, vocab: int, *, mask_id: int, eos_ids: tuple[int, ...]) -> None:
    """Refuse a MASK or end-token id outside ``[0, vocab)``: it would fail in the forward, or never match."""
    if not 0 <= mask_id < vocab:
        raise CheckpointError(
            f"{source}: mask token id {mask_id} is outside the vocabulary [0, {vocab}); set mask_token_id "
            "in config.json (or model.mask_token_id) to the id of the MASK token"
        )
    if not eos_ids:
        raise CheckpointError(f"{source}: no end-token id; set eos_token_id in config.json or model.eos_token_ids")
    for eos in eos_ids:
        if not 0 <= eos < vocab:
            raise CheckpointError(
                f"{source}: end-token id {eos} is outside the vocabulary [0, {vocab}); set model.eos_token_ids "
                "(or eos_token_id in config.json) to ids of the tokenizer's end tokens"
            )
        if eos == mask_id:
            raise CheckpointError(f"{source}: end-token id {eos} is the MASK id; an end token must be a real token")


def _open(file: Path, device: str = "cpu"):
    """``safe_open`` of a shard; a truncated, empty or foreign file is a :class:`CheckpointError` naming it."""
    try:
        return safe_open(file, framework="pt", device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({err}); it may be truncated or corrupt: download or "
            "write it again"
        ) from None


def shard_map(directory: Path) -> dict[str, Path]:
    """Tensor name -> shard file, from ``model.safetensors.index.json`` or a single ``model.safetensors``."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index} is not a valid safetensors index (needs 'weight_map'): {err}") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names")
        out = {}
        for name, shard in weight_map.items():
            file = directory / shard
            if not file.is_file():
                raise CheckpointError(f"{index} maps tensor {name!r} to {shard}, which does not exist")
            out[name] = file
        return out
    single = directory / SINGLE_FILE
    if single.is_file():
        with _open(single) as f:
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
        with _open(file, load_device) as f:
            for name in names:
                meta = f.get_slice(name)
                shape = tuple(meta.get_shape())
                if shape != tuple(expected[name]):
                    raise CheckpointError(
                        f"tensor {name!r} in {file.name} has shape {list(shape)}, "
                        f"expected {list(expected[name])} from config.json"
                    )
                if meta.get_dtype() not in FLOAT_DTYPES:
                    raise CheckpointError(
                        f"tensor {name!r} in {file} is stored as {meta.get_dtype()}; weights must be floating point "
                        f"({', '.join(FLOAT_DTYPES)}). Quantized checkpoints are not supported."
                    )
                try:
                    tensor = f.get_tensor(name).to(dtype)
                except (SafetensorError, OSError) as err:
                    raise CheckpointError(
                        f"{file}: cannot read tensor {name!r} ({err}); the file may be truncated"
                    ) from None
                if not bool(torch.isfinite(tensor).all()):
                    narrow = dtype in (torch.float16, torch.bfloat16) and bool(f.get_tensor(name).isfinite().all())
                    raise CheckpointError(
                        f"tensor {name!r} in {file} holds NaN or infinite values"
                        + (f" once cast to {dtype}, which cannot represent it; use dtype: float32" if narrow
                           else "; the checkpoint is corrupt: download or write it again")
                    )
                out[name] = tensor
    return out
