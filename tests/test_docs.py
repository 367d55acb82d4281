"""The documentation stays true to the package: its component lists are the registered entry points, and it
cites nothing outside the repository.

Component lists: in docs/configuration.md, the table headed ``| name |`` at the top of each ``## model``,
``## iteration``, ``## decoding`` and ``## cache`` section; in docs/architecture.md, the ``built-ins`` cell of
the component table's row for each entry-point group. Both must name exactly the entry points dlm's own
distribution registers (pyproject.toml), so a component added without docs, or documented but not
registered, fails here.
"""

from __future__ import annotations

import re
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {"model": "dlm.models", "iteration": "dlm.iteration", "decoding": "dlm.decoding", "cache": "dlm.cache"}
NAME = re.compile(r"`([A-Za-z_][\w-]*)`")


def registered(group: str) -> set[str]:
    return {ep.name for ep in distribution("dlm").entry_points if ep.group == group}


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section (up to the next ``## `` heading)."""
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no '## {title}' section"
    return match.group(1)


def name_table(body: str) -> set[str]:
    """Backticked names in the first column of the section's tables whose header's first cell is ``name``."""
    names, in_table = set(), False
    for line in body.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        row = cells(line)
        if row[0] == "name":
            in_table = True
        elif in_table and not set(row[0]) <= set("-: "):
            names |= set(NAME.findall(row[0]))
    return names


def configuration_names(kind: str) -> set[str]:
    return name_table(section((ROOT / "docs" / "configuration.md").read_text(), kind))


def architecture_names(group: str) -> set[str]:
    rows = [cells(line) for line in (ROOT / "docs" / "architecture.md").read_text().splitlines()
            if line.startswith("|")]
    header = next(row for row in rows if "built-ins" in row)
    group_col, names_col = header.index("group"), header.index("built-ins")
    (row,) = [row for row in rows if len(row) == len(header) and row[group_col] == f"`{group}`"]
    return set(NAME.findall(row[names_col]))


@pytest.mark.parametrize("kind", list(GROUPS))
def test_configuration_lists_every_registered_component(kind):
    group = GROUPS[kind]
    documented, actual = configuration_names(kind), registered(group)
    assert actual, f"dlm registers nothing in {group}: is the package installed?"
    assert documented - actual == set(), f"docs/configuration.md documents unregistered {kind} components"
    assert actual - documented == set(), f"docs/configuration.md lacks a line for registered {kind} components"


@pytest.mark.parametrize("kind", list(GROUPS))
def test_architecture_lists_every_registered_component(kind):
    group = GROUPS[kind]
    documented, actual = architecture_names(group), registered(group)
    assert documented == actual, (
        f"docs/architecture.md's built-ins for {group}: documented but not registered "
        f"{sorted(documented - actual)}, registered but not documented {sorted(actual - documented)}"
    )


def test_the_parsers_see_a_missing_or_extra_name():
    body = "| name | what |\n| --- | --- |\n| `a` | x |\n| `b` | y |\n\n| field | default |\n| `path` | z |\n"
    assert name_table(body) == {"a", "b"}


# --- no citations outside the repository ---------------------------------------------------------------

EXTERNAL_NOTES = re.compile(r"reference notes|shared/research|research/[\w./-]*?\.md", re.I)
CHECKED = ["dlm", "docs", "examples", *(str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("plugins/*/src")))]
TEXT = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".cfg", ".rst"}


def test_nothing_cites_notes_outside_the_repository():
    found = []
    for top in CHECKED:
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or path.suffix not in TEXT or "__pycache__" in path.parts:
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if EXTERNAL_NOTES.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not found, "citations of notes outside the repository:\n" + "\n".join(found)


def test_the_compatibility_matrix_is_generated_from_the_declarations():
    """docs/configuration.md's compatibility tables are what ``python -m dlm.compat`` prints now."""
    from dlm import compat

    text = (ROOT / "docs" / "configuration.md").read_text()
    match = re.search(r"<!-- compat-matrix -->\n(.*?)\n<!-- /compat-matrix -->", text, re.S)
    assert match, "no <!-- compat-matrix --> block in docs/configuration.md"
    assert match.group(1) == compat.compatibility_section(), (
        "docs/configuration.md's compatibility matrix is stale: replace its block with `python -m dlm.compat`")
