"""Command-line classes of issue #28 (items 2, 4 and 7): --json with --show keeps stdout JSON, --tasks ""
names no task, counts and seeds are bounded before anything is built, --out is tried for writing before the
work, unknown lm-eval tasks are one line, and result files record how they were made."""

from __future__ import annotations

import json

import pytest
import yaml
from badinput import assert_refused, cli_refuses, run_cli

from conftest import pipeline_config
from dlm.config import MAX_SEED


@pytest.fixture
def bench_yaml(tmp_path, tiny_ckpt):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(pipeline_config(tiny_ckpt, iteration={"gen_length": 8, "block_length": 8,
                                                                         "steps": 8})))
    return path


def test_generate_json_with_show_keeps_stdout_one_json_document():
    proc = run_cli("generate", "--json", "--show", "123+456=", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["text"] == "579"
    assert "+" in proc.stderr and "|" in proc.stderr  # the canvas went to stderr


@pytest.mark.parametrize("tasks", ["", " ", ",,"])
def test_eval_refuses_an_empty_task_list_instead_of_running_everything(capsys, tmp_path, tasks):
    cli_refuses(capsys, "eval", "--tasks", tasks, "--out", tmp_path / "o", needles=("--tasks names no task",))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, needle", [
    (["-n", str(10**12)], "-n 1000000000000 is beyond dlm's bound"),
    (["--batch-size", str(10**9)], "--batch-size 1000000000 is beyond"),
    (["--seed", "-1"], f"--seed must be between 0 and {MAX_SEED}"),
    (["--seed", str(2**64)], "--seed must be between 0"),
])
def test_eval_bounds_its_numbers_before_building_prompts(capsys, tmp_path, args, needle):
    cli_refuses(capsys, "eval", "--out", tmp_path / "o", *args, needles=(needle,))


def test_eval_tries_to_write_out_before_evaluating():
    proc = run_cli("eval", "--out", "/proc/dlm-results", "-n", "1000", timeout=120)
    assert_refused(proc, "eval", "--out /proc/dlm-results", "cannot write in /proc")
    assert proc.stdout == ""


@pytest.mark.parametrize("args, needle", [
    (["--prompts", str(10**9)], "--prompts 1000000000 is beyond dlm's bound"),
    (["--prompt-length", str(10**9)], "--prompt-length 1000000000 is beyond"),
    (["--prompt-length", "600"], "--prompt-length 600 does not fit"),
    (["--prompt-seed", "-3"], "--prompt-seed must be between 0"),
    (["--prompts", "0"], "--prompts must be a positive"),
])
def test_bench_bounds_its_numbers_before_building_prompts(capsys, bench_yaml, args, needle):
    cli_refuses(capsys, "bench", bench_yaml, "--no-progress", *args, needles=(needle,))


def test_train_demo_refuses_a_seed_outside_the_one_seed_rule(capsys, tmp_path):
    cli_refuses(capsys, "train-demo", "--out", tmp_path / "o", "--seed", str(2**63), needles=("--seed must be between",))


def test_lm_eval_refuses_an_empty_task_list(capsys):
    pytest.importorskip("lm_eval")
    cli_refuses(capsys, "lm-eval", "--tasks", "", needles=("--tasks '' names no task",))


def test_lm_eval_names_an_unknown_task_in_one_line(capsys):
    """Refused before lm-eval's task index is built (seconds, not a minute), naming only the unknown name."""
    pytest.importorskip("lm_eval")
    cli_refuses(capsys, "lm-eval", "--tasks", "dlm_demo,no_such_task_xyz",
                needles=("Tasks not found: no_such_task_xyz;", "dlm lm-eval ls tasks"))


def test_lm_eval_task_names_in_some_task_file_are_left_to_lm_eval(tmp_path):
    pytest.importorskip("lm_eval")
    from dlm.tools.lm_eval.launcher import unmentioned_tasks

    (tmp_path / "mine.yaml").write_text("task: my_local_task\n")
    assert unmentioned_tasks(["gsm8k", "dlm_demo", "my_local_task", "gsm8*"], [str(tmp_path)]) == []
    assert unmentioned_tasks(["my_local_task", "no_such_task_xyz"]) == ["my_local_task", "no_such_task_xyz"]


def test_bench_json_records_versions_device_threads_dtype_and_commit(capsys, bench_yaml, tmp_path):
    out = tmp_path / "bench.json"
    from dlm.cli import main

    assert main(["bench", str(bench_yaml), "--no-progress", "--repeats", "1", "--warmup", "0",
                 "--prompt-length", "4", "--json-out", str(out)]) == 0
    machine = json.loads(out.read_text())["machine"]
    for key in ("dlm", "torch", "transformers", "device", "device_name", "threads", "dtype", "git"):
        assert key in machine, key
    assert machine["dtype"] == "float64" and machine["device"] == "cpu"
    assert machine["dlm"] and machine["torch"]
