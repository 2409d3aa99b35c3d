"""Helpers for reading the demos' results.json in tests."""

from collections.abc import Iterator, Mapping
from typing import Any


def accuracies(record: Mapping[str, Any]) -> Iterator[float]:
    """Every accuracy of one variant's record, raw and calibrated."""
    for mode in ("raw", "calibrated"):
        for key in ("all", "seen", "held_out", "held_out_among_held_out"):
            yield record[mode][key]
