"""Bad command-line arguments of the long-running tools (train-demo, eval, bench): refused before any work,
with exit code 2 and one line, so an hour of training or evaluation never dies at the end over an output
path that could have been checked at the start."""

from __future__ import annotations

import pytest
from badinput import assert_refused, cli_refuses, run_cli

from conftest import pipeline_config


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "taken"
    path.write_text("not a directory")
    return path


@pytest.fixture
def bench_yaml(tmp_path, tiny_ckpt):
    import yaml

    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(pipeline_config(tiny_ckpt)))
    return path


def test_train_demo_refuses_an_out_path_that_is_a_file_before_training(a_file):
    proc = run_cli("train-demo", "--out", a_file, "--steps", "100000", "--quiet")
    assert_refused(proc, "train-demo", "--out", str(a_file), "is an existing file")
    assert a_file.read_text() == "not a directory"


def test_eval_refuses_an_out_path_that_is_a_file_before_evaluating(a_file):
    proc = run_cli("eval", "--out", a_file, "-n", "1000")
    assert_refused(proc, "eval", "--out", "is an existing file")
    assert proc.stdout == ""  # nothing was evaluated


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--heads", "0"], "--heads must be a positive finite number, got 0"),
        (["--threads", "-1"], "--threads must be a positive finite number, got -1"),
        (["--lr", "nan"], "--lr must be a positive finite number"),
        (["--minutes", "0"], "--minutes must be"),
        (["--warmup", "-5"], "--warmup must be 0 or more"),
        (["--dim", "30", "--heads", "4"], "--dim 30 must be a multiple of --heads 4"),
    ],
)
def test_train_demo_refuses_bad_numbers(capsys, tmp_path, args, needle):
    cli_refuses(capsys, "train-demo", "--out", tmp_path / "out", *args, needles=(needle,))
    assert not (tmp_path / "out").exists()


def test_train_demo_checks_its_init_checkpoint_first(capsys, tmp_path):
    cli_refuses(capsys, "train-demo", "--out", tmp_path / "out", "--init", tmp_path / "nope",
                needles=("does not exist",))


def test_bench_refuses_an_output_under_a_file(capsys, bench_yaml, a_file):
    cli_refuses(capsys, "bench", bench_yaml, "--json-out", a_file / "x.json", needles=("--json-out", "is a file"))


def test_bench_refuses_an_output_that_is_a_directory(capsys, bench_yaml, tmp_path):
    cli_refuses(capsys, "bench", bench_yaml, "--md-out", tmp_path, needles=("--md-out", "is a directory"))


@pytest.mark.parametrize("args,needle", [(["--threads", "0"], "--threads"), (["--warmup", "-1"], "--warmup"),
                                         (["--repeats", "0"], "--repeats"), (["--batch-size", "0"], "--batch-size")])
def test_bench_refuses_bad_numbers(capsys, bench_yaml, args, needle):
    cli_refuses(capsys, "bench", bench_yaml, *args, needles=(needle,))


def test_bench_refuses_a_prompts_file_that_is_not_utf8(capsys, bench_yaml, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"caf\xe9\n")
    cli_refuses(capsys, "bench", bench_yaml, "--prompts-file", path, needles=("not UTF-8",))


def test_eval_refuses_an_empty_task_list(capsys):
    cli_refuses(capsys, "eval", "--tasks", ",", needles=("--tasks names no task",))


def test_usage_errors_share_the_exit_code_of_bad_input(capsys):
    with pytest.raises(SystemExit) as info:
        from dlm.cli import main

        main(["generate", "-n", "two"])
    assert info.value.code == 2
    assert "dlm generate: error:" in capsys.readouterr().err


@pytest.mark.parametrize("spec,needle", [("weight_tying=maybe", "is not true or false"),
                                         ("mlp_hidden_size=0", "must be positive"),
                                         ("d_model=-4", "must be positive"), ("seed=-1", "0 or more")])
def test_bench_random_model_spec_refuses_nonsense_instead_of_defaulting(spec, needle):
    from dlm import ConfigError
    from dlm.tools.random_model import parse_model_spec

    with pytest.raises(ConfigError, match=needle):
        parse_model_spec(spec)


def test_bench_refuses_two_configs_with_one_label(capsys, bench_yaml):
    cli_refuses(capsys, "bench", bench_yaml, bench_yaml, "--label", "a", "--label", "a", needles=("'a' is given twice",))
