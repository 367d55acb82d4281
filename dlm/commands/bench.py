"""Benchmark pipeline configurations side by side: NFE, tokens per forward, tokens/s, wall time, speed-up.

Every configuration runs in the same process on the same prompts: warm-up, then interleaved repeats
(A, B, C, A, B, C, ...), medians over the repeats; the speed-up is against the first configuration.
Example (random-weight ~35M-parameter LLaDA-layout model, written once to a cache directory):

    dlm bench examples/none.yaml examples/prefix.yaml examples/dual.yaml --random-model default

and, on a random Qwen2-layout model, causal decoders against autoregressive decoding:

    dlm bench examples/autoregressive.yaml examples/jacobi.yaml examples/wedlm.yaml --random-model family=qwen2

and a random LLaDA-MoE-layout model (sparse experts) under LLaDA-MoE's published settings:

    dlm bench examples/llada-moe.yaml --random-model family=llada_moe

and SDAR's remasking rules on a random SDAR-layout model (blocks of 4):

    dlm bench examples/sdar.yaml examples/sdar-static.yaml --random-model family=sdar

and a random LLaDA2-layout model (BailingMoeV2), LLaDA2.0's decoding against LLaDA2.1's token editing:

    dlm bench examples/llada2.yaml examples/llada2.1-editing.yaml --random-model family=llada2

and MDLM's teacher against DiDi-Instruct's 16-step student schedule on a random MDLM-layout DiT:

    dlm bench examples/mdlm-owt.yaml examples/didi-instruct.yaml --random-model family=mdlm,max_sequence_length=1024 \
        --prompt-length 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MAX_PROMPTS = 100_000  # random prompts are built in memory before the timing starts
MAX_REPEATS = 1000

HELP = "time several pipeline configs side by side (NFE, tokens/s, speed-up)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="pipeline YAML files; the first is the baseline")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting in every config, e.g. --set iteration.gen_length=1024 (repeatable)",
    )
    p.add_argument("--label", dest="labels", action="append", default=None,
                   help="name of each config in the table (repeat once per config; default: file names)")
    g = p.add_argument_group("prompts")
    g.add_argument("--prompts", type=int, default=1, metavar="N", help="random prompts to generate for (default 1)")
    g.add_argument("--prompt-length", type=int, default=128, metavar="T",
                   help="tokens per random prompt (128; 0: unconditional samples, for models that need no prompt)")
    g.add_argument("--prompts-file", metavar="FILE", help="text prompts, one per line, instead of random tokens")
    g.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (default 1, as the paper)")
    g.add_argument("--prompt-seed", type=int, default=0, help="seed of the random prompts")
    m = p.add_argument_group("model")
    m.add_argument(
        "--random-model", metavar="SPEC", nargs="?", const="default",
        help="use a random-weight checkpoint instead of each config's model.path, e.g. "
             "'d_model=512,n_layers=8,n_heads=8,mlp_hidden_size=1536,vocab_size=8192' (bare flag or 'default': "
             "those sizes, ~35M parameters, LLaDA's layout); 'family=qwen2' writes Qwen2's layout (for the "
             "qwen2 and wedlm adapters); 'family=llada_moe' LLaDA-MoE's (n_experts=8, top_k=2 experts per "
             "token, each mlp_hidden_size/top_k wide), 'family=llada2' LLaDA2's (the same sizes, group-limited "
             "routing), 'family=sdar' SDAR's, 'family=mdlm' MDLM's DiT; written once under --model-cache",
    )
    m.add_argument("--model-cache", metavar="DIR", help="where random checkpoints are kept "
                                                         "(default $DLM_CACHE or ~/.cache/dlm/random-models)")
    m.add_argument("--threads", type=int, help="torch CPU threads, the run setting `threads` of every config "
                                                "(default: the configs' own, else half the cores)")
    t = p.add_argument_group("timing")
    t.add_argument("--repeats", type=int, default=3, help="timed interleaved passes per config (default 3)")
    t.add_argument("--warmup", type=int, default=1, help="untimed warm-up generations per config (default 1)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    o = p.add_argument_group("output")
    o.add_argument("--json-out", metavar="FILE", help="write settings, machine and figures as JSON")
    o.add_argument("--md-out", metavar="FILE", help="write the markdown table (it is printed too)")


def run(args: argparse.Namespace) -> int:

    from dlm.commands import check_at_most, check_output, check_positive, check_seed
    from dlm.config import MAX_THREADS
    from dlm.errors import InputError
    from dlm.models.checkpoint import MAX_CONTEXT
    from dlm.tools import benchmark as bm
    from dlm.tools import random_model as rm

    check_positive(**{"--threads": args.threads, "--batch-size": args.batch_size, "--repeats": args.repeats,
                      "--prompts": args.prompts})
    if args.prompt_length < 0:
        raise InputError(f"--prompt-length must be 0 (unconditional samples) or more, got {args.prompt_length}")
    check_at_most(**{"--prompts": (args.prompts, MAX_PROMPTS), "--batch-size": (args.batch_size, MAX_PROMPTS),
                     "--prompt-length": (args.prompt_length, MAX_CONTEXT), "--repeats": (args.repeats, MAX_REPEATS),
                     "--warmup": (args.warmup, MAX_REPEATS), "--threads": (args.threads, MAX_THREADS)})
    check_seed(**{"--prompt-seed": args.prompt_seed})
    if args.warmup < 0:
        raise InputError(f"--warmup must be 0 or more, got {args.warmup}")
    for flag, path in (("--json-out", args.json_out), ("--md-out", args.md_out)):
        if path:
            check_output(path, flag, directory=False)
    if args.model_cache:
        check_output(args.model_cache, "--model-cache", directory=True)
    if args.labels and len(args.labels) != len(args.configs):
        raise InputError(f"--label given {len(args.labels)} times for {len(args.configs)} configs")
    if args.labels and len(set(args.labels)) != len(args.labels):
        twice = next(x for x in args.labels if args.labels.count(x) > 1)
        raise InputError(f"--label {twice!r} is given twice; the labels name the rows of the table, so they must differ")
    overrides = list(args.overrides)
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    model_spec = None
    if args.random_model is not None:
        model_spec = rm.parse_model_spec(args.random_model)
        ckpt = rm.random_checkpoint(model_spec, args.model_cache)
        overrides = [f"model.path={ckpt}", *overrides]
    entries = bm.build_entries(args.configs, overrides, labels=args.labels)
    first = entries[0].pipeline
    if args.prompts_file:
        prompts = bm.read_prompts_file(args.prompts_file)
        if first.model.tokenizer is None:
            raise InputError("the model has no tokenizer, so --prompts-file cannot be used; use random prompts")
    else:
        caps = first.model.capabilities
        for entry in entries:  # before any prompt is built: a prompt that cannot fit is refused, not truncated
            gen = getattr(entry.config.iteration.config, "gen_length", 0) or 0
            room = entry.pipeline.model.capabilities.max_length - gen
            if args.prompt_length > room:
                raise InputError(
                    f"--prompt-length {args.prompt_length} does not fit {entry.label}: the model's context is "
                    f"{entry.pipeline.model.capabilities.max_length} tokens and gen_length {gen}, leaving {room}; "
                    f"give --prompt-length {max(room, 1)} or less"
                )
        vocab = caps.vocab_size if caps.vocab_size is not None else first.model.net.spec.vocab_in
        prompts = rm.random_prompts(
            args.prompts, args.prompt_length, vocab,
            avoid=(caps.mask_id, *caps.eos_ids), seed=args.prompt_seed,
        )
    import torch

    from dlm.distributed import init, shard, world

    run_settings = entries[0].config.run
    w = world(run_settings.tensor_parallel, run_settings.expert_parallel)
    if w.size > 1:
        init(torch.device(run_settings.device))
    if len(prompts) < w.dp_size:
        raise InputError(f"{len(prompts)} prompts for {w.dp_size} data-parallel processes; give --prompts {w.dp_size} or more")
    bm.run_benchmark(
        entries, shard(prompts, w), repeats=args.repeats, warmup=args.warmup, batch_size=args.batch_size,
        progress=not args.no_progress and w.main,
    )
    bm.merge_shards(entries, w)
    if not w.main:
        return 0  # the first process prints and writes the merged figures
    settings = {
        "configs": [str(c) for c in args.configs],
        "overrides": list(args.overrides),
        "prompts": len(prompts),
        "prompt_length": None if args.prompts_file else args.prompt_length,
        "prompts_file": args.prompts_file,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "random_model": model_spec,
        "random_model_parameters": rm.count_parameters(model_spec) if model_spec else None,
        "random_model_active_parameters": rm.count_parameters(model_spec, active=True) if model_spec else None,
        "processes": w.size,
        "data_parallel": w.dp_size,
    }
    result = bm.report(entries, settings=settings)
    table = bm.markdown_table(result["results"])
    print(table)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if args.md_out:
        Path(args.md_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md_out).write_text(table + "\n")
    return 0
