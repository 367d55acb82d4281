"""docs/*.md run as written: every fenced block a user would paste is run here, or is marked with why not.

The conventions are tests/test_readme.py's, for every page of docs/ (docs/writing-plugins.md is run by
tests/test_tutorial.py):

- a block preceded by ``<!-- needs-checkpoint: WHAT -->`` (a real model, and the path to set),
  ``<!-- needs-gpu: WHAT -->`` (GPUs, torchrun with N processes, a cluster), ``<!-- slow: WHY -->``,
  ``<!-- long-running: WHY -->`` (a server), ``<!-- test-command -->`` or ``<!-- output: WHAT -->`` (a shown
  result or a sketch, not a command) is not run, and the marker must say what it needs;
- ```text and ```json blocks are shown output, never commands;
- the other ```bash / ```sh / ```console blocks of a page run in order, in one scratch directory where
  ``examples/`` is the repository's, with ``dlm`` and ``python`` on PATH, each command under a time bound;
  in ```console blocks ``$ `` starts a command and the lines after it are its output, which must appear in
  what it prints;
- the unmarked ```python blocks of a page run in order in one fresh interpreter, like one session;
- on docs/serving.md both run against a demo server started here, its address put for ``127.0.0.1:8000``;
- every ```yaml block validates: a whole pipeline with its ``model.path`` replaced by a tiny checkpoint,
  a block of one-line sections (``decoding: {...}``) line by line over the default pipeline.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from doc_blocks import ROOT, blocks, shell_env

MARKERS = {"needs-checkpoint", "needs-gpu", "slow", "long-running", "test-command", "output"}
SHELL, OUTPUT = {"bash", "sh", "console"}, {"text", "json"}
COMMANDS = SHELL | {"python", "yaml", ""}
COVERED_ELSEWHERE = {"writing-plugins.md": "tests/test_tutorial.py"}
# Pages being edited on another branch: their unmarked blocks are not run until they carry their markers.
PENDING: set[str] = set()
SERVED = "127.0.0.1:8000"


PAGES = {p.name: blocks(p) for p in sorted((ROOT / "docs").glob("*.md")) if p.name not in COVERED_ELSEWHERE}
RUN = sorted(name for name, bs in PAGES.items() if name not in PENDING
             and any(b["lang"] in SHELL | {"python"} and not b["marker"] for b in bs))
YAML = [(name, i) for name, bs in PAGES.items() for i, b in enumerate(bs) if b["lang"] == "yaml"]


@pytest.mark.parametrize("page", list(PAGES))
def test_every_block_is_run_or_marked_with_a_reason(page):
    unmarked = []
    for b in PAGES[page]:
        assert b["lang"] in COMMANDS | OUTPUT, f"{page}: a ```{b['lang']} block: a new language for this test"
        if b["marker"]:
            assert b["marker"] in MARKERS, f"{page}: unknown marker {b['marker']!r}"
            assert b["marker"] == "test-command" or (b["why"] or "").strip(), f"{page}: marker without a reason: {b}"
        elif b["lang"] == "":
            unmarked.append(b["body"][:80])  # a bare fence is neither a command nor declared output
        elif page in PENDING and b["lang"] in SHELL | {"python"}:
            unmarked.append(b["body"][:80])
    if unmarked and page in PENDING:
        pytest.xfail(f"{page} is edited on another branch; blocks awaiting a marker: {unmarked}")
    assert not unmarked, f"{page}: blocks neither run nor marked: {unmarked}"


def test_the_pages_run_here_cover_shell_and_python():
    run = [b for name in RUN for b in PAGES[name] if not b["marker"]]
    assert any(b["lang"] == "python" for b in run) and any(b["lang"] in SHELL for b in run)
    assert set(PAGES) | set(COVERED_ELSEWHERE) == {p.name for p in (ROOT / "docs").glob("*.md")}


def shell_commands(block: dict) -> list[tuple[str, list[str]]]:
    """(command, output lines it must print) of a shell block; continuation lines joined, comments dropped,
    ``pip install`` steps of ``&&`` chains dropped (the package under test is installed)."""
    out: list[tuple[str, list[str]]] = []
    console, pending = block["lang"] == "console", ""
    for raw in block["body"].splitlines():
        line = raw.rstrip()
        if pending:
            pending += " " + line.strip()
        elif console and not line.startswith("$ "):
            if line.strip() and not line.lstrip().startswith("#") and out:
                out[-1][1].append(line.strip())
            continue
        else:
            pending = line.removeprefix("$ ").strip() if console else line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        command, pending = pending, ""
        if not command or command.startswith("#"):
            continue
        steps = [s.strip() for s in command.split(" && ") if not s.strip().startswith("pip install")]
        if steps:
            out.append((" && ".join(steps), []))
    return out


@pytest.fixture(scope="module")
def demo_server():
    pytest.importorskip("fastapi", reason="docs/serving.md needs the [serve] extra")
    from dlm import Pipeline
    from dlm.config import default_config_path
    from dlm.tools.serve.app import create_app
    from dlm.tools.serve.server import ServerThread

    with ServerThread(create_app(Pipeline.from_yaml(default_config_path()), max_batch_size=16)) as server:
        yield f"{server.host}:{server.port}"


@pytest.mark.parametrize("page", RUN)
def test_page_runs_as_written(page, tmp_path, request):
    address = request.getfixturevalue("demo_server") if page == "serving.md" else SERVED

    def here(text: str) -> str:
        return text.replace(SERVED, address)

    env, work = shell_env(tmp_path)
    (work / "examples").symlink_to(ROOT / "examples")
    run = [b for b in PAGES[page] if not b["marker"]]
    for block in (b for b in run if b["lang"] in SHELL):
        for command, shown in shell_commands(block):
            proc = subprocess.run(["bash", "-c", here(command)], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 0, (page, command, proc.stderr)
            assert "Traceback" not in proc.stderr, (page, command, proc.stderr)
            printed = [line.strip() for line in proc.stdout.splitlines()]
            for line in shown:
                assert line in printed, (page, command, line, proc.stdout)
    python = [b["body"] for b in run if b["lang"] == "python"]
    if python:
        script = work / "session.py"
        script.write_text(here("\n".join(python)))
        proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, (page, proc.stderr)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from dlm.testing import make_llada_checkpoint

    return make_llada_checkpoint(tmp_path_factory.mktemp("docs") / "tiny", max_sequence_length=1024)


@pytest.mark.parametrize("page,index", YAML, ids=[f"{p}-{i}" for p, i in YAML])
def test_yaml_blocks_are_valid_configs(page, index, tiny_checkpoint):
    from dlm.commands.validate import cannot_run_here
    from dlm.config import build_config, default_config_path
    from dlm.config_file import parse_yaml

    body, source = PAGES[page][index]["body"], f"docs/{page}"
    lines = [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not all(line[0].isalpha() for line in lines) or {"model", "iteration", "decoding", "cache"} <= {
            line.split(":", 1)[0] for line in lines}:  # a whole pipeline
        raw = parse_yaml(body, source)
        if raw["model"].get("path"):
            raw["model"]["path"] = str(tiny_checkpoint)
        problems = cannot_run_here(build_config(raw, source=source))
        assert all("CUDA GPU" in p for p in problems), problems  # the real model's place taken by the tiny one
        return
    for line in lines:  # alternatives, one section or run setting per line, each tried over the default pipeline
        base = parse_yaml(default_config_path().read_text(), "default.yaml")
        build_config({**base, **parse_yaml(line, source)}, source=source)
