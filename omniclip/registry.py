"""One registry for every pluggable part: modalities, lenses, converters, ...

Entries live in namespaces (``kind``). A lookup that misses tries to import the module that
conventionally defines it (``omniclip.modalities.<name>`` for modalities), then the
``omniclip.<kind>`` entry-point group, so third-party plugins register by installing a package.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from omniclip.errors import ConfigError

T = TypeVar("T")

_ENTRIES: dict[str, dict[str, Any]] = {}

# Where a missing entry of a kind is looked for before giving up.
_LAZY_MODULES: dict[str, str] = {
    "modality": "omniclip.modalities.{name}",
    "lens": "omniclip.lens",
    "converter": "omniclip.modalities.{name}",
}


def register(kind: str, name: str, obj: T | None = None) -> Callable[[T], T] | T:
    """Register ``obj`` as ``kind``/``name``; usable as a decorator when ``obj`` is omitted."""

    def _add(value: T) -> T:
        table = _ENTRIES.setdefault(kind, {})
        if name in table and table[name] is not value:
            raise ValueError(f"{kind} `{name}` is already registered")
        table[name] = value
        return value

    return _add if obj is None else _add(obj)


def _try_import(kind: str, name: str) -> None:
    pattern = _LAZY_MODULES.get(kind)
    if pattern is not None:
        module = pattern.format(name=name.split(".")[0])
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only swallow "that plugin module does not exist", never a broken import inside it.
            if exc.name is None or not module.startswith(exc.name):
                raise
    if name in _ENTRIES.get(kind, {}):
        return
    for ep in entry_points(group=f"omniclip.{kind}"):
        if ep.name == name:
            register(kind, name, ep.load())


def get(kind: str, name: str) -> Any:
    """Return the entry ``kind``/``name``; a miss raises a ConfigError listing what exists."""
    if name not in _ENTRIES.get(kind, {}):
        _try_import(kind, name)
    table = _ENTRIES.get(kind, {})
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise ConfigError(kind, f"unknown {kind} `{name}` (registered: {known})")
    return table[name]


def names(kind: str) -> list[str]:
    """Names registered under ``kind`` so far."""
    return sorted(_ENTRIES.get(kind, {}))
