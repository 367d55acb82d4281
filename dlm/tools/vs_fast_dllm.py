"""Side by side with the original Fast-dLLM code: same checkpoint, same prompts, interleaved, one thread each.

``python -m dlm.tools.vs_fast_dllm --fast-dllm PATH`` runs the LLaDA generators of a local Fast-dLLM checkout
(``llada/generate.py``: ``generate_with_prefix_cache`` / ``generate_with_dual_cache`` / ``generate``, with that
checkout's own ``llada/model/modeling_llada.py``; Wu et al., 2025, arXiv 2505.22618, github:NVlabs/Fast-dLLM)
against ``dlm``'s ``blockwise`` + ``low_confidence`` (or ``threshold``) + ``prefix`` / ``dual`` / ``none``
pipeline on one random-weight checkpoint in LLaDA's layout, and prints per policy and prompt length the
CPU-time and wall-time ratios (reference / dlm, so above 1 means dlm is faster) and whether tokens and NFE are
identical. Nothing is vendored or downloaded: the user gives the checkout (``git clone`` or ``git archive`` of
any version; its ``modeling_llada.py`` imports ``einops``, which must be importable, e.g. through
``--pythonpath``).

Method (docs/benchmarks.md): one process, torch limited to ``--threads`` (1 by default); per policy and prompt
one warm-up generation of each side, then ``--repeats`` repeats interleaved (reference, dlm, reference, …);
process CPU time and wall time are recorded per generation and the minimum and median are reported. The
checkpoint's output-head row of MASK is zeroed so that no position's argmax is MASK (the original loops would
otherwise never finish a block, docs/fidelity.md "MASK proposals"); the shape defaults to LLaDA-8B's
proportions scaled down (d_model 512, 6 layers, 8 heads, SwiGLU 3 × d_model, vocabulary 4096).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

POLICIES = ("none", "prefix", "dual")
REFERENCE_GENERATORS = {"none": "generate", "prefix": "generate_with_prefix_cache", "dual": "generate_with_dual_cache"}


@dataclass
class Side:
    cpu_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)


@dataclass
class Row:
    policy: str
    prompt_length: int
    reference: Side
    dlm: Side
    same_tokens: bool
    reference_nfe: int
    dlm_nfe: int
    reference_flops: int = 0
    dlm_flops: int = 0
    agreement: float = 1.0  # share of generated positions where the tokens are equal (the lowest repeat)
    dlm_other: Side | None = None  # dlm at --also-dtype, interleaved with the others
    same_tokens_other: bool | None = None

    def ratios(self) -> dict[str, float]:
        """reference / dlm over the minimum (and median) times: above 1 means dlm is faster."""
        out = {}
        for kind in ("cpu_s", "wall_s"):
            ref, own = getattr(self.reference, kind), getattr(self.dlm, kind)
            out[f"{kind[:-2]}_min"] = min(ref) / min(own)
            out[f"{kind[:-2]}_median"] = statistics.median(ref) / statistics.median(own)
        out["flops"] = self.reference_flops / self.dlm_flops if self.dlm_flops else float("nan")
        return out


def find_llada_dir(checkout: Path) -> Path:
    """The checkout's ``llada`` folder (the one holding ``generate.py`` and ``model/modeling_llada.py``)."""
    for candidate in (checkout / "llada", checkout):
        if (candidate / "generate.py").is_file() and (candidate / "model" / "modeling_llada.py").is_file():
            return candidate
    raise SystemExit(
        f"--fast-dllm {checkout}: no llada/generate.py and llada/model/modeling_llada.py there; give the root of a "
        "Fast-dLLM checkout (git clone https://github.com/NVlabs/Fast-dLLM) or its llada folder"
    )


def load_reference(llada_dir: Path, checkpoint: Path, dtype: torch.dtype):
    """The reference's generator module and its own model, filled from ``checkpoint`` without ``from_pretrained``
    (no remote code: its model file is imported from the user's checkout, its weights read with safetensors)."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(llada_dir))
    try:
        generators = importlib.import_module("generate")
        modeling = importlib.import_module("model.modeling_llada")
        configuration = importlib.import_module("model.configuration_llada")
    except ModuleNotFoundError as err:
        raise SystemExit(
            f"importing the reference from {llada_dir} failed: {err}. Its model file needs the package named "
            f"there (e.g. `pip install --target /tmp/fastdllm-lib einops` and pass --pythonpath /tmp/fastdllm-lib)"
        ) from err
    cfg = json.loads((checkpoint / "config.json").read_text())
    for key in ("architectures", "model_type", "auto_map"):
        cfg.pop(key, None)
    config = configuration.LLaDAConfig(**cfg)
    config.flash_attention = False
    config.use_cache = False  # transformers 5 no longer defines it on PretrainedConfig
    model = modeling.LLaDAModelLM(config, init_params=False)
    tensors = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if "rotary" not in m and "rope" not in m]
    if missing or unexpected:
        raise SystemExit(f"the reference model does not take the checkpoint: missing {missing}, unexpected {unexpected}")
    return generators, model.to(dtype).eval()


def write_checkpoint(directory: Path, args) -> Path:
    """A random LLaDA-layout checkpoint of the requested shape, with the MASK row of the output head zeroed."""
    from safetensors.torch import load_file, save_file

    from dlm.tools.checkpoints import make_llada_checkpoint

    make_llada_checkpoint(
        directory, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
        mlp_hidden_size=args.mlp or 3 * args.d_model, vocab_size=args.vocab,
        max_sequence_length=max(args.prompts) + args.gen + 8, seed=args.seed,
    )
    cfg = json.loads((directory / "config.json").read_text())
    for shard in directory.glob("*.safetensors"):
        tensors = load_file(str(shard))
        name = "model.transformer.ff_out.weight"
        if name in tensors:
            tensors[name][cfg["mask_token_id"]] = 0
            save_file(tensors, str(shard), metadata={"format": "pt"})
    return directory


def dlm_pipeline(checkpoint: Path, policy: str, args, dtype: str | None = None):
    from dlm import Pipeline

    decoding = {"name": "low_confidence"} if args.threshold is None else {"name": "threshold", "threshold": args.threshold}
    return Pipeline.from_config({
        "model": {"name": "llada", "path": str(checkpoint)},
        "iteration": {"name": "blockwise", "gen_length": args.gen, "block_length": args.block,
                      "steps": args.steps or args.gen},
        "decoding": decoding,
        "cache": {"name": policy},
        "dtype": dtype or args.dtype,
        "threads": args.threads,
    })


def count_flops(fn) -> int:
    """Floating-point operations of the matmuls and attention ``fn`` runs (torch's FlopCounterMode, with the CPU
    flash-attention kernel counted as 4·b·h·q·k·d): the work itself, which the machine's load cannot change."""
    from torch.utils.flop_counter import FlopCounterMode

    def cpu_flash(query, key, value, *args, out_val=None, **kwargs) -> int:  # receives shapes
        b, h, q, d = query
        return 4 * b * h * q * key[-2] * d

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def compare(policy: str, prompt: list[int], generators, reference, pipe, args, mask_id: int, other=None) -> Row:
    gen = getattr(generators, REFERENCE_GENERATORS[policy])
    ids = torch.tensor([prompt])
    kwargs = dict(steps=args.steps or args.gen, gen_length=args.gen, block_length=args.block, temperature=0.0,
                  remasking="low_confidence", mask_id=mask_id)
    if args.threshold is not None:
        kwargs["threshold"] = args.threshold

    def run_reference():
        out = gen(reference, ids, **kwargs)
        x, nfe = out if isinstance(out, tuple) else (out, None)
        return x[0, len(prompt):].tolist(), nfe

    def run_dlm():
        out = pipe.generate(input_ids=[prompt])
        return out.generated[0].tolist(), int(out.nfe[0])

    def run_other():
        out = other.generate(input_ids=[prompt])
        return out.generated[0].tolist(), int(out.nfe[0])

    row = Row(policy, len(prompt), Side(), Side(), True, 0, 0)
    run_reference(), run_dlm()  # warm-up
    if other is not None:
        run_other()
        row.dlm_other, row.same_tokens_other = Side(), True
    row.reference_flops, row.dlm_flops = count_flops(run_reference), count_flops(run_dlm)
    for _ in range(args.repeats):
        (ref_tokens, ref_nfe), cpu, wall = timed(run_reference)
        row.reference.cpu_s.append(cpu), row.reference.wall_s.append(wall)
        (own_tokens, own_nfe), cpu, wall = timed(run_dlm)
        row.dlm.cpu_s.append(cpu), row.dlm.wall_s.append(wall)
        row.same_tokens &= ref_tokens == own_tokens
        row.agreement = min(row.agreement, sum(a == b for a, b in zip(ref_tokens, own_tokens)) / max(1, len(own_tokens)))
        row.reference_nfe, row.dlm_nfe = ref_nfe if ref_nfe is not None else -1, own_nfe
        if other is not None:
            (other_tokens, _), cpu, wall = timed(run_other)
            row.dlm_other.cpu_s.append(cpu), row.dlm_other.wall_s.append(wall)
            row.same_tokens_other &= other_tokens == own_tokens
        print(f"  {policy:6s} prompt {len(prompt):4d}: reference {cpu_fmt(row.reference.cpu_s[-1])} "
              f"dlm {cpu_fmt(row.dlm.cpu_s[-1])} (CPU s)", file=sys.stderr, flush=True)
    return row


def cpu_fmt(s: float) -> str:
    return f"{s:7.2f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| policy | prompt | Fast-dLLM CPU s (min) | dlm CPU s (min) | ratio, CPU time (min / median) "
        "| ratio, wall time (min / median) | GFLOP (ref / dlm) | ratio, FLOP | same tokens | NFE (ref / dlm) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        r = row.ratios()
        lines.append(
            f"| {row.policy} | {row.prompt_length} | {min(row.reference.cpu_s):.2f} | {min(row.dlm.cpu_s):.2f} "
            f"| **{r['cpu_min']:.2f}×** / {r['cpu_median']:.2f}× | {r['wall_min']:.2f}× / {r['wall_median']:.2f}× "
            f"| {row.reference_flops / 1e9:.1f} / {row.dlm_flops / 1e9:.1f} | {r['flops']:.2f}× "
            f"| {'yes' if row.same_tokens else f'NO ({row.agreement:.0%} of positions)'} "
            f"| {row.reference_nfe} / {row.dlm_nfe} |"
        )
    others = [row for row in rows if row.dlm_other is not None]
    if others:
        lines += [
            "",
            "| policy | prompt | dlm CPU s (min), --dtype | dlm CPU s (min), --also-dtype | ratio, CPU time (min) "
            "| same tokens as --dtype |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for row in others:
            lines.append(
                f"| {row.policy} | {row.prompt_length} | {min(row.dlm.cpu_s):.2f} | {min(row.dlm_other.cpu_s):.2f} "
                f"| **{min(row.dlm_other.cpu_s) / min(row.dlm.cpu_s):.2f}×** | {'yes' if row.same_tokens_other else 'no'} |"
            )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dlm.tools.vs_fast_dllm", description=__doc__.split("\n\n")[0])
    p.add_argument("--fast-dllm", type=Path, required=True, help="local Fast-dLLM checkout (root or its llada folder)")
    p.add_argument("--pythonpath", type=Path, action="append", default=[],
                   help="extra import path for the reference's own dependencies (einops)")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=["prefix", "dual"])
    p.add_argument("--prompts", nargs="+", type=int, default=[128, 512], help="prompt lengths (random tokens)")
    p.add_argument("--gen", type=int, default=256, help="generated tokens")
    p.add_argument("--block", type=int, default=32, help="block length")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: gen, one token per step)")
    p.add_argument("--threshold", type=float, default=None, help="Fast-dLLM's confidence threshold instead of top-k")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--mlp", type=int, default=None, help="SwiGLU width (default 3 × d_model, LLaDA-8B's ratio)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float64"), default="float32")
    p.add_argument("--also-dtype", choices=("float32", "bfloat16", "float64"), default=None,
                   help="also time dlm in this dtype, interleaved (e.g. --dtype bfloat16 --also-dtype float32)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, default=None, help="write/reuse the random checkpoint here")
    p.add_argument("--json-out", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for extra in args.pythonpath:
        sys.path.insert(0, str(extra))
    if args.gen % args.block:
        raise SystemExit(f"--gen {args.gen} is not a multiple of --block {args.block}")
    torch.set_num_threads(args.threads)
    llada_dir = find_llada_dir(args.fast_dllm)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(prefix="vs-fast-dllm-") as tmp:
        checkpoint = args.checkpoint or Path(tmp) / "ckpt"
        if not (checkpoint / "config.json").is_file():
            write_checkpoint(checkpoint, args)
        mask_id = json.loads((checkpoint / "config.json").read_text())["mask_token_id"]
        generators, reference = load_reference(llada_dir, checkpoint, dtype)
        rows = []
        for length in args.prompts:
            g = torch.Generator().manual_seed(args.seed + length)
            prompt = torch.randint(6, args.vocab, (length,), generator=g).tolist()
            for policy in args.policies:
                pipe = dlm_pipeline(checkpoint, policy, args)
                other = dlm_pipeline(checkpoint, policy, args, args.also_dtype) if args.also_dtype else None
                rows.append(compare(policy, prompt, generators, reference, pipe, args, mask_id, other))
    print(table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "torch": torch.__version__,
            "rows": [{**asdict(r), "ratios": r.ratios()} for r in rows],
        }, indent=2, default=str))
    return 0 if all(r.same_tokens and r.reference_nfe in (r.dlm_nfe, -1) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
