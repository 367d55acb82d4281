"""Bad pipeline configs (files, mappings, overrides, run settings): one-line errors naming field and source.

The CLI is driven in a subprocess once per class (exit code 2, no traceback); the members of each class
through the Python API, where each must be a ``DlmError`` subclass with a one-line message.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from badinput import assert_refused, cli_refuses, one_line, run_cli

from dlm import CompositionError, ConfigError, Pipeline
from dlm.config import build_config, default_config, load_config

GOOD = """\
model: {name: llada, path: CKPT}
iteration: {name: blockwise, gen_length: 16, block_length: 8, steps: 16}
decoding: {name: threshold, threshold: 0.9}
dtype: float64
"""


@pytest.fixture
def good(tmp_path, tiny_ckpt):
    path = tmp_path / "pipe.yaml"
    path.write_text(GOOD.replace("CKPT", str(tiny_ckpt)))
    return path


def write(tmp_path, text: str, name: str = "bad.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- devices ------------------------------------------------------------------------------------------


def test_cli_validate_refuses_a_device_that_is_not_one(good):
    proc = run_cli("validate", good, "--set", "device=banana")
    assert_refused(proc, "validate", "--set device=banana", "device:", "cpu, cuda or cuda:N")


@pytest.mark.parametrize("device", ["mps", "banana", "cuda:abc", "meta", "cpu:-1", "xla"])
def test_unsupported_device_strings_are_config_errors(good, device):
    with pytest.raises(ConfigError) as info:
        load_config(good, [f"device={device}"])
    one_line(info.value, "device:", "cpu, cuda or cuda:N")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_when_the_pipeline_is_built(good):
    config = load_config(good, ["device=cuda:1"])  # valid as a config: it may be meant for another machine
    with pytest.raises(CompositionError) as info:
        Pipeline.from_config(config)
    one_line(info.value, "cuda:1", "CUDA is not available")


def test_a_gpu_index_beyond_the_machine_is_refused_before_loading(good, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(CompositionError) as info:
        Pipeline.from_yaml(good, overrides=["device=cuda:2"])
    one_line(info.value, "'cuda:2'", "2 CUDA devices (cuda:0 to cuda:1)")


# --- files --------------------------------------------------------------------------------------------


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: {name: llada}\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    one_line(info.value, "latin1.yaml", "not UTF-8")


def test_config_that_is_a_directory_is_named_as_one(capsys, tmp_path):
    cli_refuses(capsys, "generate", "-c", tmp_path, "hi", needles=(str(tmp_path), "is a directory"))


def test_duplicate_keys_are_refused_with_their_lines(tmp_path, tiny_ckpt):
    path = write(tmp_path, GOOD.replace("CKPT", str(tiny_ckpt)) + "seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    one_line(info.value, "bad.yaml", "duplicate key 'seed'", "line 5", "line 6")


def test_duplicate_keys_inside_a_section_are_refused(tmp_path):
    path = write(tmp_path, "decoding: {name: threshold, threshold: 0.5, threshold: 0.9}\n")
    with pytest.raises(ConfigError, match="duplicate key 'threshold'"):
        load_config(path)


def test_config_path_of_the_wrong_type_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(3)
    one_line(info.value, "config path", "int")


# --- run settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [2**64, 2**63, -1, 10**30])
def test_seed_outside_the_generator_range_is_refused(good, seed):
    with pytest.raises(ConfigError) as info:
        load_config(good, [f"seed={seed}"])
    one_line(info.value, f"--set seed={seed}", "seed:")


def test_largest_seed_is_accepted_and_generates(good):
    out = Pipeline.from_yaml(good, overrides=[f"seed={2**63 - 1}", "decoding.temperature=1.0"]).generate(
        input_ids=[[5, 6], [7, 8]]
    )
    assert len(out.generated) == 2


@pytest.mark.parametrize("threads", [-1, 0, 2**40, "many", True])
def test_bad_thread_counts_are_refused(good, threads):
    with pytest.raises(ConfigError) as info:
        build_config(yaml.safe_load(good.read_text()), overrides={"threads": threads})
    one_line(info.value, "threads")


# --- values accepted as something else ----------------------------------------------------------------


@pytest.mark.parametrize("override", ["iteration.gen_length=true", "decoding.threshold=false", "seed=true"])
def test_a_boolean_is_not_taken_for_a_number(good, override):
    with pytest.raises(ConfigError) as info:
        load_config(good, [override])
    one_line(info.value, f"--set {override}", "expected a number, got a boolean")


def test_a_boolean_inside_a_list_of_ids_is_refused(good):
    with pytest.raises(ConfigError, match="model.eos_token_ids: expected a number, got a boolean"):
        load_config(good, ["model.eos_token_ids=[true]"])


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_refused(good, value):
    with pytest.raises(ConfigError) as info:
        load_config(good, [f"decoding.temperature={value}"])
    one_line(info.value, "decoding.temperature: expected a finite number")


def test_more_steps_than_tokens_is_refused_not_capped(good):
    with pytest.raises(ConfigError) as info:
        load_config(good, ["iteration.steps=32"])
    one_line(info.value, "steps (32) exceeds gen_length (16)", "at most 16")


def test_empty_model_path_is_refused_not_read_as_the_current_directory(good):
    with pytest.raises(ConfigError) as info:
        load_config(good, ["model.path="])
    one_line(info.value, "model.path", "is empty")


def test_an_empty_list_of_end_tokens_is_refused(good):
    with pytest.raises(ConfigError) as info:
        load_config(good, ["model.eos_token_ids=[]"])
    one_line(info.value, "model.eos_token_ids", "at least 1 item")


# --- overrides given to the Python API ----------------------------------------------------------------


@pytest.mark.parametrize("overrides", [3, "seed=3", [3], b"seed=3", {1: 2}])
def test_overrides_of_the_wrong_type_are_refused(good, overrides):
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(good, overrides=overrides)
    one_line(info.value, "override")


def test_overrides_apply_to_an_already_validated_config(good):
    pipe = Pipeline.from_config(load_config(good), overrides=["decoding.threshold=0.5", "seed=4"])
    assert pipe.decoding.config.threshold == 0.5 and pipe.seed == 4


# --- every problem at once, each with its source --------------------------------------------------------


def test_every_problem_of_every_section_is_reported_at_once(tmp_path, tiny_ckpt):
    text = GOOD.replace("CKPT", str(tiny_ckpt)).replace("threshold: 0.9", "threshold: 2.0") + "seed: -4\nmodle: x\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["iteration.steps=abc", "cache.name=nope"])
    lines = str(info.value).splitlines()
    assert len(lines) == 5, lines
    joined = "\n".join(lines)
    for needle in ("decoding.threshold", "iteration.steps", "cache.name", "seed:", "'modle'"):
        assert needle in joined, needle


def test_each_problem_names_the_file_or_the_override_that_supplied_it(tmp_path, tiny_ckpt):
    path = write(tmp_path, GOOD.replace("CKPT", str(tiny_ckpt)).replace("threshold: 0.9", "threshold: 2.0"))
    with pytest.raises(ConfigError) as info:
        load_config(path, ["iteration.steps=abc"])
    by_field = {line.split(": ")[1]: line.split(": ")[0] for line in str(info.value).splitlines()}
    assert by_field == {"decoding.threshold": str(path), "iteration.steps": "--set iteration.steps=abc"}


def test_a_problem_of_a_whole_section_names_the_file_and_its_overrides(good):
    with pytest.raises(ConfigError) as info:
        load_config(good, ["iteration.block_length=5"])
    one_line(info.value, f"{good}, --set iteration.block_length=5: iteration: block_length (5) must divide")


def test_cli_prints_each_problem_on_its_own_line(good):
    proc = run_cli("validate", good, "--set", "seed=-1", "--set", "decoding.threshold=3", "--set", "dtype=int8")
    lines = assert_refused(proc, "validate", lines=3)
    assert [line.split(": ")[0] for line in lines] == ["--set decoding.threshold=3", "--set seed=-1", "--set dtype=int8"]


def test_missing_required_sections_name_the_components_that_could_fill_them(tmp_path):
    path = write(tmp_path, "model: {name: llada}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "missing section 'iteration'" in lines[0] and "blockwise (dlm)" in lines[0]
    assert "missing section 'decoding'" in lines[1] and "low_confidence (dlm)" in lines[1]


# --- the default pipeline, printed ----------------------------------------------------------------------


def test_validate_without_a_file_prints_the_default_pipeline_as_yaml_that_validates_again(tmp_path):
    proc = run_cli("validate")
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed == default_config().to_dict()
    path = write(tmp_path, proc.stdout, "default.yaml")
    again = run_cli("validate", path)
    assert again.returncode == 0 and yaml.safe_load(again.stdout) == printed


def test_default_pipeline_lists_every_field_of_every_section():
    printed = default_config().to_dict()
    assert set(printed) == {"model", "iteration", "decoding", "cache", "seed", "dtype", "device", "threads", "compile",
                            "tensor_parallel", "expert_parallel"}
    assert {"gen_length", "block_length", "steps", "early_stop"} <= set(printed["iteration"])
