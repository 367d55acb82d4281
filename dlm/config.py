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
are applied to the raw mapping before validation, with values parsed as YAML scalars. Every problem of every
section is reported at once, one line each, attributed to where the value came from: the file, or the
``--set`` override that supplied it (docs/configuration.md, docs/errors.md).
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dlm.config_file import load_yaml, parse_yaml  # noqa: F401  (re-exported: dlm.config.load_yaml)
from dlm.errors import ComponentError, ConfigError, DlmError
from dlm.registry import GROUPS, available, resolve

SECTIONS = tuple(GROUPS)  # model, iteration, decoding, cache
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
# sections that may be omitted, with the value they then take; model, iteration and decoding are required
# (they are the algorithm, and the right iteration manager depends on the model family: docs/configuration.md)
DEFAULTS: dict[str, dict[str, Any]] = {"cache": {"name": "none"}}
DEVICE_TYPES = ("cpu", "cuda")
MAX_SEED = 2**63 - 1  # row r draws from seed + r, which must stay below torch's 2**64 limit
MAX_THREADS = 1024
DEFAULT_CONFIG = "default.yaml"
# component settings that size buffers or loops (gen_length, block_length, steps, ...): bounded before any
# validator or component iterates up to them (docs/errors.md); the longest context dlm loads, 2**20
SIZING = re.compile(r"(length|steps|size|tokens|window|blocks)$")
MAX_SIZE_SETTING = 1 << 20
EXTENSION_PREFIX = "x-"  # top-level keys ignored: holders of YAML anchors (docs/configuration.md)


def default_config_path() -> Path:
    """The pipeline config used when none is given: the embedded demo model (``dlm/configs/default.yaml``)."""
    return Path(str(resources.files("dlm") / "configs" / DEFAULT_CONFIG))


class RunSettings(BaseModel):
    """Top-level keys besides the four sections."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the sampling generator (row r uses seed + r)")
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    device: str = Field("cpu", description="torch device: cpu, cuda or cuda:N")
    threads: int | None = Field(
        None, ge=1, le=MAX_THREADS,
        description="torch CPU threads; default: half the usable cores (at least 1), never oversubscribing",
    )
    compile: bool = Field(
        False, description="torch.compile the model forward (static shapes per block geometry; CUDA graphs on cuda)"
    )
    tensor_parallel: int = Field(
        1, ge=1, description="shard attention heads and MLP over this many processes (launch with torchrun)"
    )
    expert_parallel: int = Field(
        1, ge=1, description="split a sparse MoE model's routed experts over this many processes (launch with torchrun)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        try:
            device = torch.device(value)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{value!r} is not a torch device; use cpu, cuda or cuda:N (N: the GPU index)") from err
        if device.type not in DEVICE_TYPES:
            raise ValueError(f"device type {device.type!r} is not supported; dlm runs on cpu, cuda or cuda:N")
        return value


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
        if out["model"].get("path", "") is None:  # left out means the embedded model; an explicit null is refused
            del out["model"]["path"]
        out.update(self.run.model_dump())
        return out


class _Problems:
    """Every problem found in one config, each a line attributed to its source, raised together at the end."""

    def __init__(self) -> None:
        self.items: list[tuple[type[DlmError], str]] = []

    def add(self, where: str, what: str, kind: type[DlmError] = ConfigError) -> None:
        self.items.append((kind, f"{where}: {what}"))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        kinds = {k for k, _ in self.items}
        kind = kinds.pop() if len(kinds) == 1 else ConfigError
        raise kind("\n".join(line for _, line in self.items))


def _types(annotation: Any) -> set:
    """The plain types a field annotation admits, unions and ``Annotated`` unwrapped."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_types(a) for a in typing.get_args(annotation)))
    if origin is typing.Annotated:
        return _types(typing.get_args(annotation)[0])
    return {origin or annotation}


def _bool_misuse(annotation: Any, value: Any) -> bool:
    """True when ``value`` (or an element of it) is a boolean given for a number, which pydantic would
    silently turn into 0 or 1 (``gen_length: true``)."""
    if isinstance(value, bool):
        admitted = _types(annotation)
        return bool(admitted & {int, float}) and not admitted & {bool, Any, object}
    if isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value):
        members = [a for a in typing.get_args(annotation) if typing.get_origin(a) in (tuple, list)]
        if typing.get_origin(annotation) in (tuple, list):
            members.append(annotation)
        inner = [e for m in members for e in typing.get_args(m) if e is not Ellipsis]
        return any(_bool_misuse(e, True) for e in inner)
    return False


def _non_finite(value: Any) -> bool:
    """A NaN or infinity (YAML .nan / .inf), alone or in a list: never a meaningful setting."""
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return isinstance(value, float) and (value != value or value in (float("inf"), float("-inf")))


def _describe(err: dict[str, Any], loc: str, allowed: list[str]) -> str:
    """One line for one pydantic error: field, what is wrong, the value given and what is allowed."""
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc.rpartition(".")[2], allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"{loc}: unknown field.{hint} Allowed fields: {', '.join(allowed)}"
    msg = err["msg"].removeprefix("Value error, ")
    shown = "input" in err and not isinstance(err["input"], dict) and repr(err["input"]) not in msg
    got = f" (got {err['input']!r})" if shown else ""
    return f"{loc}: {msg}{got}"


def _override_labels(overrides: Any) -> dict[str, str]:
    """Override key -> how the user wrote it (``--set decoding.threshold=0.8``), to attribute errors."""
    if isinstance(overrides, Mapping):
        return {str(k): f"--set {k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in overrides.items()}
    labels = {}
    for item in overrides or ():
        key, _, value = str(item).partition("=")
        labels[key.strip()] = f"--set {key.strip()}={value.strip()}"
    return labels


def check_overrides_type(overrides: Any) -> None:
    """Overrides are None, a mapping ``{"decoding.threshold": 0.8}`` or a list of ``"key=value"`` strings."""
    if overrides is None or isinstance(overrides, Mapping):
        bad = [k for k in (overrides or {}) if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"override keys are strings like 'decoding.threshold'; got {bad[0]!r}")
        return
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, (list, tuple)):
        raise ConfigError(
            f"overrides must be a list of 'section.field=value' strings (e.g. ['decoding.threshold=0.8']) or a "
            f"mapping; got {type(overrides).__name__} {overrides!r}"
            + (f"; wrap it in a list: [{overrides!r}]" if isinstance(overrides, str) else "")
        )
    for item in overrides:
        if not isinstance(item, str):
            raise ConfigError(
                f"override {item!r} is a {type(item).__name__}; each override is a 'section.field=value' string"
            )


def parse_overrides(overrides: list[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["decoding.threshold=0.8", ...]`` -> ``{"decoding.threshold": 0.8}`` (values parsed as YAML)."""
    check_overrides_type(overrides)
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.field=value (e.g. decoding.threshold=0.8)")
        out[key.strip()] = parse_yaml(value, f"--set {item}") if value.strip() else ""
    return out


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``raw`` with each override set; a malformed override key raises :class:`ConfigError`."""
    problems = _Problems()
    raw = _apply(raw, overrides, _override_labels(overrides), problems, source)
    problems.raise_if_any()
    return raw


def _apply(raw: dict, overrides: Mapping[str, Any], labels: dict[str, str], problems: _Problems, source: str) -> dict:
    raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    for key, value in overrides.items():
        label = labels.get(key, f"--set {key}")
        parts = key.split(".")
        if parts[0] in SECTIONS:
            if len(parts) != 2 or not parts[1]:
                problems.add(label, f"use section.field=value, e.g. {parts[0]}.name=...")
                continue
            if isinstance(raw.get(parts[0]), str):
                raw[parts[0]] = {"name": raw[parts[0]]}
            raw.setdefault(parts[0], dict(DEFAULTS.get(parts[0], {})))
            if not isinstance(raw[parts[0]], dict):
                problems.add(source, f"section {parts[0]!r} is not a mapping, so {label} cannot set a field of it")
                continue
            raw[parts[0]][parts[1]] = value
        elif len(parts) == 1 and parts[0] in RunSettings.model_fields:
            raw[parts[0]] = value
        else:
            problems.add(
                label,
                f"{key!r} names no setting; use one of the sections {', '.join(SECTIONS)} "
                f"(as section.field=value) or {', '.join(RunSettings.model_fields)}",
            )
    return raw


def build_config(raw: Any, *, source: str = "<dict>", overrides=None) -> PipelineConfig:
    """Validate a raw mapping (parsed YAML) into a :class:`PipelineConfig`.

    Every problem is collected first and raised together (one line each): a :class:`ConfigError`, or the
    :class:`ComponentError` of an unknown component name when that is the only problem.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a pipeline config is a mapping with sections {', '.join(SECTIONS)}; "
                          f"got {type(raw).__name__}")
    problems = _Problems()
    values = parse_overrides(overrides)
    labels = _override_labels(overrides)
    # top-level keys starting with "x-" hold YAML anchors for merge keys (`x-base: &base {...}` then
    # `iteration: {<<: *base, steps: 8}`), as in Compose files; they configure nothing themselves
    raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))}
    in_file = set(raw)
    raw = _apply(dict(raw), values, labels, problems, source)

    def where(*path: str) -> str:
        """The override that set ``path`` (a field), or the file."""
        return labels.get(".".join(path), f"--set {'.'.join(path)}") if ".".join(path) in values else source

    def contributors(section: str) -> str:
        """The file and the overrides that shaped a section (for errors about the section as a whole)."""
        sets = [labels.get(k, k) for k in values if k.partition(".")[0] == section]
        return ", ".join(([source] if section in in_file or not sets else []) + sets)

    allowed_top = [*SECTIONS, *RunSettings.model_fields]
    for key in raw:
        if key not in allowed_top:
            close = difflib.get_close_matches(str(key), allowed_top, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.add(source, f"unknown top-level key {key!r}.{hint} Allowed: {', '.join(allowed_top)}")
    choices = {}
    for section in SECTIONS:
        spec = raw.get(section)  # absent or empty (`cache:` with no value): the default, if the section has one
        spec = DEFAULTS.get(section) if spec is None else spec
        choice = _section(section, spec, where, contributors, problems, source)
        if choice is not None:
            choices[section] = choice
    run_raw = {k: v for k, v in raw.items() if k in RunSettings.model_fields}
    run = _validate(RunSettings, run_raw, None, where, contributors, problems)
    problems.raise_if_any()
    return PipelineConfig(**choices, run=run, source=source)


def _section(section, spec, where, contributors, problems: _Problems, source: str) -> ComponentChoice | None:
    """Resolve and validate one section, adding its problems; None when it cannot be built."""
    if spec is None:
        problems.add(source, f"missing section {section!r}; it is required, e.g. `{section}: {{name: ...}}` with one "
                             f"of the {section} components: {available(section)}")
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        problems.add(contributors(section), f"section {section!r} must be a mapping with a `name:` key, got {spec!r}")
        return None
    if not isinstance(spec["name"], str) or not spec["name"]:
        problems.add(where(section, "name"),
                     f"{section}.name must be a component name (a string), got {spec['name']!r}")
        return None
    try:
        cls = resolve(section, spec["name"])
    except ComponentError as err:
        problems.add(where(section, "name"), f"{section}.name: {err}", type(err))
        return None
    params = {k: v for k, v in spec.items() if k != "name"}
    config = _validate(cls.Config, params, section, where, contributors, problems)
    return None if config is None else ComponentChoice(name=spec["name"], cls=cls, config=config)


def _validate(model: type[BaseModel], params: dict, section: str | None, where, contributors, problems: _Problems):
    """``model.model_validate(params)``, each error added as a line naming the field and its source."""
    prefix = (section,) if section else ()
    allowed = (["name", *model.model_fields] if section else [*SECTIONS, *RunSettings.model_fields])
    booleans = [k for k, v in params.items() if k in model.model_fields
                and _bool_misuse(model.model_fields[k].annotation, v)]
    for key in booleans:
        problems.add(where(*prefix, key), f"{'.'.join((*prefix, key))}: expected a number, got a boolean "
                                          f"({str(params[key]).lower()})")
    for key, value in params.items():
        if (section and key not in booleans and isinstance(value, int) and not isinstance(value, bool)
                and SIZING.search(key) and value > MAX_SIZE_SETTING):
            booleans.append(key)  # refused before any validator iterates up to it
            problems.add(where(*prefix, key), f"{'.'.join((*prefix, key))}: {value} is beyond dlm's bound of "
                                              f"{MAX_SIZE_SETTING} (no model's context is longer); give a length "
                                              "that fits the model")
        if key not in booleans and _non_finite(value):
            booleans.append(key)  # refused like a boolean: reported here, left out of pydantic's checks
            problems.add(where(*prefix, key), f"{'.'.join((*prefix, key))}: expected a finite number, got {value}")
    try:
        config = model.model_validate({k: v for k, v in params.items() if k not in booleans})
    except ValidationError as err:
        for e in err.errors():
            field = [str(p) for p in e["loc"]]
            if not field and booleans:  # a cross-field check over a value already reported
                continue
            src = where(*prefix, field[0]) if field else contributors(section) if section else "<run settings>"
            problems.add(src, _describe(e, ".".join([*prefix, *field]) or str(section), allowed))
        return None
    return None if booleans else config


def load_config(path: str | Path, overrides=None) -> PipelineConfig:
    """Read, override and validate a pipeline YAML file."""
    return build_config(load_yaml(path), source=str(path), overrides=overrides)


def default_config(overrides=None) -> PipelineConfig:
    """The built-in default pipeline (``dlm/configs/default.yaml``: the embedded demo model), validated."""
    return load_config(default_config_path(), overrides)
