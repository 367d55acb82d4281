"""The prepared GPU benchmark runs its whole grid on CPU with the tiny shape (the path a GPU run takes)."""

from __future__ import annotations

import json

import torch

from dlm.tools import gpu_bench


def test_the_gpu_benchmark_runs_every_policy_and_reports_the_roofline(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    args = ["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--gen", "32", "--prompt-length", "8",
            "--peak-bandwidth", "0.5", "--json-out", str(out)]
    assert gpu_bench.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["cache"], r["decoding"]) for r in rows] == gpu_bench.POLICIES
    model = gpu_bench.build_model("tiny", torch.device("cpu"), torch.float32)
    for r in rows:
        assert r["nfe"] == 32 or r["decoding"] == "threshold"
        seconds_per_forward = r["ms_per_forward"] / 1000
        assert abs(r["roofline"] - gpu_bench.weight_bytes_per_forward(model) / seconds_per_forward / 0.5e12) < 1e-12
    assert "| 32 | dual | threshold |" in capsys.readouterr().out


def test_weight_bytes_count_the_blocks_and_the_head_but_not_the_embedding():
    model = gpu_bench.build_model("tiny", torch.device("cpu"), torch.bfloat16)
    s = gpu_bench.SHAPES["tiny"]
    per_layer = 4 * s.dim * s.dim + 3 * s.dim * s.ffn_dim + 2 * s.dim
    assert gpu_bench.weight_bytes_per_forward(model) == 2 * (s.n_layers * per_layer + s.vocab_out * s.dim + s.dim)
