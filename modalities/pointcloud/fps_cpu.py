"""Exact farthest point sampling on CPU, pruned by spatial blocks (numba).

The reference rule (``ops._fps_torch``) updates every point's running minimum for every centre:
N x npoint distance evaluations. Most of them cannot change anything: once a few centres are
chosen, a new centre only lowers the running minimum of points near it. This module groups each
cloud's points into blocks of neighbours (sorted by Morton code, ``BLOCK`` points each) and keeps,
per block, its bounding box and the largest running minimum of its points with the smallest
original index holding it. A block whose box lies at least that far (squared) from the new centre
is skipped: none of its points can lower its minimum. The next centre is the largest block maximum,
ties to the smallest original index, i.e. the first arg-max of the reference.

Exactness: every distance that is computed is the reference's float32 ``(dx*dx + dy*dy) + dz*dz``,
rounded at every step (numba does not contract to fused multiply-adds without ``fastmath``), and
the minimum only changes where the reference's would. The skip test is computed in float64 from the
box and shrunk by ``MARGIN`` (relative) and ``TINY`` (absolute) so that the float32 distance, a few
roundings below the exact one at most (or a subnormal's absolute error), still cannot fall below the
block maximum when a block is skipped. ``ops`` checks the input first (finite, squared span far below
the 1e10 start value, as for fpsample) and runs a self-check before it trusts this module.

Importing the module imports numba but compiles nothing; the first call compiles (``cache=True``:
once per machine, later processes load the cached machine code). Batches run one cloud per
thread (`fps_clouds`).
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

#: Points per block: small blocks prune finer, large ones cost fewer box tests per centre and
#: vectorize better. One random cloud on one thread, 2-core machine at load ~1.5 (ms, block
#: 16 / 32 / 48 / 64 / 96 / 128): 8192 -> 512: 2.06 / 1.52 / 1.39 / 1.29 / 1.25 / 1.23;
#: 1024 -> 512: 0.42 / 0.32 / 0.31 / 0.28 / 0.28 / 0.28. 64 is within 5% of the best of both; larger blocks prune coarser on
#: clouds denser in some places than others.
BLOCK = 64
#: Relative shrink of the skip bound: float32's (dx*dx + dy*dy) + dz*dz is at most ~5 roundings
#: (5 * 2**-24 = 3e-7 relative) below the exact squared distance; 1e-5 leaves a wide margin.
MARGIN = 1e-5
#: Absolute slack for subnormal squared distances (float32 ops there err by up to 2**-149 each).
TINY = 1e-30
#: The reference's running-minimum start value (float32 holds 1e10 exactly).
FAR = np.float32(1e10)
#: Bits per axis of the Morton code that orders points into blocks (256 cells per axis: far finer
#: than blocks of 64 of a few thousand points need).
_MORTON_BITS = 8


@numba.njit(cache=True, nogil=True)
def _spread_bits(v):
    """Bits 0..7 of ``v`` moved to bits 0, 3, 6, ... (one axis of a 3D Morton code)."""
    v &= 0xFF
    v = (v | (v << 8)) & 0x00F00F
    v = (v | (v << 4)) & 0x0C30C3
    v = (v | (v << 2)) & 0x249249
    return v


@numba.njit(cache=True, nogil=True)
def _morton_order(x, y, z):
    """Point order along a Z-curve through the cloud's bounding box (neighbours end up adjacent):
    24-bit codes, sorted by three stable counting-sort passes of 8 bits (a comparison sort of the
    codes took as long as the sampling itself)."""
    n = x.shape[0]
    lo = np.empty(3)
    scale = np.empty(3)
    for axis, coord in enumerate((x, y, z)):
        cmin = float(coord.min())
        span = float(coord.max()) - cmin
        lo[axis] = cmin
        scale[axis] = ((1 << _MORTON_BITS) - 1) / span if span > 0 else 0.0
    code = np.empty(n, dtype=np.int64)
    for i in range(n):
        cx = np.int64((float(x[i]) - lo[0]) * scale[0])
        cy = np.int64((float(y[i]) - lo[1]) * scale[1])
        cz = np.int64((float(z[i]) - lo[2]) * scale[2])
        code[i] = _spread_bits(cx) | (_spread_bits(cy) << 1) | (_spread_bits(cz) << 2)
    order = np.arange(n)
    spare = np.empty(n, dtype=np.int64)
    count = np.empty(257, dtype=np.int64)
    for shift in (0, 8, 16):
        count[:] = 0
        for i in range(n):
            count[((code[i] >> shift) & 0xFF) + 1] += 1
        for c in range(256):
            count[c + 1] += count[c]
        for i in range(n):
            digit = (code[order[i]] >> shift) & 0xFF
            spare[count[digit]] = order[i]
            count[digit] += 1
        order, spare = spare, order
    return order


@numba.njit(cache=True, nogil=True)
def _block_max(bits):
    """Position in ``bits`` (one block's running minima, viewed as int32) of the first largest one;
    points within a block are in original-index order, so of equal maxima this is the smallest
    original index, the reference's first arg-max.

    Running minima are never negative, and non-negative floats order like their bit patterns: the
    integer maximum vectorizes where the float one (NaN-aware) does not."""
    top = bits[0]
    for j in range(1, bits.shape[0]):
        top = max(top, bits[j])
    for j in range(bits.shape[0]):
        if bits[j] == top:
            return j
    return 0


@numba.njit(cache=True, nogil=True)
def _lower(mind, px, py, pz, cx, cy, cz):
    """The reference's update ``mind = minimum(mind, (dx*dx + dy*dy) + dz*dz)`` on one block's
    slices (indices from 0 on slices let LLVM vectorize it; the rounding stays per step)."""
    for j in range(mind.shape[0]):
        dx = px[j] - cx
        dy = py[j] - cy
        dz = pz[j] - cz
        d = dx * dx + dy * dy
        d = d + dz * dz
        mind[j] = min(mind[j], d)


@numba.njit(cache=True, nogil=True)
def fps_cloud(x, y, z, first, npoint, block, margin, out):
    """Write the ``npoint`` centres of one cloud (float32 coordinate arrays) into ``out``.

    ``block``: points per block; ``margin``: relative shrink of the skip bound (``MARGIN``; the
    tests pass 0 to show that a cloud needs it).
    """
    n = x.shape[0]
    order = _morton_order(x, y, z)
    nblocks = (n + block - 1) // block
    for b in range(nblocks):  # within a block, original-index order (see _block_max)
        order[b * block : (b + 1) * block].sort()
    px = x[order]
    py = y[order]
    pz = z[order]
    # Per block: bounds as float64 copies of float32 coordinates (exact), and the position of the
    # point holding the block's largest running minimum (ties: smallest original index).
    lo = np.empty((nblocks, 3))
    hi = np.empty((nblocks, 3))
    top = np.empty(nblocks, dtype=np.int64)
    mind = np.full(n, FAR, dtype=np.float32)
    bits = mind.view(np.int32)
    for b in range(nblocks):
        begin = b * block
        end = min(begin + block, n)
        lo[b, 0] = hi[b, 0] = px[begin]
        lo[b, 1] = hi[b, 1] = py[begin]
        lo[b, 2] = hi[b, 2] = pz[begin]
        for j in range(begin + 1, end):
            lo[b, 0] = min(lo[b, 0], px[j])
            hi[b, 0] = max(hi[b, 0], px[j])
            lo[b, 1] = min(lo[b, 1], py[j])
            hi[b, 1] = max(hi[b, 1], py[j])
            lo[b, 2] = min(lo[b, 2], pz[j])
            hi[b, 2] = max(hi[b, 2], pz[j])
        top[b] = begin + _block_max(bits[begin:end])
    shrink = 1.0 - margin
    far = first
    for i in range(npoint):
        out[i] = far
        cx = x[far]
        cy = y[far]
        cz = z[far]
        cx64 = float(cx)
        cy64 = float(cy)
        cz64 = float(cz)
        best = np.float32(-1.0)
        best_arg = n
        for b in range(nblocks):
            held = mind[top[b]]
            gx = max(lo[b, 0] - cx64, cx64 - hi[b, 0], 0.0)
            gy = max(lo[b, 1] - cy64, cy64 - hi[b, 1], 0.0)
            gz = max(lo[b, 2] - cz64, cz64 - hi[b, 2], 0.0)
            if (gx * gx + gy * gy + gz * gz) * shrink < float(held) + TINY:
                begin = b * block
                end = min(begin + block, n)
                _lower(mind[begin:end], px[begin:end], py[begin:end], pz[begin:end], cx, cy, cz)
                # Lowering other points leaves the block's maximum and its holder as they were.
                if mind[top[b]] < held:
                    top[b] = begin + _block_max(bits[begin:end])
            m = mind[top[b]]
            arg = order[top[b]]
            if m > best or (m == best and arg < best_arg):
                best = m
                best_arg = arg
        far = best_arg


def fps_clouds(
    planes: np.ndarray, start: np.ndarray, npoint: int, threads: int = 1, block: int = BLOCK, margin: float = MARGIN
) -> np.ndarray:
    """Centres [B, npoint] (int64) of every cloud of ``planes`` [3, B, N] (float32, C-contiguous)
    from ``start`` [B], clouds shared among ``threads`` threads.

    The threads are Python threads around the compiled per-cloud function, which releases the GIL
    (``nogil``), rather than numba's ``prange``: numba's OpenMP layer terminates a forked child
    (a DataLoader worker) that launches a parallel loop, and its fallback layer aborts on two
    parallel loops launched at once from different threads. Plain threads have neither problem.
    """
    batch = planes.shape[1]
    out = np.empty((batch, npoint), dtype=np.int64)
    # Clouds are handed out one at a time (next() on a count is atomic under the GIL): a helper
    # that gets no core soon (torch's OpenMP threads spin for a while after each op) leaves its
    # share to the others instead of holding the call up.
    clouds = itertools.count()

    def run() -> None:
        while (b := next(clouds)) < batch:
            fps_cloud(planes[0, b], planes[1, b], planes[2, b], start[b], npoint, block, margin, out[b])

    threads = max(1, min(threads, batch))
    if threads == 1:
        run()
        return out
    with ThreadPoolExecutor(threads - 1) as pool:
        helpers = [pool.submit(run) for _ in range(threads - 1)]
        run()
        for helper in helpers:
            helper.result()  # re-raises a helper's error
    return out
