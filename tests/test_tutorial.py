"""docs/writing-plugins.md works as written: its files are written to a temporary folder and its commands run.

Blocks fenced as ```LANG file=PATH are written to PATH; each ```bash run block is executed line by line in
one shell, from the tutorial's folder (one package per part: a decoding strategy, then a cache policy). ``pip install -e .`` is replaced by what it leaves behind — the package's ``src`` on the path
and a ``.dist-info`` with the entry points read from the tutorial's own pyproject.toml — so the test is
offline and fast, and still fails if the pyproject's entry point is wrong.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str, str]]:
    """(language, info after the language, body) of every fenced block."""
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(DOC.read_text())]


def write_files(root: Path) -> dict[str, Path]:
    files = {}
    for _, info, body in blocks():
        if info.startswith("file="):
            path = root / info.removeprefix("file=")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            files[info.removeprefix("file=")] = path
    return files


def fake_install(project: Path, site: Path) -> None:
    """What ``pip install -e <project>`` leaves: a dist-info with METADATA and entry_points.txt."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    lines = []
    for group, names in meta.get("entry-points", {}).items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in names.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))


def run_scripts() -> list[list[str]]:
    """The commands of each ```bash run block."""
    scripts = [body for lang, info, body in blocks() if lang == "bash" and info == "run"]
    return [[line for line in script.splitlines() if line.strip()] for script in scripts]


def test_tutorial_declares_every_file_of_its_layout():
    files = {info.removeprefix("file=") for _, info, _ in blocks() if info.startswith("file=")}
    assert {"dlm-margin/pyproject.toml", "dlm-margin/src/dlm_margin/margin.py",
            "dlm-margin/tests/test_margin.py", "dlm-margin/margin.yaml",
            "dlm-stride/pyproject.toml", "dlm-stride/src/dlm_stride/stride.py",
            "dlm-stride/tests/test_stride.py"} <= files


def test_tutorial_plugins_install_test_and_run_from_yaml(tmp_path):
    files = write_files(tmp_path)
    projects = [path.parent for name, path in files.items() if name.endswith("/pyproject.toml")]
    site = tmp_path / "site"
    for project in projects:
        fake_install(project, site)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([*(str(p / "src") for p in projects), str(site),
                                       os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    scripts = run_scripts()
    assert len(scripts) == 2, "one run block per part: the decoding strategy, the cache policy"
    outputs = []
    for commands in scripts:
        installs = [c for c in commands if c.strip().startswith("pip install")]
        assert installs == ["pip install -e ."], "each part installs the package it wrote, in place"
        script = "set -euo pipefail\n" + "\n".join(
            f"echo '>>> {c}'\n{c}" for c in commands if not c.strip().startswith("pip install")
        )
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert re.search(r"\d+ passed", out) and "failed" not in out, out
        outputs.append(out)
    margin, stride = outputs
    assert re.search(r"margin\s+dlm-margin", margin), margin
    assert "margin.yaml: valid" in margin and "delta: 0.3" in margin
    assert re.search(r"stride\s+dlm-stride", stride), stride


def test_tutorial_strategy_is_found_through_its_entry_point(tmp_path, monkeypatch):
    files = write_files(tmp_path)
    project = files["dlm-margin/pyproject.toml"].parent
    fake_install(project, tmp_path / "site")
    monkeypatch.syspath_prepend(str(project / "src"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for module in [m for m in sys.modules if m.startswith("dlm_margin")]:
        monkeypatch.delitem(sys.modules, module)
    from dlm.config import load_config

    config = load_config(files["dlm-margin/margin.yaml"])
    assert config.decoding.cls.__name__ == "Margin" and config.decoding.config.delta == 0.3
    with pytest.raises(Exception, match="delta"):
        load_config(files["dlm-margin/margin.yaml"], ["decoding.delta=2"])


def test_tutorial_cache_policy_is_found_through_its_entry_point(tmp_path, monkeypatch):
    files = write_files(tmp_path)
    project = files["dlm-stride/pyproject.toml"].parent
    fake_install(project, tmp_path / "site")
    monkeypatch.syspath_prepend(str(project / "src"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for module in [m for m in sys.modules if m.startswith("dlm_stride")]:
        monkeypatch.delitem(sys.modules, module)
    from dlm.cache import PrefixCache
    from dlm.registry import resolve

    cls = resolve("cache", "stride")
    assert issubclass(cls, PrefixCache) and cls.Config().refresh_every == 2


def test_the_pages_inline_examples_keep_the_contract():
    """The ```python blocks without a file (e.g. the strategy with run memory on the state) run, and every
    component they define passes the contract kit, joins included where it declares joinable."""
    from dlm.decoding.base import DecodingStrategy
    from dlm.testing.contracts import check_component

    inline = [body for lang, info, body in blocks() if lang == "python" and not info]
    assert inline, "the page shows at least one inline example"
    checked = []
    for body in inline:
        namespace: dict = {}
        exec(compile(body, str(DOC), "exec"), namespace)
        for value in list(namespace.values()):
            if isinstance(value, type) and issubclass(value, DecodingStrategy) and value is not DecodingStrategy:
                report = check_component("decoding", value, {})
                if getattr(value, "joinable", False):
                    assert {o.check: o.status for o in report.outcomes}["joins"] == "passed"
                checked.append(value.__name__)
    assert "Stable" in checked


def test_the_page_states_its_plugin_api_and_where_plugins_show_their_effect():
    from dlm.messages import PLUGIN_API

    text = " ".join(DOC.read_text().replace("*", "").split())
    assert f"plugin API {PLUGIN_API}" in text and "ContractReport.api" in text
    assert "default demo pipeline" in text and "one block" in text  # a cache or exit shows nothing on it
    assert "examples/long/" in text and "state.pending()" in text
