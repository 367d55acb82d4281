"""README.md runs as written: every fenced block a user would paste is run here, or is marked with why not.

- ```python blocks are executed (in a fresh interpreter, in a scratch directory);
- ```bash blocks are run line by line with ``dlm`` and ``python`` on PATH (``pip install`` steps are
  skipped: the package under test is already installed), in one scratch directory, so a file one line writes
  (``dlm validate > mine.yaml``) is there for the next;
- ```yaml blocks are pipeline configs and must validate (their model need not be present);
- a block preceded by ``<!-- needs-checkpoint: WHAT -->``, ``<!-- slow: WHY -->``, ``<!-- long-running: WHY -->``
  or ``<!-- test-command -->`` is not run, and the marker must say what it needs or what covers it.

Each command runs under a time bound, so a README that hangs fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from doc_blocks import ROOT, blocks
from doc_blocks import shell_env as scratch_shell

MARKERS = {"needs-checkpoint", "slow", "long-running", "test-command"}


README = blocks(ROOT / "README.md")
RUN = [b for b in README if b["lang"] in ("python", "bash") and not b["marker"]]


def test_every_block_is_run_or_marked_with_a_reason():
    for b in README:
        if b["marker"]:
            assert b["marker"] in MARKERS, b["marker"]
            assert b["marker"] == "test-command" or (b["why"] or "").strip(), f"marker without a reason: {b}"
    assert any(b["lang"] == "python" for b in RUN) and any(b["lang"] == "bash" for b in RUN)


@pytest.fixture
def shell_env(tmp_path):
    return scratch_shell(tmp_path)


def commands(body: str) -> list[str]:
    """The commands of a bash block, ``pip install`` steps of ``&&`` chains dropped."""
    out = []
    for line in body.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        steps = [s.strip() for s in line.split(" && ") if not s.strip().startswith("pip install")]
        if steps:
            out.append(" && ".join(steps))
    return out


@pytest.mark.parametrize("index", range(len(RUN)))
def test_readme_block_runs_as_written(shell_env, index):
    env, work = shell_env
    block = RUN[index]
    if block["lang"] == "python":
        script = work / "snippet.py"
        script.write_text(block["body"])
        proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        return
    for command in commands(block["body"]):
        proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, (command, proc.stderr)
        assert "Traceback" not in proc.stderr, (command, proc.stderr)


@pytest.mark.parametrize("index", [i for i, b in enumerate(README) if b["lang"] == "yaml"])
def test_readme_yaml_blocks_are_valid_configs(index):
    from dlm.config import build_config
    from dlm.config_file import parse_yaml

    build_config(parse_yaml(README[index]["body"], "README.md"), source="README.md")


def test_the_readme_real_model_config_says_what_it_needs(tmp_path):
    """``dlm validate`` on the README's LLaDA file, without the model: valid, exit 3, naming the hub id."""
    (tmp_path / "llada-fast.yaml").write_text(next(b["body"] for b in README if b["lang"] == "yaml"))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "dlm", "validate", "llada-fast.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "llada-fast.yaml: valid, but cannot run on this machine" in proc.stdout
    assert "GSAI-ML/LLaDA-8B-Instruct" in proc.stderr and "huggingface-cli download" in proc.stderr


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_top_level_examples_name_their_model_and_validate_says_when_it_is_missing(example, tmp_path, monkeypatch):
    """A top-level example is written for a real model: it names it (never silently the 64-token demo
    model), and ``dlm validate`` says, without loading weights, that it cannot run where the model is absent."""
    from dlm.commands.validate import cannot_run_here
    from dlm.config import load_config

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = load_config(example)
    assert config.model.config.path is not None, f"{example.name} has no model.path"
    problems = cannot_run_here(config)
    assert problems and all("model.path" in p for p in problems), problems


def test_validate_says_when_gen_length_exceeds_the_context_or_the_gpu_is_missing(monkeypatch):
    import torch

    from dlm.commands.validate import cannot_run_here
    from dlm.config import default_config

    problems = cannot_run_here(default_config(["iteration.gen_length=72", "iteration.steps=72"]))
    assert problems == [p for p in problems if "context of 64 tokens" in p] and problems
    assert not cannot_run_here(default_config(["iteration.gen_length=64", "iteration.steps=64"]))  # unconditional fits
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert any("no CUDA GPU" in p for p in cannot_run_here(default_config(["device=cuda"])))
