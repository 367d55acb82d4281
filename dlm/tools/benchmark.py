"""Side-by-side speed benchmark of pipeline configurations (the logic behind ``dlm bench``).

Protocol, chosen so that ratios between configurations are robust on a shared, noisy machine:

1. every configuration is built once; configurations that name the same model (same section, dtype and
   device) share one loaded model;
2. warm-up: each configuration generates for the first prompt batch ``warmup`` times (not timed);
3. interleaved repeats: for ``r`` in ``1..repeats``, for each configuration in order (A, B, C, A, B, C, …),
   generate for every prompt batch and record the wall time of that pass; drifting machine load then hits
   every configuration alike;
4. figures are medians over the repeats; the speed-up of a configuration is the first configuration's median
   wall time divided by its own.

Reported per configuration: NFE (forward passes per prompt, from :attr:`GenerationOutput.nfe`), tokens per
forward (committed tokens / NFE, the "parallelism" of a decoding rule), generated tokens per second
(generation-region tokens of all prompts / median wall time; prompt tokens are not counted, cf. Fast-dLLM
issue #15), median wall time, speed-up, and the share of generated tokens equal to the first configuration's
(cache policies are approximations, so this shows how far their outputs drift on the benchmarked model).

Throughput follows Fast-dLLM's protocol (Wu et al., 2025, arXiv 2505.22618, §4.1: batch size 1, tokens of
the generation per second, wall clock) except that it counts every generated token, EOS included, since
random-weight models have no meaningful end of answer.

Under ``torchrun --nproc-per-node N`` the prompts are shared out between the processes, each times its share,
and the first process reports the merged figures (:func:`merge_shards`; docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from dlm.config import PipelineConfig, load_config
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


# --- prompts -------------------------------------------------------------------------------------------


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


def read_prompts_file(path: str | Path) -> list[str]:
    """Non-empty lines of a text file (``\\n`` escapes allowed inside a line)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"prompts file {path} is a directory; give a text file, one prompt per line")
    if not path.exists():
        raise InputError(f"prompts file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"prompts file {path} is not UTF-8 text (byte offset {err.start}); save it as UTF-8") from None
    lines = [ln.replace("\\n", "\n") for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"prompts file {path} has no prompt (one per non-empty line)")
    return lines


# --- the benchmark ------------------------------------------------------------------------------------


@dataclass
class BenchEntry:
    """One configuration under test."""

    label: str
    config: PipelineConfig
    pipeline: Any = None  # dlm.pipeline.Pipeline
    seconds: list[float] = field(default_factory=list)  # wall time of each timed pass over all prompts
    nfe: list[int] = field(default_factory=list)  # per prompt, from the first timed pass
    committed: int = 0  # tokens committed over all prompts (first timed pass)
    generated_tokens: int = 0  # generation-region tokens over all prompts
    outputs: list[Tensor] = field(default_factory=list)  # generated ids per prompt (first timed pass)


def _model_key(config: PipelineConfig) -> str:
    m = config.model
    run = config.run
    return json.dumps([m.name, m.config.model_dump(mode="json"), run.dtype, run.device, run.compile, run.tensor_parallel,
                       run.expert_parallel],
                      sort_keys=True)


def build_entries(
    paths: Sequence[str | Path], overrides: Sequence[str] = (), *, labels: Sequence[str] | None = None
) -> list[BenchEntry]:
    """Load and validate each YAML (with ``overrides``), build the pipelines, sharing loaded models."""
    from dlm.pipeline import Pipeline

    if not paths:
        raise ConfigError("dlm bench needs at least one pipeline config")
    configs = [load_config(p, list(overrides)) for p in paths]
    names = list(labels) if labels else _labels(paths)
    models: dict[str, Any] = {}
    entries = []
    for name, cfg in zip(names, configs):
        key = _model_key(cfg)
        if key not in models:
            models[key] = Pipeline.from_config(cfg).model  # configs on the same checkpoint share it
        pipe = Pipeline.from_config(cfg, model=models[key])
        entries.append(BenchEntry(label=name, config=cfg, pipeline=pipe))
    return entries


def _labels(paths: Sequence[str | Path]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    out, seen = [], {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
        out.append(s if stems.count(s) == 1 else f"{s}#{seen[s]}")
    return out


def _batches(prompts: Sequence[Any], batch_size: int) -> list[list[Any]]:
    return [list(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]


def _generate(pipe, batch: list[Any]):
    if isinstance(batch[0], str):
        return pipe.generate(batch)
    return pipe.generate(input_ids=batch)


def run_benchmark(
    entries: Sequence[BenchEntry],
    prompts: Sequence[Tensor] | Sequence[str],
    *,
    repeats: int = 3,
    warmup: int = 1,
    batch_size: int = 1,
    progress: bool = True,
    on_pass: Callable[[BenchEntry, int, float], None] | None = None,
) -> list[BenchEntry]:
    """Warm up, then time ``repeats`` interleaved passes of every entry over ``prompts`` (see module doc)."""
    if repeats < 1:
        raise InputError("repeats must be at least 1")
    batches = _batches(prompts, max(1, batch_size))
    total = len(entries) * (warmup + repeats * len(batches))
    bar = _progress(total, progress)
    try:
        for _ in range(warmup):
            for e in entries:
                bar.set_postfix_str(f"warm-up {e.label}")
                _generate(e.pipeline, batches[0])
                bar.update(1)
        for r in range(repeats):
            for e in entries:
                bar.set_postfix_str(f"{e.label} (repeat {r + 1}/{repeats})")
                seconds, first = 0.0, r == 0
                for batch in batches:
                    t0 = time.perf_counter()
                    out = _generate(e.pipeline, batch)
                    seconds += time.perf_counter() - t0
                    if first:
                        e.nfe.extend(out.nfe)
                        e.committed += sum(sum(s) for s in out.tokens_per_step)
                        e.generated_tokens += sum(int(g.numel()) for g in out.generated)
                        e.outputs.extend(g.clone() for g in out.generated)
                    bar.update(1)
                e.seconds.append(seconds)
                if on_pass is not None:
                    on_pass(e, r, seconds)
    finally:
        bar.close()
    return list(entries)


def _progress(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        enabled = False
    if not enabled:
        class _Null:
            def update(self, n=1): ...
            def set_postfix_str(self, s): ...
            def close(self): ...

        return _Null()
    return tqdm(total=total, desc="dlm bench", unit="gen", leave=False, dynamic_ncols=True)


def merge_shards(entries: Sequence[BenchEntry], world) -> list[BenchEntry]:
    """After a data-parallel run (each group timed its share of the prompts, :func:`dlm.distributed.shard`):
    every entry's figures over all prompts, in the original prompt order. A pass's wall time is the slowest
    group's (the groups run at the same time); counts and tokens are summed and concatenated."""
    from dlm.distributed import gather_floats, gather_ints, unshard

    if world.dp_size == 1:
        return list(entries)
    for e in entries:
        e.seconds = [max(col) for col in zip(*gather_floats(e.seconds, world))]
        e.nfe = unshard(gather_ints(e.nfe, world))
        e.committed = sum(c[0] for c in gather_ints([e.committed], world))
        e.generated_tokens = sum(c[0] for c in gather_ints([e.generated_tokens], world))
        lengths = unshard(gather_ints([len(o) for o in e.outputs], world))
        flat = gather_ints([t for o in e.outputs for t in o.tolist()], world)
        per_group = []
        for g, tokens in enumerate(flat):
            sizes = lengths[g :: world.dp_size]
            cuts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            per_group.append([torch.tensor(tokens[a:b], dtype=torch.long) for a, b in zip(cuts, cuts[1:])])
        e.outputs = unshard(per_group)
    return list(entries)


# --- results ------------------------------------------------------------------------------------------


def summarize(entries: Sequence[BenchEntry]) -> list[dict[str, Any]]:
    """One row of figures per entry (medians over repeats; speed-up against the first entry)."""
    rows = []
    base = statistics.median(entries[0].seconds)
    ref = entries[0].outputs
    for e in entries:
        wall = statistics.median(e.seconds)
        n_prompts = len(e.nfe)
        nfe_total = sum(e.nfe)
        same = sum(int((a == b).sum()) for a, b in zip(e.outputs, ref) if a.shape == b.shape)
        cfg = e.config.to_dict()
        rows.append({
            "label": e.label,
            "source": e.config.source,
            "cache": cfg["cache"]["name"],
            "decoding": cfg["decoding"]["name"],
            "decoding_params": {k: v for k, v in cfg["decoding"].items() if k != "name"},
            "iteration": cfg["iteration"],
            "nfe": nfe_total / max(n_prompts, 1),
            "nfe_per_prompt": list(e.nfe),
            "tokens_per_forward": e.committed / max(nfe_total, 1),
            "generated_tokens": e.generated_tokens,
            "tokens_per_second": e.generated_tokens / wall if wall > 0 else float("inf"),
            "wall_seconds": wall,
            "wall_seconds_all": list(e.seconds),
            "speedup": base / wall if wall > 0 else float("inf"),
            "same_tokens_as_first": same / max(sum(int(g.numel()) for g in ref), 1),
        })
    return rows


def machine_info(device: str = "cpu", dtype: str | None = None) -> dict[str, Any]:
    from dlm.provenance import provenance

    info = {
        **provenance(device=device, dtype=dtype),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The figures as a GitHub markdown table."""
    head = ("config", "cache", "decoding", "NFE", "tokens/forward", "tokens/s", "wall s (median)", "speed-up",
            "same tokens as first")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["decoding_params"].items() if k != "temperature" or v)
        dec = r["decoding"] + (f" ({params})" if params else "")
        lines.append(
            f"| {r['label']} | {r['cache']} | {dec} | {r['nfe']:.1f} | {r['tokens_per_forward']:.2f} | "
            f"{r['tokens_per_second']:.1f} | {r['wall_seconds']:.3f} | {r['speedup']:.2f}× | "
            f"{100 * r['same_tokens_as_first']:.1f}% |"
        )
    return "\n".join(lines)


def report(
    entries: Sequence[BenchEntry], *, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Everything ``--json-out`` writes: settings, machine, and one row per configuration."""
    return {
        "settings": dict(settings or {}),
        "machine": machine_info(*((entries[0].config.run.device, entries[0].config.run.dtype) if entries else ())),
        "dtypes": {e.label: e.config.run.dtype for e in entries},
        "results": summarize(entries),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
