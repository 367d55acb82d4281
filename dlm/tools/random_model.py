"""Random-weight checkpoints and random prompts for ``dlm bench --random-model`` (and the tools beside it).

``parse_model_spec`` reads ``"family=llada,d_model=512,..."``; ``random_checkpoint`` writes the checkpoint in the
family's released on-disk layout (through the checkpoint writers in :mod:`dlm.tools`), once per spec, in a
cache folder; ``random_prompts`` draws prompts of random ordinary token ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from dlm.errors import ConfigError, InputError

# sizes of the default ``--random-model`` checkpoint: ~35M parameters in LLaDA's layout
RANDOM_MODEL_DEFAULTS: dict[str, Any] = {
    "d_model": 512,
    "n_layers": 8,
    "n_heads": 8,
    "mlp_hidden_size": 1536,
    "vocab_size": 8192,
    "max_sequence_length": 4096,
    "seed": 0,
    "family": "llada",
}
# checkpoint layouts --random-model writes: LLaDA's, Qwen2's (qwen2 / wedlm), LLaDA-MoE's (llada_moe), LLaDA2's
# (llada2), SDAR's (Qwen3 layout, blocks of 4), SDAR-30B-A3B's (sdar_moe: Qwen3-MoE layout, for model sdar) or
# MDLM's (mdlm: the DiT of kuleshov-group/mdlm-owt, GPT-2-style tokenizer)
FAMILIES = ("llada", "qwen2", "llada_moe", "llada2", "sdar", "sdar_moe", "mdlm")
MDLM_WORDS = 273  # the tiny GPT-2-style tokenizer's vocabulary (dlm.tools.mdlm_checkpoints), before MASK
MOE_FAMILIES = ("llada_moe", "llada2", "sdar_moe")
MOE_DEFAULTS = {"n_experts": 8, "top_k": 2}  # sparse families: experts per layer, experts per token
_INT_FIELDS = {"d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "vocab_size",
               "max_sequence_length", "seed", "shards", *MOE_DEFAULTS}
_BOOL_FIELDS = {"weight_tying"}


# --- random checkpoints --------------------------------------------------------------------------------


def parse_model_spec(spec: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``"d_model=512,n_layers=8"`` (or a mapping) -> the checkpoint's sizes on top of
    :data:`RANDOM_MODEL_DEFAULTS`; ``family=qwen2`` writes Qwen2's layout (for the ``qwen2`` and ``wedlm``
    adapters: q/k/v biases, MASK id 2 in config.json) instead of LLaDA's; ``family=llada_moe`` writes
    LLaDA-MoE's, with ``n_experts`` experts per layer (8) of which ``top_k`` (2) run per token, each
    ``mlp_hidden_size / top_k`` wide: the active parameters of the dense model of the same sizes;
    ``family=llada2`` LLaDA2's (BailingMoeV2: every layer sparse, no shared expert, experts in groups of two of
    which half the groups are kept, the same active sizes); ``family=sdar`` SDAR's (the Qwen3 layout: per-head
    QK norm, no biases; ``block_size`` 4 in config.json); ``family=sdar_moe`` SDAR-30B-A3B's (Qwen3-MoE: every
    layer sparse, the kept weights normalised, the same active sizes; loaded by model ``sdar``); ``family=mdlm``
    MDLM's DiT (``kuleshov-group/mdlm-owt``'s layout: MLP 4 × d_model, whatever ``mlp_hidden_size`` says; a time
    embedding of width min(128, d_model); ``max_sequence_length`` its ``model_length``)."""
    out = dict(RANDOM_MODEL_DEFAULTS)
    if spec is None or spec == "" or spec == "default":
        return out
    items = spec.items() if isinstance(spec, Mapping) else (
        part.partition("=")[::2] for part in str(spec).split(",") if part.strip()
    )
    for key, value in items:
        key = str(key).strip()
        if key == "family":
            if str(value).strip() not in FAMILIES:
                raise ConfigError(f"--random-model: family={value!r}; choose one of {', '.join(FAMILIES)}")
            out[key] = str(value).strip()
            continue
        if key.endswith((".yaml", ".yml")):
            raise ConfigError(
                f"--random-model took {key!r} as its SPEC; put --random-model after the config files, "
                "or give it a SPEC (e.g. --random-model default)"
            )
        if key not in _INT_FIELDS | _BOOL_FIELDS:
            allowed = ", ".join(sorted(_INT_FIELDS | _BOOL_FIELDS | {"family"}))
            raise ConfigError(f"--random-model: unknown field {key!r}; allowed: {allowed}")
        text = str(value).strip()
        if key in _BOOL_FIELDS:
            if text.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ConfigError(f"--random-model: {key}={text!r} is not true or false")
            out[key] = text.lower() in ("1", "true", "yes")
            continue
        try:
            out[key] = int(text)
        except ValueError:
            raise ConfigError(f"--random-model: {key}={text!r} is not an integer") from None
        if out[key] < (0 if key == "seed" else 1):
            raise ConfigError(f"--random-model: {key}={text} must be {'0 or more' if key == 'seed' else 'positive'}")
    if out["d_model"] % out["n_heads"]:
        raise ConfigError(f"--random-model: n_heads ({out['n_heads']}) must divide d_model ({out['d_model']})")
    if out["family"] == "mdlm" and out["vocab_size"] < MDLM_WORDS + 1:
        raise ConfigError(f"--random-model: family=mdlm needs vocab_size >= {MDLM_WORDS + 1} (its tokenizer's "
                          f"{MDLM_WORDS} tokens and MASK)")
    moe = {k: out[k] for k in MOE_DEFAULTS if k in out}
    if out["family"] not in MOE_FAMILIES:
        if moe:
            raise ConfigError(f"--random-model: {', '.join(moe)} applies to family={', '.join(MOE_FAMILIES)} only")
        return out
    out = {**MOE_DEFAULTS, **out}
    if out["top_k"] > out["n_experts"]:
        raise ConfigError(f"--random-model: top_k ({out['top_k']}) must be at most n_experts ({out['n_experts']})")
    if out["mlp_hidden_size"] % out["top_k"]:
        raise ConfigError(f"--random-model: top_k ({out['top_k']}) must divide mlp_hidden_size "
                          f"({out['mlp_hidden_size']}): each expert is mlp_hidden_size / top_k wide")
    return out


def count_parameters(spec: Mapping[str, Any], *, active: bool = False) -> int:
    """Parameters of the checkpoint written with ``spec`` (as parsed by :func:`parse_model_spec`); ``active``:
    those one token runs through (a sparse model's ``top_k`` experts instead of all of them)."""
    d, n, heads = spec["d_model"], spec["n_layers"], spec["n_heads"]
    if spec.get("family") == "mdlm":  # DiT: q/k/v/o, MLP 4d with biases, adaLN 6d per block; time MLP; biased head
        c, vocab = min(128, d), spec["vocab_size"]
        per_layer = 4 * d * d + 8 * d * d + 5 * d + 2 * d + 6 * d * c + 6 * d
        return n * per_layer + 2 * vocab * d + vocab + 256 * c + c * c + 2 * c + d + 2 * d * c + 2 * d
    kv = spec.get("n_kv_heads") or heads
    ffn = spec.get("mlp_hidden_size") or 2 * d
    vocab = spec["vocab_size"]
    per_layer = d * d * 2 + 2 * d * (d // heads) * kv + 3 * d * ffn + 2 * d
    if spec.get("family") == "qwen2":
        per_layer += d + 2 * (d // heads) * kv  # q/k/v biases
    if spec.get("family") in MOE_FAMILIES:  # router (+ expert bias), QK norms; all experts unless the active ones
        experts = spec["top_k"] if active else spec["n_experts"]
        per_layer += d * spec["n_experts"] + 2 * (d // heads) + 3 * d * (ffn // spec["top_k"]) * experts - 3 * d * ffn
        if spec["family"] == "llada2":
            per_layer += spec["n_experts"]
    if spec.get("family") == "sdar":
        per_layer += 2 * (d // heads)  # per-head q/k norms
    return n * per_layer + vocab * d * (1 if spec.get("weight_tying") else 2) + d


def default_cache_dir() -> Path:
    """``$DLM_CACHE/random-models``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/dlm/random-models``."""
    if os.environ.get("DLM_CACHE"):
        return Path(os.environ["DLM_CACHE"]) / "random-models"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlm" / "random-models"


def random_checkpoint(spec: str | Mapping[str, Any] | None = None, cache_dir: str | Path | None = None) -> Path:
    """A random-weight checkpoint (LLaDA's, Qwen2's, LLaDA-MoE's, LLaDA2's or SDAR's layout) for ``spec``, written
    once and reused (keyed by its sizes)."""
    kwargs = parse_model_spec(spec)
    key = hashlib.sha1(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = root / f"{kwargs['family']}-d{kwargs['d_model']}-l{kwargs['n_layers']}-{key}"
    if (directory / "config.json").is_file() and any(directory.glob("*.safetensors")):
        return directory
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=root))
    _write_random(tmp, kwargs)
    try:
        tmp.rename(directory)
    except OSError:  # written concurrently by another process: use theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _write_random(directory: Path, spec: dict[str, Any]) -> None:
    kwargs = {k: v for k, v in spec.items() if k != "family"}
    if spec["family"] == "mdlm":
        from dlm.tools.mdlm_checkpoints import make_mdlm_checkpoint

        make_mdlm_checkpoint(directory, hidden_dim=kwargs["d_model"], cond_dim=min(128, kwargs["d_model"]),
                             n_blocks=kwargs["n_layers"], n_heads=kwargs["n_heads"],
                             model_length=kwargs["max_sequence_length"],
                             extra_vocab=kwargs["vocab_size"] - MDLM_WORDS - 1,
                             seed=kwargs["seed"], shards=kwargs.get("shards", 1))
        return
    if spec["family"] == "llada":
        from dlm.tools.checkpoints import make_llada_checkpoint

        make_llada_checkpoint(directory, **kwargs)
        return
    if spec["family"] == "llada_moe":
        from dlm.tools.moe_checkpoints import make_llada_moe_checkpoint

        make_llada_moe_checkpoint(
            directory, hidden_size=kwargs["d_model"], num_hidden_layers=kwargs["n_layers"],
            num_attention_heads=kwargs["n_heads"], num_key_value_heads=kwargs.get("n_kv_heads"),
            num_experts=kwargs["n_experts"], num_experts_per_tok=kwargs["top_k"],
            expert_intermediate_size=kwargs["mlp_hidden_size"] // kwargs["top_k"],
            max_position_embeddings=kwargs["max_sequence_length"], tie_word_embeddings=bool(kwargs.get("weight_tying")),
            vocab_size=kwargs["vocab_size"], seed=kwargs["seed"], shards=kwargs.get("shards", 1),
        )
        return
    if spec["family"] == "llada2":
        from dlm.tools.llada2_checkpoints import make_llada2_checkpoint

        n_experts, top_k = kwargs["n_experts"], kwargs["top_k"]
        n_group = n_experts // 2 if n_experts % 2 == 0 else 1  # groups of two experts (one group if odd)
        size = n_experts // n_group
        make_llada2_checkpoint(
            directory, hidden_size=kwargs["d_model"], num_hidden_layers=kwargs["n_layers"],
            num_attention_heads=kwargs["n_heads"], num_key_value_heads=kwargs.get("n_kv_heads"),
            num_experts=n_experts, num_experts_per_tok=top_k, n_group=n_group,
            topk_group=max(-(-top_k // size), n_group // 2), moe_intermediate_size=kwargs["mlp_hidden_size"] // top_k,
            first_k_dense_replace=0, num_shared_experts=0, max_position_embeddings=kwargs["max_sequence_length"],
            tie_word_embeddings=bool(kwargs.get("weight_tying")), vocab_size=kwargs["vocab_size"], seed=kwargs["seed"],
            shards=kwargs.get("shards", 1),
        )
        return
    from dlm.tools.checkpoints import CHARS, SPECIAL_TOKENS
    from dlm.tools.qwen2_checkpoints import make_qwen2_checkpoint
    from dlm.tools.sdar_checkpoints import make_sdar_checkpoint

    sizes = dict(
        hidden_size=kwargs["d_model"], num_hidden_layers=kwargs["n_layers"], num_attention_heads=kwargs["n_heads"],
        num_key_value_heads=kwargs.get("n_kv_heads") or kwargs["n_heads"], intermediate_size=kwargs["mlp_hidden_size"],
        max_position_embeddings=kwargs["max_sequence_length"],
        extra_vocab=max(0, kwargs["vocab_size"] - len(SPECIAL_TOKENS) - len(CHARS)), seed=kwargs["seed"],
        tie_word_embeddings=bool(kwargs.get("weight_tying")), shards=kwargs.get("shards", 1),
    )
    if spec["family"] == "sdar":
        make_sdar_checkpoint(directory, head_dim=None, **sizes)
    elif spec["family"] == "sdar_moe":
        make_sdar_checkpoint(directory, head_dim=None, num_experts=kwargs["n_experts"],
                             num_experts_per_tok=kwargs["top_k"],
                             moe_intermediate_size=kwargs["mlp_hidden_size"] // kwargs["top_k"], **sizes)
    else:
        make_qwen2_checkpoint(directory, **sizes)


# --- prompts ---------------------------------------------------------------------------------------------


def random_prompts(count: int, length: int, vocab: int, avoid: Sequence[int], seed: int = 0) -> list[Tensor]:
    """``count`` prompts of ``length`` token ids drawn uniformly from the vocabulary minus ``avoid`` (``length`` 0:
    empty prompts, unconditional samples)."""
    if count < 1 or length < 0:
        raise InputError("need at least one prompt of at least zero tokens")
    if length == 0:
        return [torch.zeros(0, dtype=torch.long) for _ in range(count)]
    allowed = torch.tensor(sorted(set(range(vocab)) - set(int(a) for a in avoid)), dtype=torch.long)
    if not len(allowed):
        raise InputError("the vocabulary has no ordinary token to build prompts from")
    g = torch.Generator().manual_seed(seed)
    return [allowed[torch.randint(len(allowed), (length,), generator=g)] for _ in range(count)]
