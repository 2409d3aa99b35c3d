"""Resource limits for tests that feed hostile files: a broken guard fails the test, not the machine."""

from __future__ import annotations

import contextlib
import resource
import signal
from typing import Iterator


def _virtual_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def memory_limit(extra_bytes: int) -> Iterator[None]:
    """Let the process map at most ``extra_bytes`` more address space inside the block.

    An allocation past it raises MemoryError (numpy) or RuntimeError (torch) at once, instead of
    paging the shared machine to death when the guard under test is missing.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _virtual_bytes() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the block after ``seconds`` (a blocking open() of a FIFO included)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
