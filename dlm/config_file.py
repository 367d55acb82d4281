"""Reading a pipeline YAML file strictly: UTF-8 only, safe loading, no key repeated in a mapping.

Plain YAML lets a repeated key silently win; a config file is edited by hand, so a repeated key is far more
likely a mistake than an intent. Every problem is a :class:`~dlm.errors.ConfigError` naming the file, the
line and the column.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from dlm.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (plain YAML lets the last one win)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: SafeLoader reports it below
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {first}); a key may appear once in a "
                            "mapping", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely, refusing duplicate keys; errors name ``source``."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        detail = " ".join(str(getattr(err, "problem", None) or err).split())
        context = getattr(err, "context", None)
        raise ConfigError(f"{source}: not valid YAML: {where}{detail}" + (f" ({context})" if context else "")) from None


def load_yaml(path: str | Path) -> Any:
    """The parsed contents of a YAML file; a missing, unreadable or non-UTF-8 file is a :class:`ConfigError`."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"a config path is a string or a pathlib.Path; got {type(path).__name__} {path!r}")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a pipeline YAML file")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:  # a regular file, or a pipe such as /dev/stdin
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    return parse_yaml(text, str(path))
