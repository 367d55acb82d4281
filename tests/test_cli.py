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


DG_YAML = """\
model: {name: diffusion_gemma, path: CKPT}
iteration: {name: canvases, gen_length: 16}
decoding: {name: entropy_bound, entropy_bound: 1.0}
cache: {name: none}
dtype: float32
"""


def test_generate_show_marks_provisional_and_revised_tokens_of_a_revisable_canvas(tmp_path, capsys):
    import re

    from dlm import Pipeline
    from dlm.testing import make_diffusion_gemma_checkpoint
    from dlm.tools.show import PROVISIONAL, REVISED

    ckpt = make_diffusion_gemma_checkpoint(tmp_path / "dg", seed=5, generation={"max_denoising_steps": 4})
    path = tmp_path / "dg.yaml"
    path.write_text(DG_YAML.replace("CKPT", str(ckpt)))
    assert main(["generate", "-c", str(path), "--show", "12+3="]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    out = Pipeline.from_yaml(str(path)).generate(["12+3="])
    assert len(lines) == out.nfe[0] > 2
    marked = re.compile(f"[{PROVISIONAL[0]}{REVISED[0]}](.)[{PROVISIONAL[1]}{REVISED[1]}]")
    first = lines[0].split(" | ")[1]
    assert first.count(REVISED[0]) == 8 and first.endswith("_" * 8)  # canvas 1 all freshly drafted, canvas 2 unreached
    assert lines[0].endswith("+0 ~8")
    for line in lines:
        region, tail = line.split(" | ")[1:]
        plus, tilde = (int(x[1:]) for x in tail.split())
        assert len(marked.findall(region)) in (0, 8)  # a canvas is provisional as a whole until it is done
        assert tilde == region.count(REVISED[0]) and plus in (0, 8)
    assert any(PROVISIONAL[0] in line for line in lines)  # tokens a step kept provisional, shown as such
    last = lines[-1].split(" | ")[1]
    assert not marked.search(last) and "_" not in last  # at the end every token is committed
