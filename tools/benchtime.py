"""Timing shared by the benchmark scripts in tools/ (they import it from their own folder)."""

from __future__ import annotations

import time
from typing import Callable

import torch


def best_times(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds (seconds), after one warm-up.

    Rounds are interleaved, so load from other processes on a shared machine hits every
    function alike instead of whichever happened to run during a busy spell.
    """
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best
