"""Exceptions shared across omniclip. Each one carries enough context to act on."""

from __future__ import annotations


class OmniclipError(Exception):
    """Base class for errors raised by omniclip."""


class ConfigError(OmniclipError, ValueError):
    """A recipe or constructor argument is wrong. The message names the offending key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config `{key}`: {problem}")


class SampleError(OmniclipError):
    """One data sample cannot be used (unreadable, empty, NaN, ...).

    Datasets raise it with the file and the problem; `omniclip.data.SafeDataset` turns it into a
    skip-and-count or a stop, as the user chose.
    """

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class WeightsUnavailableError(OmniclipError, RuntimeError):
    """Pretrained weights are not on disk and cannot be downloaded (offline)."""


class CheckpointMismatchError(OmniclipError, RuntimeError):
    """A checkpoint does not map strictly onto a module; the message lists every key."""
