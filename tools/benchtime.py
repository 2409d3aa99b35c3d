"""Timing and CPU memory measurement shared by the benchmark scripts in tools/ (they import it
from their own folder)."""

from __future__ import annotations

import ctypes
import gc
import resource
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



def rss_mb() -> float:
    """This process's resident memory now (MiB; 0 where /proc is missing)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so that it covers what follows only; False
    where that is not possible (then `peak_rss_mb` is the peak since the process started)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory since the last `reset_peak_rss` (MiB)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_freed_memory() -> None:
    """Hand memory freed by a previous measurement back to the OS (glibc ``malloc_trim``): without
    it the allocator keeps those pages resident, the next measurement reuses them, and its RSS
    hardly grows however much it allocates."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure may then understate
        pass

