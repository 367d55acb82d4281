"""YAML pipelines: validation errors name the file, field, value and what is allowed; overrides work."""

from __future__ import annotations

import pytest

from dlm import ComponentError, ConfigError, Pipeline
from dlm.config import build_config, load_config, parse_overrides

GOOD = """\
model: {name: llada, path: CKPT}
iteration: {name: blockwise, gen_length: 16, block_length: 8, steps: 16}
decoding: {name: threshold, threshold: 0.9}
cache: {name: dual}
seed: 3
dtype: float64
"""


@pytest.fixture
def good_yaml(tmp_path, tiny_ckpt):
    path = tmp_path / "pipe.yaml"
    path.write_text(GOOD.replace("CKPT", str(tiny_ckpt)))
    return path


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_valid_file_resolves_components_and_defaults(good_yaml):
    cfg = load_config(good_yaml)
    assert cfg.decoding.name == "threshold" and cfg.decoding.config.threshold == 0.9
    assert cfg.decoding.config.temperature == 0.0  # default filled in
    assert cfg.run.seed == 3 and cfg.run.dtype == "float64" and cfg.run.device == "cpu"
    assert cfg.to_dict()["cache"] == {"name": "dual"}


def test_cache_section_defaults_to_none(tmp_path, tiny_ckpt):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith("cache"))
    assert load_config(write(tmp_path, text.replace("CKPT", str(tiny_ckpt)))).cache.name == "none"


def test_overrides_change_values_and_parse_yaml_scalars(good_yaml):
    cfg = load_config(good_yaml, ["decoding.threshold=0.8", "seed=11", "iteration.early_stop=true", "cache.name=prefix"])
    assert cfg.decoding.config.threshold == 0.8 and cfg.run.seed == 11
    assert cfg.iteration.config.early_stop is True and cfg.cache.name == "prefix"


def test_configs_are_frozen(good_yaml):
    cfg = load_config(good_yaml)
    with pytest.raises(Exception):
        cfg.decoding.config.threshold = 0.1


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("decoding.threshold=1.5", r"--set decoding\.threshold=1\.5: decoding\.threshold: Input should be less than or equal to 1 \(got 1\.5\)"),
        ("decoding.treshold=0.5", r"decoding\.treshold: unknown field\. Did you mean 'threshold'\? Allowed fields: name, threshold, temperature"),
        ("iteration.block_length=5", r"iteration: block_length \(5\) must divide gen_length \(16\)"),
        ("dtype=float8", r"dtype: Input should be 'float32', 'float64', 'bfloat16' or 'float16' \(got 'float8'\)"),
        ("iteration.steps=abc", r"iteration\.steps: Input should be a valid integer.*\(got 'abc'\)"),
    ],
)
def test_validation_errors_name_file_field_value_and_allowed(tmp_path, tiny_ckpt, override, pattern):
    path = write(tmp_path, GOOD.replace("CKPT", str(tiny_ckpt)))
    with pytest.raises(ConfigError, match=pattern):
        load_config(path, [override])


def test_unknown_component_lists_available_with_providers_and_suggests(good_yaml):
    with pytest.raises(ComponentError, match=r"decoding\.name: unknown decoding component 'treshold'\. Did you mean 'threshold'\?.*low_confidence \(dlm\)"):
        load_config(good_yaml, ["decoding.name=treshold"])


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("model: [unclosed", r"bad\.yaml: not valid YAML"),
        ("- a\n- b\n", r"a pipeline config is a mapping"),
        ("iteration: {name: blockwise}\ndecoding: {name: threshold}\n", r"missing section 'model'"),
        ("model: {path: x}\niteration: {name: blockwise}\ndecoding: {name: threshold}\n", r"section 'model' must be a mapping with a `name:` key"),
        ("modle: {name: llada}\n", r"unknown top-level key 'modle'\. Did you mean 'model'\? Allowed: model, iteration, decoding, cache, seed, dtype, device"),
    ],
)
def test_malformed_files(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does-not-exist.yaml does not exist"):
        load_config(tmp_path / "does-not-exist.yaml")


@pytest.mark.parametrize("item", ["decoding.threshold", "=3", "nosuch.field=1", "decoding.a.b=1"])
def test_bad_overrides(good_yaml, item):
    with pytest.raises(ConfigError):
        load_config(good_yaml, [item])


def test_parse_overrides_types():
    assert parse_overrides(["a.b=1", "a.c=0.5", "a.d=true", "a.e=text", "a.f=[1, 2]"]) == {
        "a.b": 1, "a.c": 0.5, "a.d": True, "a.e": "text", "a.f": [1, 2]}


def test_from_yaml_builds_a_working_pipeline(good_yaml):
    pipe = Pipeline.from_yaml(good_yaml, overrides=["iteration.gen_length=8", "iteration.steps=8"])
    out = pipe.generate(input_ids=[[5, 6, 7]])
    assert out.generated[0].numel() == 8 and out.nfe[0] >= 1


def test_bad_model_path_fails_before_generation(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        Pipeline.from_config(build_config({
            "model": {"name": "llada", "path": str(tmp_path / "nope")},
            "iteration": {"name": "blockwise"}, "decoding": {"name": "low_confidence"}}))
