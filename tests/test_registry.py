"""Plugin discovery: broken plugins are reported naming their package and cause, and break nothing else.

Each test simulates an installed plugin with a temporary ``NAME-VERSION.dist-info`` directory (METADATA and
entry_points.txt) and its module on ``sys.path``, exactly what pip leaves behind; importlib.metadata reads
them, no pip needed.
"""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest

from dlm.cli import main
from dlm.config import build_config
from dlm.errors import ComponentError, PluginError
from dlm.registry import available, check_entry, entries, resolve

GOOD_STRATEGY = """
from pydantic import BaseModel, ConfigDict
from dlm.decoding.low_confidence import LowConfidence

class GreedyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    temperature: float = 0.0

class Greedy(LowConfidence):
    Config = GreedyConfig
"""


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(package, {group: {name: target}}, module_source) -> the module name used in targets."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def _install(package: str, groups: dict[str, dict[str, str]], source: str | None = None, *, name=True) -> str:
        module = f"plugin_{uuid.uuid4().hex[:8]}"
        if source is not None:
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{package.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        meta = "Metadata-Version: 2.1\n" + (f"Name: {package}\n" if name else "") + "Version: 1.0\n"
        (info / "METADATA").write_text(meta)
        lines = []
        for group, names in groups.items():
            lines.append(f"[{group}]")
            lines += [f"{n} = {t.replace('MODULE', module)}" for n, t in names.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        monkeypatch.delitem(sys.modules, module, raising=False)
        return module

    return _install


def dlm_list(capsys) -> str:
    assert main(["list"]) == 0
    return capsys.readouterr().out


def test_a_good_plugin_is_listed_with_its_package_and_usable_from_yaml(install, capsys):
    install("dlm-greedy", {"dlm.decoding": {"greedy": "MODULE:Greedy"}}, GOOD_STRATEGY)
    assert entries("decoding")["greedy"].providers == ("dlm-greedy",)
    config = build_config({"model": "llada", "iteration": "blockwise", "decoding": {"name": "greedy"}})
    assert config.decoding.cls.__name__ == "Greedy"
    line = next(ln for ln in dlm_list(capsys).splitlines() if ln.strip().startswith("greedy"))
    assert "dlm-greedy" in line and "BROKEN" not in line


OLD_API_STRATEGY = """
import torch
from pydantic import BaseModel, ConfigDict
from dlm.decoding import DecodingStrategy
from dlm.messages import Commit

class AllConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

class All(DecodingStrategy):  # plugin API 1.x: select(logits, window, generator)
    Config = AllConfig

    def select(self, logits, window, generator):
        return Commit(window.eligible.clone(), logits.argmax(dim=-1).clamp(max=window.mask_id - 1))
"""


def test_a_plugin_written_for_plugin_api_1_still_loads_with_a_deprecation_warning(install):
    install("dlm-old", {"dlm.decoding": {"old_all": "MODULE:All"}}, OLD_API_STRATEGY)
    with pytest.warns(DeprecationWarning, match="plugin API 1.x"):
        cls = resolve("decoding", "old_all")
    assert cls.__name__ == "All"


def test_plugin_raising_at_import_is_named_with_package_and_cause(install, capsys):
    install("dlm-crashy", {"dlm.decoding": {"crashy": "MODULE:Thing"}}, "raise RuntimeError('no GPU driver found')\n")
    with pytest.raises(PluginError) as err:
        resolve("decoding", "crashy")
    message = str(err.value)
    assert "dlm-crashy" in message and "RuntimeError" in message and "no GPU driver found" in message
    out = dlm_list(capsys)
    assert "crashy" in out and "BROKEN" in out and "no GPU driver found" in out
    assert resolve("decoding", "threshold").__name__ == "Threshold"  # everything else still loads


def test_plugin_exiting_at_import_does_not_end_dlm_list(install, capsys):
    install("dlm-quitter", {"dlm.cache": {"quitter": "MODULE:Thing"}}, "import sys\nsys.exit(3)\n")
    with pytest.raises(PluginError, match="dlm-quitter.*SystemExit"):
        resolve("cache", "quitter")
    out = dlm_list(capsys)
    assert "quitter" in out and "BROKEN" in out and "dual" in out


def test_plugin_pointing_at_a_missing_module_is_reported(install):
    install("dlm-ghost", {"dlm.iteration": {"ghost": "no_such_module_xyz:Ghost"}})
    with pytest.raises(PluginError, match=r"dlm-ghost.*ModuleNotFoundError.*no_such_module_xyz"):
        resolve("iteration", "ghost")


def test_plugin_registering_something_that_is_not_a_class_is_reported(install):
    install("dlm-func", {"dlm.decoding": {"func": "MODULE:select"}}, "def select(logits):\n    return logits\n")
    with pytest.raises(PluginError, match=r"dlm-func.*not a subclass of dlm\.decoding\.base\.DecodingStrategy"):
        resolve("decoding", "func")


def test_plugin_registering_a_class_of_another_group_is_reported(install):
    install("dlm-mixup", {"dlm.cache": {"mixup": "MODULE:Greedy"}}, GOOD_STRATEGY)
    with pytest.raises(PluginError, match=r"dlm-mixup.*not a subclass of dlm\.cache\.base\.CacheManager"):
        resolve("cache", "mixup")


def test_plugin_without_a_config_class_is_reported(install):
    source = "from dlm.decoding.base import DecodingStrategy\nclass NoConfig(DecodingStrategy):\n" \
             "    def select(self, state, window, logits, generator):\n        return None\n"
    install("dlm-noconfig", {"dlm.decoding": {"noconfig": "MODULE:NoConfig"}}, source)
    with pytest.raises(PluginError, match=r"dlm-noconfig.*no pydantic `Config`"):
        resolve("decoding", "noconfig")


def test_plugin_whose_config_is_not_pydantic_is_reported(install):
    source = GOOD_STRATEGY + "\nclass DictConfig(Greedy):\n    Config = dict\n"
    install("dlm-dictcfg", {"dlm.decoding": {"dictcfg": "MODULE:DictConfig"}}, source)
    with pytest.raises(PluginError, match="dlm-dictcfg"):
        resolve("decoding", "dictcfg")


def test_collision_with_a_builtin_names_both_packages(install, capsys):
    install("dlm-impostor", {"dlm.decoding": {"threshold": "MODULE:Greedy"}}, GOOD_STRATEGY)
    with pytest.raises(ComponentError) as err:
        resolve("decoding", "threshold")
    message = str(err.value)
    assert "more than once" in message and "dlm-impostor" in message and "by package dlm" in message
    assert "Uninstall" in message
    out = dlm_list(capsys)
    threshold_line = next(ln for ln in out.splitlines() if ln.strip().startswith("threshold"))
    assert "dlm-impostor" in threshold_line and "BROKEN" in threshold_line
    factor_line = next(ln for ln in out.splitlines() if ln.strip().startswith("factor"))
    assert "BROKEN" not in factor_line
    assert resolve("decoding", "factor").__name__ == "Factor"


def test_collision_between_two_plugins_names_both(install):
    install("dlm-one", {"dlm.cache": {"twin": "MODULE:X"}}, "X = 1\n")
    install("dlm-two", {"dlm.cache": {"twin": "MODULE:Y"}}, "Y = 2\n")
    with pytest.raises(ComponentError, match=r"dlm-one.*dlm-two|dlm-two.*dlm-one"):
        resolve("cache", "twin")


def test_a_package_seen_twice_on_the_path_is_not_a_collision(install, monkeypatch, tmp_path):
    install("dlm-greedy", {"dlm.decoding": {"greedy": "MODULE:Greedy"}}, GOOD_STRATEGY)
    monkeypatch.syspath_prepend(str(tmp_path))  # the same directory twice, as with some editable installs
    assert resolve("decoding", "greedy").__name__ == "Greedy"


def test_package_without_a_name_is_still_reported_readably(install, capsys):
    install("dlm-anon", {"dlm.decoding": {"anon": "MODULE:Thing"}}, "raise ImportError('broken wheel')\n", name=False)
    assert "anon" in available("decoding")
    with pytest.raises(PluginError, match="broken wheel"):
        resolve("decoding", "anon")
    assert "anon" in dlm_list(capsys)


def test_check_entry_explains_a_broken_entry_and_passes_a_good_one(install):
    install("dlm-crashy", {"dlm.decoding": {"crashy": "MODULE:Thing"}}, "raise ValueError('bad')\n")
    found = entries("decoding")
    assert "ValueError: bad" in check_entry(found["crashy"])
    assert check_entry(found["threshold"]) is None


def test_unknown_name_lists_what_exists_and_suggests_the_closest():
    with pytest.raises(ComponentError) as err:
        resolve("decoding", "threshhold")
    message = str(err.value)
    assert "Did you mean 'threshold'?" in message
    assert "low_confidence (dlm)" in message and "factor (dlm)" in message


def test_unknown_name_far_from_everything_gives_no_suggestion():
    with pytest.raises(ComponentError) as err:
        resolve("cache", "zzzzzzzz")
    assert "Did you mean" not in str(err.value) and "none (dlm)" in str(err.value)


def test_unknown_name_in_yaml_names_the_section(install):
    with pytest.raises(ComponentError, match=r"decoding\.name: unknown decoding component 'gredy'"):
        build_config({"model": "llada", "iteration": "blockwise", "decoding": {"name": "gredy"}})


def test_a_broken_plugin_does_not_affect_configs_that_do_not_use_it(install):
    install("dlm-crashy", {"dlm.decoding": {"crashy": "MODULE:Thing"}}, "raise RuntimeError('boom')\n")
    config = build_config({"model": "llada", "iteration": "blockwise", "decoding": {"name": "threshold"}})
    assert config.decoding.cls.__name__ == "Threshold"
    with pytest.raises(PluginError, match=r"decoding\.name: .*dlm-crashy.*boom"):
        build_config({"model": "llada", "iteration": "blockwise", "decoding": {"name": "crashy"}})


def test_unknown_kind_is_refused():
    with pytest.raises(ComponentError, match="kinds are model, iteration, decoding, cache"):
        entries("sampler")
