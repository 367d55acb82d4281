"""Serve a pipeline over an OpenAI-compatible HTTP API (completions, chat completions, per-step streaming),
batching concurrent requests, with a page at / that shows the canvas denoising (docs/serving.md)."""

from __future__ import annotations

import argparse

from dlm.commands import add_config_arguments, default_config_path

HELP = "serve a pipeline over an OpenAI-compatible HTTP API (needs the [serve] extra)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--model-name", help="the model id clients send (default: the checkpoint folder's name)")
    p.add_argument("--max-batch-size", type=int, default=16, help="rows per batched generation (default 16)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for the model before new ones get 429 (default 64)")
    p.add_argument("--max-tokens", type=int, help="the largest max_tokens a request may ask (default: the context)")
    p.add_argument("--batching", choices=["continuous", "static"], default="continuous",
                   help="continuous: requests join running generations at step boundaries (default); "
                        "static: one batch at a time")
    p.add_argument("--memory-budget", type=memory_size, default=None, metavar="SIZE",
                   help="continuous batching: bytes the running and queued rows may take (KV buffers and logits), "
                        "e.g. 2GiB or 512MiB; beyond it requests get 429 (default: a quarter of the machine's "
                        "memory, or of the GPU's)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def check_listen(host: str, port: int) -> None:
    """Refuse a ``--port`` or ``--host`` the server could not listen on, before the model is loaded: a port
    outside 1-65535 (or in use), a host name that does not resolve, an address not on this machine."""
    import errno
    import socket

    from dlm.errors import InputError

    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is not a TCP port; give 1 to 65535 (or 0: any free port)")
    if not host or any(c.isspace() for c in host):
        raise InputError(f"--host {host!r} is not an address; give an IP address or host name, e.g. 127.0.0.1 or "
                         "0.0.0.0 (every interface)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise InputError(f"--host {host!r} does not resolve to an address of this machine ({err}); give an IP "
                         "address such as 127.0.0.1 or 0.0.0.0, or a host name this machine resolves") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            why = {errno.EADDRINUSE: f"port {port} is already in use: stop what listens there or give another "
                                     "--port",
                   errno.EACCES: f"port {port} needs more privileges: give a port of 1024 or more",
                   errno.EADDRNOTAVAIL: f"{host} is not an address of this machine: give one of its addresses "
                                        "or 0.0.0.0"}.get(err.errno, err.strerror or str(err))
            raise InputError(f"cannot listen on {host}:{port}: {why}") from None


def run(args: argparse.Namespace) -> int:
    from dlm.commands import check_positive
    from dlm.errors import DlmError

    check_positive(**{"--max-batch-size": args.max_batch_size, "--max-queue": args.max_queue,
                      "--max-tokens": args.max_tokens})
    check_listen(args.host, args.port)  # before the model is loaded: minutes for an 8B model

    try:
        import uvicorn

        from dlm.tools.serve.app import create_app, default_model_name
    except ImportError as err:
        missing = f"{err.name} is missing"
        raise DlmError(f"dlm serve needs FastAPI and uvicorn ({missing}): pip install 'dlm[serve]'") from err
    from dlm.pipeline import Pipeline

    pipeline = Pipeline.from_yaml(args.config or default_config_path(), overrides=args.overrides)
    budget = args.memory_budget if args.memory_budget is not None else default_memory_budget(pipeline)
    app = create_app(
        pipeline, model_name=args.model_name, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
        max_tokens=args.max_tokens, batching=args.batching, memory_budget=budget,
    )
    name = args.model_name or default_model_name(pipeline)
    print(f"dlm serve: model {name!r} on http://{args.host}:{args.port} (open it in a browser to watch the canvas)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def memory_size(text: str) -> int:
    """Bytes from ``2GiB``, ``512MiB``, ``1e9`` or ``1000000``."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size; write for example 2GiB, 512MiB or 1e9")
    return int(float(m.group(1)) * _UNITS[unit])


def default_memory_budget(pipeline) -> int:
    """A quarter of the GPU's memory on CUDA, of the machine's memory on CPU."""
    import os

    import torch

    device = pipeline.model.device
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
