"""Throughput of ``dlm serve`` with batching against one request at a time, side by side.

Starts two servers on loopback ports, the same pipeline in each, one with ``--max-batch-size 1`` and one
with ``--max-batch-size N``; sends the same requests from ``--clients`` concurrent clients to each, in
interleaved passes (A, B, A, B, ...), and prints medians: wall time, requests/s, tokens/s, latency, the
mean rows per batch, the speed-up, and whether both servers gave the same answers (batching must never
change one). Example (the embedded demo model, 64 requests from 16 clients):

    python -m dlm.tools.serve.bench --clients 16 --requests 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from dlm.tools.tasks import TASKS


@dataclass
class Pass:
    seconds: float
    tokens: int
    latencies: list[float]
    answers: list[str]


class Server:
    """``dlm serve`` in a child process on a free loopback port; stopped with :meth:`stop`."""

    def __init__(self, args: argparse.Namespace, max_batch_size: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "dlm", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--max-batch-size", str(max_batch_size), "--max-queue", str(args.requests), "--log-level", "warning",
               "--model-name", "bench", "--set", f"threads={args.threads}"]
        if args.config:
            cmd += ["--config", args.config]
        for item in args.overrides:
            cmd += ["--set", item]
        self.max_batch_size = max_batch_size
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server with max batch {self.max_batch_size} exited ({self.proc.returncode})")
            try:
                if self.health()["status"] == "ok":
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError(f"the server on port {self.port} did not answer within {timeout} s")

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=10) as r:
            return json.loads(r.read())

    def complete(self, prompt: str, max_tokens: int | None) -> tuple[str, int, float]:
        body = {"model": "bench", "prompt": prompt}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        req = urllib.request.Request(f"{self.url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as r:
            out = json.loads(r.read())
        return out["choices"][0]["text"], out["usage"]["completion_tokens"], time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def prompts(n: int, seed: int) -> list[str]:
    """``n`` held-out prompts of the demo tasks, in a fixed mixed order."""
    per_task = [t.examples(n, seed=seed) for t in TASKS.values()]
    mixed = [ex.prompt for group in zip(*per_task) for ex in group]
    return mixed[:n]


def run_pass(server: Server, work: list[str], clients: int, max_tokens: int | None) -> Pass:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: server.complete(p, max_tokens), work))
    seconds = time.perf_counter() - t0
    return Pass(seconds, sum(r[1] for r in results), [r[2] for r in results], [r[0] for r in results])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlm.tools.serve.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="pipeline YAML (default: the embedded demo pipeline)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--requests", type=int, default=64, help="requests per pass (default 64)")
    p.add_argument("--max-batch-size", type=int, default=16, help="rows per batch of the batching server (16)")
    p.add_argument("--max-tokens", type=int, help="max_tokens of every request (default: the config's gen_length)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per server, interleaved (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts")
    p.add_argument("--json-out", metavar="FILE", help="write the settings and figures as JSON")
    args = p.parse_args(argv)
    work = prompts(args.requests, args.seed)
    servers = [Server(args, 1), Server(args, args.max_batch_size)]
    try:
        for s in servers:
            s.wait()
            run_pass(s, work[: args.clients], args.clients, args.max_tokens)  # warm-up
        passes: dict[int, list[Pass]] = {s.max_batch_size: [] for s in servers}
        for _ in range(args.repeats):
            for s in servers:
                passes[s.max_batch_size].append(run_pass(s, work, args.clients, args.max_tokens))
        stats = {s.max_batch_size: s.health() for s in servers}
    finally:
        for s in servers:
            s.stop()
    rows = []
    base = statistics.median(x.seconds for x in passes[1])
    for size, ps in passes.items():
        wall = statistics.median(x.seconds for x in ps)
        st = stats[size]
        rows.append({
            "max_batch_size": size, "requests": len(work), "clients": args.clients, "wall_s": round(wall, 3),
            "requests_per_s": round(len(work) / wall, 1), "tokens_per_s": round(ps[0].tokens / wall, 1),
            "mean_latency_s": round(statistics.median(statistics.mean(x.latencies) for x in ps), 3),
            "rows_per_batch": round(st["rows"] / max(st["batches"], 1), 2), "speed_up": round(base / wall, 2),
        })
    same = sum(a == b for a, b in zip(passes[1][0].answers, passes[args.max_batch_size][0].answers)) / len(work)
    print(f"dlm serve throughput: {len(work)} requests from {args.clients} concurrent clients, "
          f"{args.repeats} interleaved passes, medians; threads {args.threads}; torch {torch.__version__}")
    print()
    print("| server | requests/s | completion tokens/s | wall s | mean latency s | rows per batch | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = "one request at a time" if r["max_batch_size"] == 1 else f"batching (max {r['max_batch_size']} rows)"
        print(f"| {label} | {r['requests_per_s']} | {r['tokens_per_s']} | {r['wall_s']} | {r['mean_latency_s']} "
              f"| {r['rows_per_batch']} | {r['speed_up']:.2f}x |")
    print()
    print(f"same answers from both servers: {same:.1%}")
    if args.json_out:
        from dlm.config import default_config_path, load_config
        from dlm.provenance import provenance

        cfg = load_config(args.config or default_config_path(), args.overrides)
        machine = {**provenance(device=cfg.run.device, dtype=cfg.run.dtype), "server_threads": args.threads,
                   "tokens_counted": "completion tokens (usage.completion_tokens): generated, never the prompt"}
        with open(args.json_out, "w") as f:
            json.dump({"settings": vars(args), "machine": machine, "rows": rows, "same_answers": same}, f, indent=2)
    return 0 if same == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
