"""Throughput of ``dlm serve``, two servers side by side on loopback ports, in one of two modes.

**Arrivals** (``--arrivals poisson``): continuous batching against static batching. Starts a server for each
batching mode (the same pipeline, the same ``--max-batch-size``), sends each the same seeded stream of
requests (``--requests N`` prompts of the demo tasks, Poisson arrivals at ``--rate R`` requests/s, each with
its own seed; streamed, so the time to the first token is seen), and ends with one JSON line holding, per
mode, throughput (requests/s and generated tokens/s), p50/p99 latency and time to first token (medians over
``--repeats`` interleaved passes), plus ``speedup`` (continuous over static throughput, the median of the
passes' ratios) and ``identical_answers`` (every answer equal across the
modes and to what the prompt gives alone, computed here with :meth:`Pipeline.generate`). Without ``--rate``
it measures static batching's capacity first and sends at twice that rate, which saturates it::

    python -m dlm.tools.serve.bench --arrivals poisson --requests 200 --seed 0 --compare

**Clients** (the default): batching against one request at a time. ``--clients`` concurrent clients send the
same requests to a server with ``--max-batch-size 1`` and one with ``--max-batch-size N`` in interleaved
passes, and the medians are printed as a table::

    python -m dlm.tools.serve.bench --clients 16 --requests 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import statistics
import subprocess
import sys
import threading
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

    def __init__(self, args: argparse.Namespace, max_batch_size: int, batching: str = "continuous") -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "dlm", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--max-batch-size", str(max_batch_size), "--max-queue", str(args.requests), "--log-level", "warning",
               "--model-name", "bench", "--set", f"threads={args.threads}", "--batching", batching]
        if args.config:
            cmd += ["--config", args.config]
        for item in args.overrides:
            cmd += ["--set", item]
        self.max_batch_size, self.batching = max_batch_size, batching
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

    def stream(self, prompt: str, seed: int, max_tokens: int | None) -> tuple[str, int, float, float]:
        """One streamed completion: its text, completion tokens, time to first token and latency (seconds)."""
        body = {"model": "bench", "prompt": prompt, "seed": seed, "stream": True,
                "stream_options": {"include_usage": True}}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        req = urllib.request.Request(f"{self.url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        text, tokens, first = "", 0, None
        with urllib.request.urlopen(req, timeout=600) as r:
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                for choice in chunk.get("choices") or []:
                    if choice.get("text"):
                        text += choice["text"]
                        first = first if first is not None else time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        latency = time.perf_counter() - t0
        return text, tokens, latency if first is None else first, latency

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


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Send times (seconds from the start) of ``n`` Poisson arrivals at ``rate`` per second."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def send_stream(server: Server, work: list[str], seeds: list[int], times: list[float],
                max_tokens: int | None) -> dict:
    """Send ``work[i]`` at ``times[i]``; figures of the whole stream and every answer."""
    results: list = [None] * len(work)

    def one(i: int, start: float) -> None:
        delay = start + times[i] - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        results[i] = server.stream(work[i], seeds[i], max_tokens)

    start = time.perf_counter() + 0.05
    threads = [threading.Thread(target=one, args=(i, start), daemon=True) for i in range(len(work))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    latencies = sorted(r[3] for r in results)
    ttft = sorted(r[2] for r in results)
    tokens = sum(r[1] for r in results)
    return {
        "requests_per_s": round(len(work) / wall, 3), "tokens_per_s": round(tokens / wall, 2),
        "p50_latency_s": round(_quantile(latencies, 0.5), 4), "p99_latency_s": round(_quantile(latencies, 0.99), 4),
        "p50_ttft_s": round(_quantile(ttft, 0.5), 4), "p99_ttft_s": round(_quantile(ttft, 0.99), 4),
        "wall_s": round(wall, 3), "generated_tokens": tokens, "answers": [r[0] for r in results],
    }


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def static_capacity(server: Server, work: list[str], batch: int, max_tokens: int | None) -> float:
    """Requests/s static batching serves with its queue full: a burst of ``2·batch`` requests at once."""
    burst = work[: 2 * batch]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(burst)) as pool:
        list(pool.map(lambda p: server.complete(p, max_tokens), burst))
    return len(burst) / (time.perf_counter() - t0)


def alone_answers(args: argparse.Namespace, work: list[str], seeds: list[int]) -> list[str]:
    """What each prompt gives by itself with its seed (the pipeline of the servers, in this process)."""
    from dlm.config import default_config_path
    from dlm.pipeline import Pipeline

    pipe = Pipeline.from_yaml(args.config or default_config_path(), overrides=list(args.overrides))
    out = []
    for prompt, seed in zip(work, seeds):
        if args.max_tokens is not None:
            raise SystemExit("--compare with --max-tokens is not supported: the alone answers use the config's "
                             "gen_length; leave --max-tokens out")
        out.append(pipe.generate(prompts=[prompt], seeds=[seed]).texts[0])
    return out


def _median(runs: list[dict]) -> dict:
    """Per figure, the median over the passes of one mode."""
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0] if k != "answers"}


def arrivals(args: argparse.Namespace) -> int:
    repeats = args.repeats or 1
    work = prompts(args.requests, args.seed)
    seeds = [args.seed + i for i in range(len(work))]
    servers = {mode: Server(args, args.max_batch_size, mode) for mode in ("continuous", "static")}
    figures: dict[str, dict] = {}
    try:
        for s in servers.values():
            s.wait()
            run_pass(s, work[: args.max_batch_size], args.max_batch_size, args.max_tokens)  # warm-up
        rate = args.rate
        if rate is None:
            rate = 2.0 * static_capacity(servers["static"], work, args.max_batch_size, args.max_tokens)
        times = arrival_times(len(work), rate, args.seed)
        passes: dict[str, list[dict]] = {mode: [] for mode in servers}
        for r in range(repeats):  # interleaved, the order alternating: A B, B A, ...
            for mode in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
                print(f"# {mode} (pass {r + 1}/{repeats}): {len(work)} requests, Poisson arrivals at {rate:.2f}/s",
                      file=sys.stderr, flush=True)
                passes[mode].append(send_stream(servers[mode], work, seeds, times, args.max_tokens))
        for mode, s in servers.items():
            figures[mode] = _median(passes[mode])
            figures[mode]["server"] = {k: v for k, v in s.health().items() if k != "status"}
    finally:
        for s in servers.values():
            s.stop()
    answers = [p["answers"] for ps in passes.values() for p in ps]
    same_modes = all(a == answers[0] for a in answers)
    alone = alone_answers(args, work, seeds) if args.compare else None
    same_alone = alone is None or answers[0] == alone
    ratios = [c["requests_per_s"] / s["requests_per_s"] for c, s in zip(passes["continuous"], passes["static"])]
    result = {
        "arrivals": "poisson", "rate": round(rate, 3), "requests": len(work), "seed": args.seed,
        "repeats": repeats, "max_batch_size": args.max_batch_size, "config": args.config or "default",
        "overrides": args.overrides, **figures,
        "speedup": round(statistics.median(ratios), 3), "speedups": [round(x, 3) for x in ratios],
        "identical_answers": bool(same_modes and same_alone),
        "machine": _machine(args),
    }
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0 if result["identical_answers"] else 1


def _machine(args: argparse.Namespace) -> dict:
    from dlm.config import default_config_path, load_config
    from dlm.provenance import provenance

    cfg = load_config(args.config or default_config_path(), args.overrides)
    return {**provenance(device=cfg.run.device, dtype=cfg.run.dtype), "server_threads": args.threads,
            "tokens_counted": "completion tokens (usage.completion_tokens): generated, never the prompt"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlm.tools.serve.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--arrivals", choices=["poisson"], help="send a Poisson stream to a continuous and a static "
                                                            "batching server (default: closed-loop clients)")
    p.add_argument("--rate", type=float, help="arrivals per second (default: twice static batching's capacity)")
    p.add_argument("--compare", action="store_true", help="also check every answer against its alone output")
    p.add_argument("--config", help="pipeline YAML (default: the embedded demo pipeline)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--requests", type=int, default=64, help="requests per pass (default 64)")
    p.add_argument("--max-batch-size", type=int, default=16, help="rows per batch of the batching server (16)")
    p.add_argument("--max-tokens", type=int, help="max_tokens of every request (default: the config's gen_length)")
    p.add_argument("--repeats", type=int, help="timed passes per server, interleaved (default 3 with clients, 1 with "
                                                "--arrivals; the figures are medians, speedup the median ratio)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts")
    p.add_argument("--json-out", metavar="FILE", help="write the settings and figures as JSON")
    args = p.parse_args(argv)
    for name in ("requests", "clients", "max_batch_size", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        p.error("--rate must be a positive number of requests per second")
    if args.arrivals:
        return arrivals(args)
    args.repeats = args.repeats or 3
    work = prompts(args.requests, args.seed)
    servers = [Server(args, 1, "static"), Server(args, args.max_batch_size, "static")]
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
        machine = _machine(args)
        with open(args.json_out, "w") as f:
            json.dump({"settings": vars(args), "machine": machine, "rows": rows, "same_answers": same}, f, indent=2)
    return 0 if same == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
