"""Component registries, filled from Python entry points.

Four groups: ``dlm.models``, ``dlm.iteration``, ``dlm.decoding``, ``dlm.cache``. The built-ins are declared
in dlm's own ``pyproject.toml`` through the same groups, so a plugin package is a peer of the core. Entry
points are read lazily: nothing is imported until a name is asked for. A plugin that fails to import, or
registers something that is not a component of its group, is reported naming the plugin, its package and
the cause; every other component stays usable. Two packages registering one name is an error naming both.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from pydantic import BaseModel

from dlm.errors import ComponentError, PluginError

GROUPS = {
    "model": "dlm.models",
    "iteration": "dlm.iteration",
    "decoding": "dlm.decoding",
    "cache": "dlm.cache",
}


def _base_class(kind: str) -> type:
    if kind == "model":
        from dlm.models.base import ModelAdapter as base
    elif kind == "iteration":
        from dlm.iteration.base import IterationManager as base
    elif kind == "decoding":
        from dlm.decoding.base import DecodingStrategy as base
    else:
        from dlm.cache.base import CacheManager as base
    return base


def _provider(ep: EntryPoint) -> str:
    # a distribution whose METADATA lacks a Name still has to be printable in messages and `dlm list`
    name = getattr(ep.dist, "name", None)
    return name or "<unknown package>"


@dataclass(frozen=True)
class Entry:
    """One registered name: where it comes from, not yet imported."""

    kind: str
    name: str
    providers: tuple[str, ...]  # distributions declaring it (more than one: a collision)
    targets: tuple[str, ...]  # "module:attr" of each declaration

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.providers)})"


def entries(kind: str) -> dict[str, Entry]:
    """Every name registered for ``kind`` ('model', 'iteration', 'decoding' or 'cache'), without importing."""
    if kind not in GROUPS:
        raise ComponentError(f"unknown component kind {kind!r}; kinds are {', '.join(GROUPS)}")
    found: dict[str, dict[tuple[str, str], None]] = {}
    for ep in entry_points(group=GROUPS[kind]):
        # the same distribution can be seen twice (e.g. an editable install on sys.path twice): dedupe
        found.setdefault(ep.name, {})[(_provider(ep), ep.value)] = None
    return {
        name: Entry(kind, name, tuple(p for p, _ in decls), tuple(v for _, v in decls))
        for name, decls in sorted(found.items())
    }


def available(kind: str) -> str:
    """'name (package), …' for error messages."""
    return ", ".join(e.describe() for e in entries(kind).values()) or "none"


def resolve(kind: str, name: str) -> type:
    """The component class registered as ``name`` in ``kind``'s group, imported now and checked."""
    known = entries(kind)
    entry = known.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ComponentError(
            f"unknown {kind} component {name!r}.{hint} Available {kind} components: {available(kind)}"
        )
    if len(set(entry.providers)) > 1 or len(entry.targets) > 1:
        raise ComponentError(
            f"{kind} component {name!r} is registered more than once: "
            + "; ".join(f"{t} by package {p}" for p, t in zip(entry.providers, entry.targets))
            + ". Uninstall one of these packages."
        )
    return _load(entry)


def _load(entry: Entry) -> type:
    (target,), (provider,) = entry.targets, entry.providers
    group = GROUPS[entry.kind]
    ep = EntryPoint(name=entry.name, value=target, group=group)
    try:
        obj = ep.load()
    except (Exception, SystemExit) as err:  # a plugin may raise anything at import time, even sys.exit()
        raise PluginError(
            f"plugin {entry.name!r} ({target}) from package {provider} failed to import: "
            f"{type(err).__name__}: {err}"
        ) from err
    base = _base_class(entry.kind)
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise PluginError(
            f"plugin {entry.name!r} from package {provider} registers {target} in group {group}, which is "
            f"{obj!r}, not a subclass of {base.__module__}.{base.__name__}"
        )
    config = getattr(obj, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise PluginError(
            f"plugin {entry.name!r} from package {provider}: {target} has no pydantic `Config` class "
            "(each component declares its frozen config as a `Config` class attribute)"
        )
    return obj


def check_entry(entry: Entry) -> str | None:
    """Why ``entry`` cannot be used (import failure, wrong kind, collision), or None when it loads."""
    try:
        resolve(entry.kind, entry.name)
    except ComponentError as err:
        return str(err)
    return None
