"""Triton kernels for the point-cloud ops (CUDA; also run by Triton's CPU interpreter in tests).

Imported lazily by :mod:`omniclip.modalities.pointcloud.ops`, so the package works without
Triton. Every kernel reproduces the torch reference's arithmetic operation for operation (same
float32/float64 roundings, fused multiply-add switched off, first index on ties), so its indices
equal the reference's exactly rather than approximately.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

# Clouds up to this many points are held entirely in registers for the whole sampling run
# (x, y, z and the running minimum: 16 values each per thread at 8192 points and 16 warps, which
# fits the register file without spilling). Larger clouds stream in chunks of this size with the
# running minimum in a global scratch buffer (L1/L2-resident at these sizes).
MAX_ON_CHIP = 8192

# Same start value of the running minimum as the torch reference (Point-BERT, PointNet++).
_FAR = 1e10
_FAR_JIT = tl.constexpr(_FAR)  # a jitted function reads only constexpr globals


def interpreting() -> bool:
    """True when Triton runs kernels with its CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _fps_kernel(
    planes_ptr,  # [3, B, N] contiguous coordinates, already in the distance dtype
    start_ptr,  # [B] int64 first centre of each cloud
    out_ptr,  # [B, npoint] int64
    scratch_ptr,  # [B, N] running minimum when the cloud is streamed (NUM_CHUNKS > 1)
    batch,
    num_points,
    # constexpr: a runtime loop bound trips the interpreter (numpy 2 refuses int() of its [1]
    # arrays); one compilation per centre count is cheap, recipes use one or two.
    npoint: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
):
    cloud = tl.program_id(0)
    xs = planes_ptr + cloud * num_points
    ys = xs + batch * num_points
    zs = ys + batch * num_points
    outs = out_ptr + cloud * npoint
    offs = tl.arange(0, BLOCK)
    far = tl.load(start_ptr + cloud).to(tl.int32)
    if NUM_CHUNKS == 1:
        inside = offs < num_points
        x = tl.load(xs + offs, mask=inside, other=0.0)
        y = tl.load(ys + offs, mask=inside, other=0.0)
        z = tl.load(zs + offs, mask=inside, other=0.0)
        # Padding lanes hold -1, below every distance, so the arg-max never lands on them.
        min_dist = tl.where(inside, _FAR_JIT, -1.0).to(x.dtype)
        for i in range(npoint):
            tl.store(outs + i, far.to(tl.int64))
            # The reference's rounding order: ((dx*dx + dy*dy) + dz*dz), each step rounded.
            dx = x - tl.load(xs + far)
            dy = y - tl.load(ys + far)
            dz = z - tl.load(zs + far)
            dist = dx * dx + dy * dy + dz * dz
            # torch.minimum propagates NaN; "d < m" alone would not.
            take = inside & ((dist < min_dist) | (dist != dist))
            min_dist = tl.where(take, dist, min_dist)
            # torch.argmax ranks NaN above every number (the running minimum never exceeds
            # 1e10, so +inf stands for NaN) and returns the first of equal maxima.
            key = tl.where(min_dist != min_dist, float("inf"), min_dist)
            far = tl.argmax(key, axis=0, tie_break_left=True).to(tl.int32)
    else:
        scratch = scratch_ptr + cloud * num_points
        for i in range(npoint):
            tl.store(outs + i, far.to(tl.int64))
            cx = tl.load(xs + far)
            cy = tl.load(ys + far)
            cz = tl.load(zs + far)
            best_val = tl.full([], -1.0, cx.dtype)
            best_idx = tl.full([], 0, tl.int32)
            for chunk in range(NUM_CHUNKS):
                idx = chunk * BLOCK + offs
                inside = idx < num_points
                dx = tl.load(xs + idx, mask=inside, other=0.0) - cx
                dy = tl.load(ys + idx, mask=inside, other=0.0) - cy
                dz = tl.load(zs + idx, mask=inside, other=0.0) - cz
                dist = dx * dx + dy * dy + dz * dz
                min_dist = tl.load(scratch + idx, mask=inside, other=-1.0)
                take = inside & ((dist < min_dist) | (dist != dist))
                min_dist = tl.where(take, dist, min_dist)
                tl.store(scratch + idx, min_dist, mask=inside)
                key = tl.where(min_dist != min_dist, float("inf"), min_dist)
                val, arg = tl.max(key, axis=0, return_indices=True, return_indices_tie_break_left=True)
                # Strictly greater: an equal maximum in a later chunk has a larger index.
                better = val > best_val
                best_idx = tl.where(better, chunk * BLOCK + arg, best_idx)
                best_val = tl.where(better, val, best_val)
            far = best_idx.to(tl.int32)


def _num_warps(block: int) -> int:
    # About 16 points per thread; more warps shorten the per-centre pass, up to a block's 16.
    return max(4, min(16, block // 512))


def fps_triton(planes: Tensor, start: Tensor, npoint: int, max_on_chip: int = MAX_ON_CHIP) -> Tensor:
    """Farthest point sampling, one program per cloud and one launch for all centres.

    ``planes`` is [3, B, N] contiguous in float32 or float64 (the reference's distance dtype),
    ``start`` [B] int64 on the same device. Returns [B, npoint] int64 indices.
    ``max_on_chip`` (a power of two) is the largest cloud kept in registers; tests lower it to
    exercise the streamed path on small clouds.
    """
    if planes.device.type != "cuda" and not interpreting():
        raise RuntimeError("fps_triton needs a CUDA tensor (or TRITON_INTERPRET=1 for the CPU interpreter)")
    if max_on_chip < 1 or max_on_chip & (max_on_chip - 1):
        raise ValueError(f"max_on_chip must be a power of two, got {max_on_chip}")
    _, batch, num_points = planes.shape
    block = min(triton.next_power_of_2(num_points), max_on_chip)
    num_chunks = triton.cdiv(num_points, block)
    out = torch.empty(batch, npoint, dtype=torch.long, device=planes.device)
    if num_chunks > 1:
        scratch = torch.full((batch, num_points), _FAR, dtype=planes.dtype, device=planes.device)
    else:
        scratch = planes  # never read: the on-chip path keeps its running minimum in registers
    _fps_kernel[(batch,)](
        planes,
        start,
        out,
        scratch,
        batch,
        num_points,
        npoint,
        BLOCK=block,
        NUM_CHUNKS=num_chunks,
        **launch_options(block),
    )
    return out


def launch_options(block: int) -> dict[str, int | bool]:
    """Compile options of ``_fps_kernel`` for a block size (tests compile with the same ones)."""
    return {
        "num_warps": _num_warps(block),
        # The reference rounds every product and sum; a fused multiply-add would not, and
        # near-equal distances could then swap places.
        "enable_fp_fusion": False,
    }
