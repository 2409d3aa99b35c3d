"""One registry for every pluggable part: modalities, lenses, converters, ...

Entries live in namespaces (``kind``). A lookup that misses tries to import the module that
conventionally defines it (``omniclip.modalities.<name>`` for modalities), then the
``omniclip.<kind>`` entry-point group, so third-party plugins register by installing a package.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from omniclip.errors import ConfigError, did_you_mean

T = TypeVar("T")

_ENTRIES: dict[str, dict[str, Any]] = {}

# Where a missing entry of a kind is looked for before giving up.
_LAZY_MODULES: dict[str, str] = {
    "modality": "omniclip.modalities.{name}",
    "lens": "omniclip.lens",
    "converter": "omniclip.modalities.{name}",
}

# Packages whose sub-packages register entries of a kind when imported: listing every entry of
# the kind (for a message) imports them all, so that built-ins not yet used are named too.
_PLUGIN_PACKAGES: dict[str, str] = {
    "modality": "omniclip.modalities",
    "converter": "omniclip.modalities",
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


def import_plugins(kind: str) -> list[str]:
    """Import every built-in package and entry point that may register ``kind`` entries.

    Returns why any of them could not be imported (an optional extra such as h5py missing).
    """
    problems = []
    package = _PLUGIN_PACKAGES.get(kind)
    if package is not None:
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            if info.ispkg:
                try:
                    importlib.import_module(f"{package}.{info.name}")
                except ImportError as exc:
                    problems.append(f"`{info.name}` not importable: {exc}")
    for ep in entry_points(group=f"omniclip.{kind}"):
        if ep.name not in _ENTRIES.get(kind, {}):
            try:
                register(kind, ep.name, ep.load())
            except ImportError as exc:
                problems.append(f"plugin `{ep.name}` not importable: {exc}")
    return problems


def get(kind: str, name: str) -> Any:
    """Return the entry ``kind``/``name``; a miss raises a ConfigError listing every known entry."""
    if name not in _ENTRIES.get(kind, {}):
        _try_import(kind, name)
    if name not in _ENTRIES.get(kind, {}):
        problems = import_plugins(kind)
        table = _ENTRIES.get(kind, {})
        if name in table:  # registered by a package not named after it
            return table[name]
        known = ", ".join(sorted(table)) or "none"
        unavailable = f"; {'; '.join(problems)}" if problems else ""
        raise ConfigError(kind, f"unknown {kind} `{name}`{did_you_mean(name, table)} "
                                f"(known: {known}{unavailable})")
    return _ENTRIES[kind][name]


def names(kind: str) -> list[str]:
    """Names registered under ``kind`` so far."""
    return sorted(_ENTRIES.get(kind, {}))
