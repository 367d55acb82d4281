"""``python -m dlm.tools.serve.bench --arrivals poisson``: live servers for both batching modes, one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="dlm serve needs the [serve] extra: pip install -e '.[test,serve]'")


def test_poisson_arrivals_compare_continuous_and_static_batching_and_end_with_one_json_line(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "dlm.tools.serve.bench", "--arrivals", "poisson", "--rate", "40", "--requests", "6",
         "--seed", "3", "--max-batch-size", "4", "--repeats", "2", "--compare", "--json-out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last == json.loads(out.read_text())
    assert last["identical_answers"] is True  # every answer equal across modes and to its alone output
    assert (last["requests"], last["rate"], last["arrivals"]) == (6, 40.0, "poisson")
    for mode in ("continuous", "static"):
        figures = last[mode]
        for key in ("requests_per_s", "tokens_per_s", "p50_latency_s", "p99_latency_s", "p50_ttft_s", "p99_ttft_s"):
            assert figures[key] > 0, (mode, key)
        assert figures["p50_latency_s"] <= figures["p99_latency_s"]
        assert figures["p50_ttft_s"] <= figures["p50_latency_s"] + 1e-9
        assert figures["server"]["batching"] == mode
    assert last["repeats"] == 2 and len(last["speedups"]) == 2  # interleaved passes, the median ratio reported
    assert last["speedup"] == pytest.approx(sum(last["speedups"]) / 2, abs=1e-3)
    assert last["machine"]["dlm"] and last["machine"]["torch"]
