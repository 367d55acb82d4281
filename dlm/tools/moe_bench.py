"""What a sparse mixture-of-experts layer costs per forward on this machine, side by side with a dense model.

Three random-weight models in LLaDA-MoE's layout, loaded by the ``llada_moe`` adapter and identical but for
their feed-forward layers:

- **dense**: one SwiGLU of ``top_k * expert_dim`` per layer: the *active* parameters of the sparse model (it
  lacks only the router's ``experts x d_model``);
- **sparse MoE**: ``experts`` SwiGLUs of ``expert_dim`` per layer, ``top_k`` run per token, through dlm's
  dispatch (:mod:`dlm.models.moe`: route once, each expert on its own rows);
- **every expert on every token**: the same sparse model with each expert run on every row and weighted by a
  dense vector of router weights (zero where not chosen): what the dispatch saves, for reference only.

Each forward computes the whole canvas of ``T`` tokens (one row, no cache), as a refresh step does. Protocol:
warm-up, then interleaved repeats (dense, MoE, all experts, dense, ...), each timing enough forwards to last
about 50 ms; figures are medians of CPU time (``time.process_time``) per forward, which a machine shared with
other jobs disturbs less than wall time (wall time is reported too). Run single-threaded for stable figures:

    python -m dlm.tools.moe_bench --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from dlm.models.llada_moe import LLaDAMoEConfig, LLaDAMoEModel
from dlm.models.moe import SparseMoE
from dlm.tools.moe_checkpoints import make_llada_moe_checkpoint


class AllExperts(nn.Module):
    """A :class:`SparseMoE`'s function computed densely: every expert on every row (comparison only)."""

    def __init__(self, moe: SparseMoE) -> None:
        super().__init__()
        self.moe = moe

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        routing = self.moe.router(flat)
        weights = torch.zeros(flat.shape[0], len(self.moe.experts), dtype=flat.dtype, device=flat.device)
        weights.scatter_(1, routing.experts, routing.weights)  # [T, E], zero where not chosen
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.moe.experts):
            out = out + weights[:, e : e + 1] * expert(flat)
        if self.moe.shared is not None:
            out = out + self.moe.shared(flat)
        return out.view(x.shape)


def build(args, directory: Path) -> dict[str, LLaDAMoEModel]:
    common = dict(hidden_size=args.d_model, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                  num_experts=args.experts, num_experts_per_tok=args.top_k, expert_intermediate_size=args.expert_dim,
                  dense_intermediate_size=args.top_k * args.expert_dim, max_position_embeddings=max(args.tokens) + 8,
                  seed=args.seed)
    dtype = getattr(torch, args.dtype)

    def load(path):
        return LLaDAMoEModel.load(LLaDAMoEConfig(path=path), dtype=dtype, device=torch.device("cpu"))

    sparse_path = make_llada_moe_checkpoint(directory / "moe", **common)
    dense = load(make_llada_moe_checkpoint(directory / "dense", moe_layer_freq=[0] * args.layers, **common))
    everything = load(sparse_path)
    for block in everything.net.blocks:
        block.ffn = AllExperts(block.ffn)
    return {"dense": dense, "moe": load(sparse_path), "all_experts": everything}


def parameters(model: LLaDAMoEModel, *, active: int | None = None) -> int:
    """Parameters of the network; with ``active`` = top_k, counting top_k experts of each sparse layer."""
    total = sum(p.numel() for p in model.net.parameters())
    if active is None:
        return total
    for block in model.net.blocks:
        if isinstance(block.ffn, SparseMoE):
            experts = list(block.ffn.experts)
            total -= sum(p.numel() for p in experts[0].parameters()) * (len(experts) - active)
    return total


@torch.inference_mode()
def time_forwards(model: LLaDAMoEModel, ids: Tensor, count: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per forward, over ``count`` forwards of the canvas ``ids``."""
    positions = torch.arange(ids.shape[1])[None, :]
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        model.net(ids, positions, None)
    return (time.process_time() - cpu) / count, (time.perf_counter() - wall) / count


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    names = ("dense", "moe", "all_experts")
    with tempfile.TemporaryDirectory(prefix="dlm-moe-bench-") as tmp:
        models = build(args, Path(tmp))
        gen = torch.Generator().manual_seed(args.seed)
        rows = []
        for tokens in args.tokens:
            ids = torch.randint(6, 80, (1, tokens), generator=gen)
            with torch.inference_mode():
                positions = torch.arange(tokens)[None, :]
                check = (models["moe"].net(ids, positions, None) - models["all_experts"].net(ids, positions, None))
            once = {n: time_forwards(models[n], ids, 1)[1] for n in names}  # warm-up, and the size of a batch
            count = {n: max(1, int(0.05 / max(once[n], 1e-6))) for n in names}
            for _ in range(args.warmup):
                for n in names:
                    time_forwards(models[n], ids, count[n])
            samples = {n: [] for n in names}
            for _ in range(args.repeats):
                for n in names:
                    samples[n].append(time_forwards(models[n], ids, count[n]))
            row = {"tokens": tokens, "max_abs_diff_moe_vs_all_experts": float(check.abs().max())}
            for n in names:
                row[f"{n}_cpu_ms"] = 1e3 * statistics.median(s[0] for s in samples[n])
                row[f"{n}_wall_ms"] = 1e3 * statistics.median(s[1] for s in samples[n])
            rows.append(row)
        sizes = {
            "dense_parameters": parameters(models["dense"]),
            "moe_parameters": parameters(models["moe"]),
            "moe_active_parameters": parameters(models["moe"], active=args.top_k),
        }
    return {"settings": vars(args), **sizes, "machine": machine(), "results": rows}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def markdown(report: dict) -> str:
    a = report["settings"]
    head = (f"d_model {a['d_model']}, {a['layers']} layers, {a['experts']} experts of {a['expert_dim']}, top {a['top_k']}"
            f" (dense: SwiGLU of {a['top_k'] * a['expert_dim']}); parameters: dense {report['dense_parameters']:,}, "
            f"MoE {report['moe_parameters']:,} ({report['moe_active_parameters']:,} active); {a['dtype']}, "
            f"{a['threads']} thread(s), {report['machine']['cpu']}, torch {report['machine']['torch']}")
    lines = [head, "", "| tokens per forward | dense, same active parameters (ms) | sparse MoE (ms) | MoE / dense | "
             "every expert on every token (ms) | all experts / MoE |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["results"]:
        d, m, e = r["dense_cpu_ms"], r["moe_cpu_ms"], r["all_experts_cpu_ms"]
        lines.append(f"| {r['tokens']} | {d:.2f} | {m:.2f} | {m / d:.2f} | {e:.2f} | {e / m:.2f} |")
    lines.append("")
    lines.append("CPU time per forward (median of interleaved repeats; wall time in the JSON report).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlm.tools.moe_bench", description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--expert-dim", type=int, default=256, help="hidden size of each expert (dense: top_k times it)")
    p.add_argument("--tokens", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64, 256, 1024],
                   help="canvas lengths, comma-separated (default 16,64,256,1024)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", metavar="FILE")
    args = p.parse_args(argv)
    for name in ("d_model", "layers", "heads", "experts", "top_k", "expert_dim", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.top_k > args.experts or args.d_model % args.heads or min(args.tokens) < 1:
        p.error("need top_k <= experts, heads dividing d_model and positive token counts")
    report = run(args)
    print(markdown(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
