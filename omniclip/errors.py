"""Exceptions shared across omniclip. Each one carries enough context to act on.

Every `OmniclipError` survives a DataLoader worker with its type and message. torch re-raises a
worker's exception as ``type(exc)(text)``, ``text`` being the worker's formatted traceback, and
falls back to a bare ``RuntimeError`` when the class cannot be built from one string; so every
class here accepts that single string, keeps the original message as its own and the worker's
traceback as a note (shown with the traceback, not in ``str(exc)``).
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable


def did_you_mean(name: str, known: Iterable[str], limit: int = 3) -> str:
    """``" (closest: a, b)"`` for the known names nearest ``name``, or ``""`` if none is close."""
    close = difflib.get_close_matches(name, list(known), n=limit, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""


def _original_message(cls: type, text: str) -> str | None:
    """The message of a ``cls`` raised in a DataLoader worker, from torch's re-raise text.

    That text reads "Caught <Name> in DataLoader worker process N.\\nOriginal Traceback ...",
    ending with the traceback's last line "<module>.<Name>: <message>" (a message may span lines).
    """
    if not text.startswith(f"Caught {cls.__name__} ") or "\nOriginal Traceback" not in text:
        return None
    module = "" if cls.__module__ in ("__main__", "builtins") else f"{cls.__module__}."
    marker = f"{module}{cls.__qualname__}: "
    _, found, message = text.rpartition(marker)
    return message.rstrip("\n") if found else None


class OmniclipError(Exception):
    """Base class for errors raised by omniclip."""

    def __init__(self, message: str = "", worker_text: str | None = None) -> None:
        original = _original_message(type(self), message) if isinstance(message, str) else None
        if original is not None:
            message, worker_text = original, message
        super().__init__(message)
        if worker_text is not None and hasattr(self, "add_note"):  # Python >= 3.11
            self.add_note(worker_text)  # the worker's traceback, shown with --debug

    @classmethod
    def _parts(cls, text: str, pattern: str) -> tuple[str, str]:
        """The two fields of a message that torch rebuilt from a worker's ``text``.

        Falls back to ("?", text) for a string that is not such a re-raise.
        """
        original = _original_message(cls, text)
        match = re.fullmatch(pattern, original, re.DOTALL) if original is not None else None
        return (match.group(1), match.group(2)) if match else ("?", text)


class ConfigError(OmniclipError, ValueError):
    """A recipe or constructor argument is wrong. The message names the offending key."""

    def __init__(self, key: str, problem: str | None = None):
        worker_text = None
        if problem is None:  # one string: torch re-raising it from a DataLoader worker
            worker_text, (key, problem) = key, self._parts(key, r"config `(.*?)`: (.*)")
        self.key = key
        self.problem = problem
        super().__init__(f"config `{key}`: {problem}", worker_text)


class SampleError(OmniclipError):
    """One data sample cannot be used (unreadable, empty, NaN, ...).

    Datasets raise it with the file and the problem; `omniclip.data.SafeDataset` turns it into a
    skip-and-count or a stop, as the user chose.
    """

    def __init__(self, path: str, problem: str | None = None):
        worker_text = None
        if problem is None:  # one string: torch re-raising it from a DataLoader worker
            worker_text, (path, problem) = str(path), self._parts(str(path), r"(.*?): (.*)")
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}", worker_text)


class WeightsUnavailableError(OmniclipError, RuntimeError):
    """Pretrained weights are not on disk and cannot be downloaded (offline)."""


class CheckpointMismatchError(OmniclipError, RuntimeError):
    """A checkpoint does not map strictly onto a module; the message lists every key."""
