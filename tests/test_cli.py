"""The ``dlm`` console script end to end: generate, list, validate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dlm.cli import main

YAML = """\
model: {name: llada, path: CKPT}
iteration: {name: blockwise, gen_length: 16, block_length: 8, steps: 16}
decoding: {name: low_confidence}
dtype: float64
"""


@pytest.fixture
def config(tmp_path, tiny_ckpt):
    path = tmp_path / "pipe.yaml"
    path.write_text(YAML.replace("CKPT", str(tiny_ckpt)))
    return str(path)


def test_generate_json_reports_text_ids_and_nfe(config, capsys):
    assert main(["generate", "--config", config, "--set", "decoding.name=threshold", "--json", "12+3="]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["prompt"] == "12+3=" and len(row["token_ids"]) == 16
    assert isinstance(row["text"], str) and 1 <= row["nfe"] <= 16


def test_generate_matches_python_api(config, capsys):
    from dlm import Pipeline

    main(["generate", "-c", config, "--json", "ab", "cd"])
    rows = json.loads(capsys.readouterr().out)
    out = Pipeline.from_yaml(config).generate(["ab", "cd"])
    assert [r["token_ids"] for r in rows] == [g.tolist() for g in out.generated]
    assert [r["nfe"] for r in rows] == out.nfe


def test_generate_show_prints_each_step(config, capsys):
    assert main(["generate", "-c", config, "--show", "hi"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    assert len(lines) == 16
    assert lines[0].count("_") == 15 and "_" not in lines[-1].split("|")[1]


def test_list_shows_every_group_with_providers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for line in ("model (dlm.models):", "llada", "blockwise", "low_confidence", "threshold", "factor", "prefix", "dual"):
        assert line in out
    assert "BROKEN" not in out


def test_validate_prints_resolved_config(config, capsys):
    assert main(["validate", config, "--set", "decoding.temperature=0.5"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "temperature: 0.5" in out and "steps: 16" in out


def test_errors_exit_nonzero_with_a_clear_message(config, capsys):
    assert main(["generate", "-c", config, "--set", "decoding.name=tresh", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown decoding component 'tresh'" in err and "Traceback" not in err


def test_console_script_is_installed(config):
    proc = subprocess.run([sys.executable, "-m", "dlm.cli", "validate", config], capture_output=True, text=True)
    assert proc.returncode == 0 and "valid" in proc.stdout
