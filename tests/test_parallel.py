"""Several processes on CPU with gloo: tensor parallelism gives one process's tokens, data parallelism its
results (docs/scaling.md). Each test makes one torchrun launch of two processes, with a timeout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlm.cli import main
from dlm.errors import CompositionError
from dlm.models.layers import TransformerSpec
from dlm.models.parallel import tp_problem
from tests.conftest import pipeline_config

WORKER = Path(__file__).parent / "workers" / "torchrun_cli.py"
CACHES = ("none", "prefix", "dual")


def torchrun(out: Path, *commands: str, processes: int = 2, timeout: int = 240) -> None:
    """Run ``dlm`` command lines in one launch of ``processes`` processes; fail with their output if it fails."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", str(processes), str(WORKER), str(out), *commands],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def one_process(capsys, line: str) -> str:
    capsys.readouterr()
    assert main(line.split()) == 0
    return capsys.readouterr().out


def write_config(tmp_path: Path, ckpt: Path, cache: str) -> Path:
    cfg = pipeline_config(ckpt, cache={"name": cache}, threads=1)
    path = tmp_path / f"{cache}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tensor_parallel_over_two_processes_gives_the_tokens_of_one(tiny_ckpt, tmp_path, capsys):
    configs = [write_config(tmp_path, tiny_ckpt, c) for c in CACHES]
    lines = [f"generate --config {p} --json hello ab" for p in configs]
    torchrun(tmp_path, *(f"{line} --set tensor_parallel=2" for line in lines))
    for i, line in enumerate(lines):
        alone = json.loads(one_process(capsys, line))
        sharded = json.loads((tmp_path / f"{i}.out").read_text())
        assert [r["token_ids"] for r in sharded] == [r["token_ids"] for r in alone], CACHES[i]
        assert [r["nfe"] for r in sharded] == [r["nfe"] for r in alone]


def test_data_parallel_eval_and_bench_merge_to_the_results_of_one_process(tiny_ckpt, tmp_path, capsys):
    config = write_config(tmp_path, tiny_ckpt, "dual")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    evals = "eval {} --tasks add,rev -n 7 --batch-size 3 --quiet --out {}"
    bench = "bench {0} {0} --prompts 5 --prompt-length 4 --repeats 1 --warmup 0 --no-progress --json-out {1}"
    torchrun(tmp_path, evals.format(config, tmp_path / "two"), bench.format(config, tmp_path / "two" / "b.json"))
    one_process(capsys, evals.format(config, tmp_path / "one"))
    one_process(capsys, bench.format(config, tmp_path / "one" / "b.json"))

    def eval_results(d: Path):
        data = json.loads((d / "results.json").read_text())
        return [{k: v for k, v in r.items() if k not in {"seconds", "tokens_per_second"}} for r in data["results"]]

    assert eval_results(tmp_path / "two") == eval_results(tmp_path / "one")
    timing = {"tokens_per_second", "wall_seconds", "wall_seconds_all", "speedup"}
    two, one = (json.loads((tmp_path / d / "b.json").read_text()) for d in ("two", "one"))
    assert two["settings"]["data_parallel"] == 2
    assert [{k: v for k, v in r.items() if k not in timing} for r in two["results"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in one["results"]
    ]


def test_tensor_parallel_must_divide_the_kv_heads():
    spec = TransformerSpec(vocab_in=8, vocab_out=8, dim=64, n_layers=1, n_heads=8, n_kv_heads=2, ffn_dim=128,
                           norm_eps=1e-5, rope_theta=1e4, max_length=64)
    assert tp_problem(spec, 2) is None
    problem = tp_problem(spec, 4)
    assert "must divide the model's KV heads (2)" in problem and "1, 2" in problem


def test_tensor_parallel_without_torchrun_is_refused_with_the_command_to_use(tiny_ckpt):
    from dlm.pipeline import Pipeline

    with pytest.raises(CompositionError, match="torchrun --nproc-per-node 2"):
        Pipeline.from_config(pipeline_config(tiny_ckpt, tensor_parallel=2))
