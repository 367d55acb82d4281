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

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from dlm.config import PipelineConfig, load_config
from dlm.errors import ConfigError, InputError


# --- prompts files -------------------------------------------------------------------------------------


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
