"""Pipeline configuration: one YAML file, four component sections and the run settings.

```yaml
model:     {name: llada, path: /ckpt/LLaDA-8B-Instruct, chat_template: true}
iteration: {name: blockwise, gen_length: 256, block_length: 32, steps: 256}
decoding:  {name: low_confidence, temperature: 0.0}
cache:     {name: none}
seed: 0
dtype: bfloat16
device: cuda
```

Validation runs in two steps, as the design asks: resolve each ``name`` through the registry (unknown name:
say which exist and from which package), then validate the parameters against that component's frozen
``Config`` (say which field is wrong, its value and what is allowed). Overrides (``decoding.threshold=0.8``)
are applied to the raw mapping before validation, with values parsed as YAML scalars.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlm.errors import ComponentError, ConfigError
from dlm.registry import GROUPS, resolve

SECTIONS = tuple(GROUPS)  # model, iteration, decoding, cache
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULTS: dict[str, dict[str, Any]] = {"cache": {"name": "none"}}
DEFAULT_CONFIG = "default.yaml"


def default_config_path() -> Path:
    """The pipeline config used when none is given: the embedded demo model (``dlm/configs/default.yaml``)."""
    return Path(str(resources.files("dlm") / "configs" / DEFAULT_CONFIG))


class RunSettings(BaseModel):
    """Top-level keys besides the four sections."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, description="seed of the sampling generator")
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    device: str = Field("cpu", description="torch device, e.g. cpu, cuda, cuda:1")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads; default: half the usable cores (at least 1), never oversubscribing"
    )
    compile: bool = Field(
        False, description="torch.compile the model forward (static shapes per block geometry; CUDA graphs on cuda)"
    )
    tensor_parallel: int = Field(
        1, ge=1, description="shard attention heads and MLP over this many processes (launch with torchrun)"
    )


def default_threads() -> int:
    """Half the cores this process may use, at least one.

    torch's own default (one thread per core) oversubscribes a machine that runs anything else: on a loaded
    2-core machine a tiny-model generation took 2.46 s with it and 0.028 s with one thread, the OpenMP
    threads spin-waiting for a core. Half the cores leaves room for the rest of the machine.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (``None``: :func:`default_threads`); return the count set."""
    n = threads or default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


class ComponentChoice(BaseModel):
    """A resolved section: the component class and its validated config."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    cls: type
    config: BaseModel


class PipelineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    model: ComponentChoice
    iteration: ComponentChoice
    decoding: ComponentChoice
    cache: ComponentChoice
    run: RunSettings
    source: str = "<dict>"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.run.dtype]

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (as in YAML) of the fully validated configuration, defaults included."""
        out: dict[str, Any] = {
            s: {"name": getattr(self, s).name, **getattr(self, s).config.model_dump(mode="json")} for s in SECTIONS
        }
        out.update(self.run.model_dump())
        return out


def _describe_error(source: str, section: str | None, err: dict[str, Any], fields: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in ((section,) if section else ()) + tuple(err["loc"]))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(["name", *fields]) if section else ", ".join([*SECTIONS, *RunSettings.model_fields])
        return f"{source}: {loc}: unknown field. Allowed fields: {allowed}"
    if loc.endswith("."):
        loc = loc[:-1]
    got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    return f"{source}: {loc or section}: {msg}{got}"


def _validation_error(source: str, section: str | None, error: ValidationError, fields) -> ConfigError:
    lines = [_describe_error(source, section, e, fields) for e in error.errors()]
    return ConfigError("\n".join(lines))


def parse_overrides(overrides: list[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["decoding.threshold=0.8", ...]`` -> ``{"decoding.threshold": 0.8}`` (values parsed as YAML)."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.field=value (e.g. decoding.threshold=0.8)")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
    return out


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], source: str) -> dict[str, Any]:
    raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] in SECTIONS:
            if len(parts) != 2:
                raise ConfigError(f"override {key!r}: use section.field, e.g. {parts[0]}.name=...")
            raw.setdefault(parts[0], dict(DEFAULTS.get(parts[0], {})))
            if not isinstance(raw[parts[0]], dict):
                raise ConfigError(f"{source}: section {parts[0]!r} is not a mapping")
            raw[parts[0]][parts[1]] = value
        elif len(parts) == 1 and parts[0] in RunSettings.model_fields:
            raw[parts[0]] = value
        else:
            raise ConfigError(
                f"override {key!r} names no setting; use one of the sections {', '.join(SECTIONS)} "
                f"(as section.field=value) or {', '.join(RunSettings.model_fields)}"
            )
    return raw


def build_config(raw: Any, *, source: str = "<dict>", overrides=None) -> PipelineConfig:
    """Validate a raw mapping (parsed YAML) into a :class:`PipelineConfig`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a pipeline config is a mapping with sections {', '.join(SECTIONS)}; "
                          f"got {type(raw).__name__}")
    raw = apply_overrides(dict(raw), parse_overrides(overrides), source)
    unknown = [k for k in raw if k not in SECTIONS and k not in RunSettings.model_fields]
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key {unknown[0]!r}. Allowed: {', '.join([*SECTIONS, *RunSettings.model_fields])}"
        )
    choices = {}
    for section in SECTIONS:
        spec = raw.get(section, DEFAULTS.get(section))
        if spec is None:
            raise ConfigError(f"{source}: missing section {section!r} (with at least `name:`)")
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ConfigError(f"{source}: section {section!r} must be a mapping with a `name:` key, got {spec!r}")
        params = {k: v for k, v in spec.items() if k != "name"}
        try:
            cls = resolve(section, str(spec["name"]))
        except ComponentError as err:
            raise type(err)(f"{source}: {section}.name: {err}") from err
        try:
            config = cls.Config.model_validate(params)
        except ValidationError as err:
            raise _validation_error(source, section, err, cls.Config.model_fields) from None
        choices[section] = ComponentChoice(name=str(spec["name"]), cls=cls, config=config)
    try:
        run = RunSettings.model_validate({k: v for k, v in raw.items() if k in RunSettings.model_fields})
    except ValidationError as err:
        raise _validation_error(source, None, err, {}) from None
    return PipelineConfig(**choices, run=run, source=source)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


def load_config(path: str | Path, overrides=None) -> PipelineConfig:
    """Read, override and validate a pipeline YAML file."""
    return build_config(load_yaml(path), source=str(path), overrides=overrides)
