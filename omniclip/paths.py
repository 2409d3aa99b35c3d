"""Keeping paths that come from data (manifests, split lists, archives) inside their folder.

A manifest is data, not configuration: a path in it that is absolute or climbs out with ``..``
would make a dataset read any file the user can read (``../../etc/passwd``; with
``trust_pickle`` that is arbitrary unpickling), and an archive member named that way would make
a prepare tool write anywhere ("zip slip"). Both go through `escape_problem`, one lexical rule:

- the path must be a string (a JSON manifest can hold a number or ``null`` there);
- it must be relative (no leading ``/``, no Windows drive) and, once ``.`` and ``..`` are
  resolved lexically, stay below the folder.

The check is lexical on purpose: symbolic links inside a dataset root (``audio -> /mnt/big``)
are a common, legitimate layout and keep working; what is refused is a path that *names* a
place outside.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from omniclip.errors import ConfigError, SampleError

ALLOW_KEY = "allow_outside_root"


def _form_problem(relative: Any) -> str | None:
    """What makes ``relative`` no path at all (a number, ``null``, empty, a NUL byte)."""
    if not isinstance(relative, (str, os.PathLike)) or not isinstance(os.fspath(relative), str):
        return f"path is {type(relative).__name__} {relative!r}, not a string"
    text = os.fspath(relative)
    if not text.strip():
        return f"path {text!r} is empty"
    if "\0" in text:
        return f"path {text!r} holds a NUL byte"
    return None


def _place_problem(text: str) -> str | None:
    """What takes path ``text`` outside the folder it is joined to."""
    # Backslashes separate folders on Windows and in some zip writers; treat them as such here.
    posix = text.replace("\\", "/")
    # "C:\\x" and "c:x" name a drive on Windows (drive-relative for the latter)
    drive = len(posix) > 1 and posix[1] == ":" and posix[0].isascii() and posix[0].isalpha()
    if posix.startswith("/") or drive:
        return f"path {text!r} is absolute"
    normal = posixpath.normpath(posix)
    if normal == ".." or normal.startswith("../"):
        return f"path {text!r} climbs out of the folder with '..'"
    return None


def escape_problem(relative: Any) -> str | None:
    """Why ``relative`` may not be joined to a root, or None when it stays inside."""
    return _form_problem(relative) or _place_problem(os.fspath(relative))


def resolve_in_root(
    root: Path,
    relative: Any,
    *,
    allow_outside: bool = False,
    where: str | Path | None = None,
    key: str | None = None,
) -> Path:
    """``root / relative``, refusing a ``relative`` that leaves ``root`` unless ``allow_outside``.

    The error names ``where`` (the manifest and entry the path came from; default the joined
    path) and how to allow such paths. It is a `ConfigError` on ``key`` when the path is checked
    while a dataset is built (``key`` set), else a `SampleError`, which the skip policy counts.
    A path that is no path (`_form_problem`) is refused even with ``allow_outside``.
    """
    problem = _form_problem(relative)
    if problem is None:
        text = os.fspath(relative)
        place = None if allow_outside else _place_problem(text)
        if place is None:
            return Path(root) / text
        problem = (f"{place}: manifest paths must stay inside the dataset root {root} "
                   f"(set `{ALLOW_KEY}: true` to read files outside it)")
    where = str(where) if where is not None else str(Path(root) / str(relative))
    if key is not None:
        raise ConfigError(key, f"{where}: {problem}")
    raise SampleError(where, problem)


def archive_target(out: Path, member: str) -> Path:
    """Where archive member ``member`` goes under ``out``; ValueError when it would land outside."""
    problem = escape_problem(member)
    if problem is not None:
        raise ValueError(f"archive member {member!r} would be written outside {out} ({problem}); "
                         "refusing the archive")
    return Path(out) / posixpath.normpath(member.replace("\\", "/"))
