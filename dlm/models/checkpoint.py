"""Reading Hugging Face–layout checkpoint directories: ``config.json`` and safetensors shards.

Weights are read with safetensors only (no pickle, no remote code). Every tensor the model expects must be
present with the right shape, a floating-point dtype and finite values, and every tensor present must be
expected; otherwise the checkpoint is refused with a :class:`~dlm.errors.CheckpointError` that names the
tensor. ``config.json`` values are read through :func:`config_int` and friends, which refuse a value of the
wrong type naming the file and the key, so a malformed config never surfaces as a Python traceback.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import SafetensorError, safe_open

from dlm.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
SINGLE_FILE = "model.safetensors"


MAX_CONFIG_JSON_BYTES = 16 << 20  # config.json of real checkpoints: a few KB
MAX_CONTEXT = 1 << 20  # the longest context a config.json may declare (RoPE tables are sized by it)
MAX_VOCAB = 1 << 24  # the largest vocabulary (the embedding and head are sized by it)


def _dir_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a usable directory (missing, a file, a symlink loop, ...), or None."""
    try:
        st = directory.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"checkpoint path {directory} is a symbolic link that loops back on itself"
        if err.errno == errno.ENOENT and directory.is_symlink():
            return f"checkpoint path {directory} is a symbolic link to {os.readlink(directory)}, which does not exist"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"checkpoint directory {directory} does not exist"
        return f"cannot read checkpoint directory {directory}: {err.strerror or err}"
    if stat.S_ISREG(st.st_mode):
        return f"checkpoint path {directory} is a file; give the directory that holds config.json"
    if not stat.S_ISDIR(st.st_mode):
        return f"checkpoint path {directory} is not a directory (a device, pipe or socket); give a checkpoint directory"
    return None


def read_json(path: Path, *, limit: int = MAX_CONFIG_JSON_BYTES) -> Any:
    """The parsed JSON of a regular file of at most ``limit`` bytes (a device, pipe or oversized file is refused
    before it is read), as a :class:`CheckpointError` naming the file."""
    try:
        st = path.stat()
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file; it must be a JSON file")
    if st.st_size > limit:
        raise CheckpointError(f"{path} has {st.st_size} bytes; a checkpoint's JSON file is at most {limit}")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > limit:
        raise CheckpointError(f"{path} has more than {limit} bytes; a checkpoint's JSON file is at most {limit}")
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise CheckpointError(f"{path} is not valid JSON: it nests too deeply") from None


def read_config(directory: Path) -> dict:
    """The parsed ``config.json`` of a checkpoint directory (a JSON object)."""
    directory = Path(directory)
    path = directory / "config.json"
    problem = _dir_problem(directory)
    if problem:
        raise CheckpointError(problem)
    if not os.path.lexists(path):
        raise CheckpointError(f"{directory} has no config.json; a checkpoint directory needs one")
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} must hold a JSON object of settings, got a {type(cfg).__name__}")
    return cfg


def check_model_type(cfg: dict, directory: Path, adapter: str, accepted: tuple[str, ...]) -> None:
    """Refuse a config.json whose ``model_type`` names a family another adapter serves (its weights would load
    into the wrong architecture and give nonsense without an error). An unknown ``model_type`` is accepted:
    custom checkpoints in a supported layout name themselves freely."""
    kind = cfg.get("model_type")
    if kind is None:
        return
    if not isinstance(kind, str):
        raise _bad(directory, "model_type", "a string", kind)
    norm = kind.lower().replace("-", "_")
    if norm in accepted:
        return
    owners = [name for name, types in MODEL_TYPES.items() if norm in types]
    if owners:
        raise CheckpointError(
            f"{Path(directory) / 'config.json'}: model_type {kind!r} is a {' or '.join(owners)} checkpoint, "
            f"but the config names model {adapter!r}; set model.name: {owners[0]}"
        )


# model_type values (lower case) of the released checkpoints of each family, for :func:`check_model_type`
MODEL_TYPES = {
    "llada": ("llada",),
    "llada_moe": ("lladamoe", "llada_moe"),  # the released config.json says "llada" (its config class's type)
    "llada2": ("llada2_moe", "llada21_moe", "llada2"),
    "dream": ("dream",),
    "fast_dllm_v2": ("fast_dllm_qwen", "fast_dllm_v2"),
    "qwen2": ("qwen2",),
    "wedlm": ("wedlm",),
    "sdar": ("sdar", "sdar_moe"),
    "diffusion_gemma": ("diffusion_gemma", "diffusion_gemma_text"),
    "mdlm": ("mdlm",),
}


def is_llada_moe_config(cfg: dict) -> bool:
    """True for a config.json in LLaDA-MoE's schema, which shares ``model_type: "llada"`` with dense LLaDA's:
    its ``architectures`` name ``LLaDAMoEModelLM``, or it declares experts and not LLaDA's ``d_model``."""
    arch = cfg.get("architectures")
    return (isinstance(arch, list) and "LLaDAMoEModelLM" in arch) or ("num_experts" in cfg and "d_model" not in cfg)


def check_tokenizer(tokenizer, vocab: int, source: str) -> None:
    """Refuse a tokenizer that can produce ids outside the model's vocabulary ``[0, vocab)``: its text would
    fail in the embedding, or decode ids the model never predicts."""
    if tokenizer is None:
        return
    top = tokenizer.max_id
    if top is not None and top >= vocab:
        raise CheckpointError(
            f"{source}: the tokenizer has token ids up to {top}, beyond the model's vocabulary of {vocab} "
            "(config.json vocab_size); the tokenizer files belong to another model"
        )


def _bad(directory: Path, key: str, want: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{Path(directory) / 'config.json'}: {key} must be {want}, got {value!r}")


def config_int(
    cfg: dict, key: str, directory: Path, default: Any = None, *, minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """``cfg[key]`` as an int (``default`` when absent or null); a non-integer, or one outside
    ``[minimum, maximum]``, is refused. ``maximum`` bounds the numbers that size buffers or loops (context,
    vocabulary, layers), so a hostile config.json cannot make dlm allocate or loop without a bound."""
    value = cfg.get(key)
    if value is None:
        if default is None:
            raise CheckpointError(f"{Path(directory) / 'config.json'} has no {key!r}; the model needs it")
        value = default
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or isinstance(value, float) and (value != value or abs(value) == float("inf")) or value != int(value)):
        raise _bad(directory, key, "an integer", value)
    if minimum is not None and value < minimum:
        raise _bad(directory, key, f"an integer >= {minimum}", value)
    if maximum is not None and value > maximum:
        raise _bad(directory, key, f"an integer <= {maximum} (dlm's bound: no released model comes near it)", value)
    return int(value)


# bounds of the sizes a config.json may declare (see config_int's maximum): far above released models
# (LLaDA-8B: 32 layers, d 4096, vocab 126464; Qwen2.5: context 131072, vocab 152064), far below what would
# make building the model (on the meta device) or its RoPE tables loop or allocate without a bound
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 17
MAX_HEADS = 4096
MAX_EXPERTS = 1 << 14  # experts per sparse layer (released MoE models: 64 to 512)


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


def end_ids(cfg: dict, directory: Path, default: int, tokenizer=None, extra_token: str | None = None) -> tuple[int, ...]:
    """The end tokens: config.json's ``eos_token_id`` (``default`` when absent), plus the id of ``extra_token`` (an
    end-of-turn token such as ``<|role_end|>``) when the tokenizer has it."""
    ids = config_ids(cfg, "eos_token_id", directory) or [default]
    extra = tokenizer.token_id(extra_token) if tokenizer is not None and extra_token else None
    return tuple(ids + ([extra] if extra is not None and extra not in ids else []))


def special_ids(config, cfg: dict, directory: Path, vocab: int, *, mask_default: int, eos_default: int,
                tokenizer=None, extra_token: str | None = None) -> tuple[int, tuple[int, ...]]:
    """``(mask_id, eos_ids)`` of a checkpoint: the ``model:`` section's ``mask_token_id`` / ``eos_token_ids`` when
    set, else config.json's (:func:`end_ids` for the end tokens), checked against the vocabulary."""
    eos = tuple(config.eos_token_ids) if config.eos_token_ids else end_ids(cfg, directory, eos_default, tokenizer,
                                                                           extra_token)
    mask_id = (config.mask_token_id if config.mask_token_id is not None
               else config_int(cfg, "mask_token_id", directory, mask_default))
    check_token_ids(str(directory), vocab, mask_id=mask_id, eos_ids=eos)
    return mask_id, eos


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
            weight_map = read_json(index)["weight_map"]
        except (KeyError, TypeError) as err:
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
    ignored: Callable[[str], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Load exactly the tensors of ``expected`` (checkpoint name -> shape), cast to ``dtype`` on ``device``.

    ``ignored``: names the checkpoint may hold that this model does not read (another modality's tower, a tied
    copy); any other tensor not expected is refused."""
    shards = shard_map(directory)
    missing = sorted(set(expected) - set(shards))
    if missing:
        raise CheckpointError(
            f"checkpoint {directory} is missing tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    unexpected = sorted(n for n in set(shards) - set(expected) if ignored is None or not ignored(n))
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
