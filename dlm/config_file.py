"""Reading a pipeline YAML file strictly and with bounded work: UTF-8 only, safe loading, no key repeated
in a mapping, a size cap, a nesting cap and an alias-expansion cap.

Plain YAML lets a repeated key silently win; a config file is edited by hand, so a repeated key is far more
likely a mistake than an intent. Merge keys (``<<: *defaults``) are YAML 1.1 and work: the keys they bring
in are defaults that the mapping's own keys override, as the YAML spec says, and only the mapping's own keys
must be unique.

No input may make dlm read, allocate or loop without a bound before it says no (docs/errors.md): only a
regular file is read (a device, a pipe or a socket given as a config is refused at once, before it is
opened, so ``/dev/zero`` cannot be read for ever and a FIFO cannot block), it is read up to
:data:`MAX_CONFIG_BYTES`, its nesting is capped at :data:`MAX_DEPTH` while it is parsed (before a tree is
built), and aliases may expand it to at most :data:`MAX_NODES` nodes (a "billion laughs" file of a few
hundred bytes would otherwise expand to gigabytes). Every problem is a :class:`~dlm.errors.ConfigError`
naming the file, and the line and the column where YAML knows them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from dlm.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a pipeline config is a few hundred bytes
MAX_DEPTH = 32  # nested mappings/sequences; a pipeline config needs 3
MAX_NODES = 100_000  # scalars, mappings and sequences once aliases are expanded


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (plain YAML lets the last one win)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden
            continue
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


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _check_depth(text: str, source: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH`, from the event stream (no tree built, no recursion)."""
    depth = 0
    for event in yaml.parse(text, Loader=_UniqueKeyLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"{source}: {_where(event.start_mark)}nesting deeper than {MAX_DEPTH} levels; a pipeline "
                    "config is a mapping of sections, each a mapping of settings (3 levels)"
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_expansion(node: yaml.Node | None, source: str) -> None:
    """Refuse a document whose aliases expand it beyond :data:`MAX_NODES` nodes, counting without expanding."""
    budget = MAX_NODES
    stack = [(node, 0)] if node is not None else []
    while stack:
        current, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > MAX_DEPTH:
            reason = (f"expands to more than {MAX_NODES} values" if budget < 0
                      else f"nests deeper than {MAX_DEPTH} levels through its aliases")
            raise ConfigError(
                f"{source}: {_where(current.start_mark)}the document {reason} (aliases such as *name repeat what "
                "their anchor holds); a pipeline config needs a few dozen values: write them out"
            )
        if isinstance(current, yaml.MappingNode):
            stack.extend((n, depth + 1) for pair in current.value for n in pair)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((n, depth + 1) for n in current.value)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely, refusing duplicate keys, deep nesting and alias bombs; errors name ``source``."""
    try:
        _check_depth(text, source)
        loader = _UniqueKeyLoader(text)
        try:
            node = loader.get_single_node()
            _check_expansion(node, source)
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        detail = " ".join(str(getattr(err, "problem", None) or err).split())
        context = getattr(err, "context", None)
        hint = ""
        if "tag:yaml.org,2002:merge" in detail:
            hint = "; a merge key `<<` takes an alias of a mapping (<<: *defaults) or a list of them"
        raise ConfigError(
            f"{source}: not valid YAML: {_where(mark)}{detail}" + (f" ({context})" if context else "") + hint
        ) from None
    except RecursionError:  # unreachable after the caps above; kept so no input can give a traceback
        raise ConfigError(f"{source}: the document nests too deeply to read") from None


def _stat(path: Path) -> os.stat_result:
    """``os.stat`` with each failure told apart: missing, a symlink loop, a dangling link, no permission."""
    try:
        return path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigError(f"config file {path} is a symbolic link that loops back on itself; point it at a "
                              "YAML file") from None
        if err.errno == errno.ENOENT and path.is_symlink():
            raise ConfigError(f"config file {path} is a symbolic link to {os.readlink(path)}, which does not "
                              "exist") from None
        if err.errno == errno.ENOENT:
            raise ConfigError(f"config file {path} does not exist") from None
        if err.errno == errno.ENOTDIR:
            raise ConfigError(f"config file {path}: a parent of it is a file, not a directory") from None
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None


def read_text(path: str | os.PathLike, *, what: str = "config file", limit: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes; anything else is a :class:`ConfigError`.

    A directory, a device, a pipe or a socket is refused before it is opened (reading ``/dev/zero`` or a
    FIFO would never end); the size is checked before the read and again while reading (a file that grows).
    """
    path = Path(path)
    st = _stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is a directory; give a pipeline YAML file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
                else "a pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "not a regular file")
        raise ConfigError(f"{what} {path} is {kind}; give a regular YAML file (save the text to a file first)")
    if st.st_size > limit:
        raise ConfigError(f"{what} {path} has {st.st_size} bytes; the limit is {limit} (a pipeline config is a "
                          "few hundred bytes): is it the right file?")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {path} has more than {limit} bytes (it grew while being read); the limit is "
                          f"{limit}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None


def load_yaml(path: str | Path) -> Any:
    """The parsed contents of a YAML file; a missing, unreadable, oversized, non-regular or non-UTF-8 file is a
    :class:`ConfigError`."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"a config path is a string or a pathlib.Path; got {type(path).__name__} {path!r}")
    if isinstance(path, str) and not path.strip():
        raise ConfigError("the config path is empty; give a pipeline YAML file")
    return parse_yaml(read_text(path), str(path))
