"""Names of plugin API 1.x that moved, kept importable from their old modules for one minor release."""

from __future__ import annotations

import importlib
import warnings
from typing import Callable


def moved(module: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` serving ``names`` (old name -> "new.module:Name") with a DeprecationWarning."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home, _, attr = names[name].partition(":")
        warnings.warn(f"{module}.{name} is deprecated since plugin API 2.0 (CHANGELOG.md); import {attr} from {home}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), attr)

    return __getattr__
