"""A prepared GPU benchmark: an 8B-shaped random LLaDA-layout model in bf16, built on the device.

    python -m dlm.tools.gpu_bench                      # on a machine with an NVIDIA GPU, < 5 minutes
    python -m dlm.tools.gpu_bench --shape tiny --device cpu --gen 16   # the same code path on CPU

Runs ``none`` / ``prefix`` / ``dual`` × one token per step (``low_confidence``) / ``threshold`` 0.9, at
generation lengths 256 and 1024 (blocks of 32, a 128-token prompt, batch 1), and prints per run the tokens per
second, the milliseconds per forward and the fraction of the bandwidth roofline: the bytes of weights one
forward reads (every block and the output head; the embedding is a row lookup) divided by the time of a
forward and by the device's peak memory bandwidth (:data:`PEAK_BANDWIDTH`, or ``--peak-bandwidth``). At batch
1 a cached step is memory-bound, so this fraction is how close it runs to the hardware's limit; the refresh
forwards of a block are compute-bound, so the whole-run figure of ``prefix``/``dual`` sits a little below the
cached steps' own. No checkpoint file is read or written: the weights are random (LLaDA-8B's shapes, Nie et
al. 2025), so threshold decoding commits about one token per step and the text means nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from dlm.messages import ModelCapabilities
from dlm.models.layers import Transformer, TransformerSpec
from dlm.models.llada import LLaDAConfig, LLaDAModel

SHAPES = {
    # LLaDA-8B: d 4096, 32 layers, 32/32 heads, SwiGLU 12288, vocabulary 126464, untied head
    "8b": TransformerSpec(vocab_in=126464, vocab_out=126464, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                          ffn_dim=12288, norm_eps=1e-5, rope_theta=500000.0, max_length=4096),
    "tiny": TransformerSpec(vocab_in=256, vocab_out=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=128,
                            norm_eps=1e-5, rope_theta=10000.0, max_length=2048),
}
# peak HBM bandwidth in TB/s by device-name fragment (vendor specifications; first match wins)
PEAK_BANDWIDTH = {"H200": 4.8, "H100 PCIe": 2.0, "H100": 3.35, "H800": 3.35, "A100-SXM4-80GB": 2.039,
                  "A100 80GB PCIe": 1.935, "A100": 1.555}
POLICIES = [(cache, rule) for cache in ("none", "prefix", "dual") for rule in ("one-per-step", "threshold")]


def build_model(shape: str, device: torch.device, dtype: torch.dtype) -> LLaDAModel:
    """A random-weight LLaDA adapter of ``shape``, allocated and initialised on ``device`` (no files)."""
    spec = SHAPES[shape]
    torch.manual_seed(0)
    with torch.device(device):
        net = Transformer(spec).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    net = net.eval().requires_grad_(False)
    caps = ModelCapabilities(mask_id=spec.vocab_in - 128 if shape == "8b" else spec.vocab_in - 2,
                             eos_ids=(spec.vocab_in - 1,), max_length=spec.max_length, vocab_size=spec.vocab_in)
    return LLaDAModel(LLaDAConfig(), net, caps, tokenizer=None)


def weight_bytes_per_forward(model: LLaDAModel) -> int:
    """Bytes of the weights one forward streams: every block and the output head (not the embedding)."""
    net = model.net
    head = net.head.weight if net.head is not None else net.embed.weight
    blocks = sum(p.numel() * p.element_size() for p in net.blocks.parameters())
    return blocks + head.numel() * head.element_size() + net.norm.weight.numel() * net.norm.weight.element_size()


def peak_bandwidth(device: torch.device, override: float | None) -> float | None:
    """Peak memory bandwidth in TB/s: the override, else the table entry for the device's name."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def pipeline_for(model: LLaDAModel, cache: str, rule: str, gen: int, *, compile: bool, device: str):
    from dlm.pipeline import Pipeline

    decoding = {"name": "low_confidence"} if rule == "one-per-step" else {"name": "threshold", "threshold": 0.9}
    return Pipeline.from_config({
        "model": {"name": "llada"},
        "iteration": {"name": "blockwise", "gen_length": gen, "block_length": 32, "steps": gen},
        "decoding": decoding, "cache": {"name": cache}, "device": device, "compile": compile,
        "dtype": {torch.bfloat16: "bfloat16", torch.float32: "float32"}[model.dtype],
    }, model=model)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = build_model(args.shape, device, dtype)
    caps = model.capabilities
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, caps.mask_id, (args.prompt_length,), generator=g)
    bytes_fwd = weight_bytes_per_forward(model)
    bw = peak_bandwidth(device, args.peak_bandwidth)
    rows = []
    for gen in args.gen:
        for cache, rule in POLICIES:
            pipe = pipeline_for(model, cache, rule, gen, compile=args.compile, device=args.device)
            # warm-up (kernels, allocator, compiled shapes): the first block and one step of the second
            pipe.generate(input_ids=[prompt], trace=lambda state: state.cancel([0]) if state.block >= 1 else None)
            out = pipe.generate(input_ids=[prompt])
            seconds, nfe = out.seconds, out.nfe[0]
            ms = 1000 * seconds / max(nfe, 1)
            rows.append({
                "gen": gen, "cache": cache, "decoding": rule, "nfe": nfe, "seconds": seconds,
                "tokens_per_second": gen / seconds, "ms_per_forward": ms,
                "roofline": None if bw is None else bytes_fwd / (ms / 1000) / (bw * 1e12),
            })
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    roof = "n/a" if r["roofline"] is None else f"{100 * r['roofline']:.1f}%"
    return (f"| {r['gen']} | {r['cache']} | {r['decoding']} | {r['nfe']} | {r['tokens_per_second']:.1f} | "
            f"{r['ms_per_forward']:.2f} | {roof} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlm.tools.gpu_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="8b", help="model shape (tiny: a CPU smoke run)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--gen", type=int, nargs="+", default=[256, 1024], help="generation lengths (multiples of 32)")
    p.add_argument("--prompt-length", type=int, default=128)
    p.add_argument("--peak-bandwidth", type=float, metavar="TB/S", help="device peak memory bandwidth (TB/s); "
                   "default: looked up by device name (" + ", ".join(f"{k} {v}" for k, v in PEAK_BANDWIDTH.items()) + ")")
    p.add_argument("--compile", action="store_true", help="run with compile: true (CUDA graphs on cuda)")
    p.add_argument("--json-out", metavar="FILE", help="write the rows and the device as JSON")
    args = p.parse_args(argv)
    if any(g % 32 for g in args.gen):
        p.error("--gen values must be multiples of the block length, 32")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available (use --shape tiny --device cpu for a smoke run)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; shape {args.shape}, {args.dtype}, compile {args.compile}")
    print("| gen | cache | decoding | NFE | tokens/s | ms / forward | bandwidth roofline |")
    print("|---:|---|---|---:|---:|---:|---:|")
    t0 = time.perf_counter()
    rows = run(args)
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"device": name, "shape": args.shape, "dtype": args.dtype, "compile": args.compile,
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
